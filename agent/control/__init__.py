"""The control socket: the daemon's server and the client used by the CLI and the TUI.

The contract is docs/control-protocol.md; `protocol` is its pure wire format.
"""
