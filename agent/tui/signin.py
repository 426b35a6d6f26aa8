"""Sign in: at start, and after the idle lock. The name becomes Operators' Name."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Center, Vertical
from textual.screen import Screen
from textual.widgets import Input, Static


class SignInScreen(Screen[str]):
    DEFAULT_CSS = """
    SignInScreen { align: center middle; }
    SignInScreen > Vertical { width: 60; max-width: 100%; height: auto; }
    SignInScreen Static { width: 100%; content-align: center middle; }
    SignInScreen Input { width: 100%; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("ctrl+q", "app.quit", "quit", priority=True)]

    def __init__(self, station: str, locked_by: str | None = None) -> None:
        super().__init__()
        self.station = station
        self.locked_by = locked_by

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"modality-agent · {self.station}", id="signin-title")
            if self.locked_by:
                yield Static(f"Locked: no key for a while ({self.locked_by}).\nThe exam goes on.")
            yield Static("")
            # PN: no backslash; Operators' Name is at most 64 characters
            yield Input(
                placeholder="Operator name", id="operator", max_length=64, restrict=r"[^\\]*"
            )
            yield Static("")
            with Center():
                yield Static("Enter: sign in      Ctrl+Q: quit", id="signin-keys")
            yield Static("", id="signin-error")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        name = event.value.strip()
        if not name:
            self.query_one("#signin-error", Static).update("Type your name to sign in.")
            return
        self.dismiss(name)
