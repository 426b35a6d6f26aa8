"""A plain message in a box (a delivery's full last error, why an item cannot start)."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static


class MessageScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    MessageScreen { align: center middle; }
    MessageScreen > VerticalScroll { width: 76; max-width: 100%; height: auto; max-height: 100%;
                                     border: round $accent; padding: 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter", "close", "close")]

    def __init__(self, title: str, text: str) -> None:
        super().__init__()
        self.title_text = title
        self.text = text

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(f"{self.title_text}\n\n{self.text}\n\nEsc: close", markup=False)

    def action_close(self) -> None:
        self.dismiss(None)
