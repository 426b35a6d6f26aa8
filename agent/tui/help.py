"""F1 / ?: the key map (docs/tui.md)."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS = [
    ("1-4", "everywhere", "tabs: Worklist, Exam, Delivery, Alarms"),
    ("F1, ?", "everywhere", "this help"),
    ("/", "Worklist", "search as you type (Esc clears)"),
    ("r", "Worklist, Delivery", "refresh now"),
    ("Enter", "Worklist", "confirm the selected patient, then start"),
    ("e", "Worklist", "emergency (unscheduled) patient"),
    ("x", "Exam", "end the exam (asks to confirm)"),
    ("d", "Exam", "discontinue with a reason"),
    ("g", "Exam", "assign an unassigned series to an exam"),
    ("t", "Delivery", "retry the selected failed delivery"),
    ("Enter", "Delivery", "the full last error"),
    ("a", "everywhere", "acknowledge the alarm in the bar"),
    ("q, Ctrl+Q", "everywhere", "quit the TUI (the daemon keeps running)"),
]


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 100%; max-width: 90; height: auto; max-height: 100%;
                                  border: round $accent; padding: 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,f1,question_mark,q", "dismiss", "close"),
    ]

    def compose(self) -> ComposeResult:
        lines = ["Keys (Esc closes)", ""]
        lines += [f"{key:<10} {where:<19} {does}" for key, where, does in KEYS]
        lines += ["", "Colour is a second channel: every state is also a word."]
        with VerticalScroll():
            yield Static("\n".join(lines))
