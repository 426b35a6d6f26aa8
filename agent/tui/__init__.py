"""The technologist's terminal UI (docs/tui.md): a Textual app, a client of the control socket
only (agent/control/client.py); the daemon never imports it."""
