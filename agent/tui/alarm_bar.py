"""The bar above the footer: the newest alarm not yet acknowledged, until `a` is pressed."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import Static

from agent.tui.text import clip


class AlarmBar(Static):
    DEFAULT_CSS = """
    AlarmBar { height: 1; background: $error; color: $text; text-style: bold; display: none; }
    """

    def show_alarm(self, alarm: dict[str, Any] | None, waiting: int) -> None:
        self.display = alarm is not None
        if alarm is None:
            self.update("")
            return
        more = f" (+{waiting - 1} more)" if waiting > 1 else ""
        keys = "  [a] acknowledge"
        head = f"! {alarm['kind'].replace('_', ' ').upper()}: {alarm['message']}{more}"
        width = max(20, self.size.width or 80)
        self.update(Text(clip(head, width - len(keys) - 1).ljust(width - len(keys)) + keys))
