"""4 Alarms: every active alarm, newest first; acknowledged ones stay while their cause lasts."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from agent.tui.board import Board
from agent.tui.text import clip, local_hhmm


class AlarmsTab(Vertical):
    DEFAULT_CSS = """
    AlarmsTab DataTable { height: 1fr; }
    """

    def compose(self) -> ComposeResult:
        yield Static("No alarms.", id="alarms-line", markup=False)
        yield DataTable(cursor_type="row", id="alarm-table")

    def show(self, board: Board) -> None:
        alarms = board.alarms_newest_first()
        waiting = sum(1 for k in board.alarms if k not in board.acknowledged)
        line = (
            f"{len(alarms)} active, {waiting} not acknowledged (a: acknowledge the one in the bar)"
            if alarms
            else "No alarms."
        )
        self.query_one("#alarms-line", Static).update(line)
        table: DataTable[str] = self.query_one(DataTable)
        width = max(60, self.size.width or 80)
        message_w = max(20, width - 44)
        table.clear(columns=True)
        table.add_column("", width=4)
        table.add_column("Since", width=5)
        table.add_column("Kind", width=18)
        table.add_column("About", width=10)
        table.add_column("Message", width=message_w)
        for a in alarms:
            seen = (a["kind"], a["subject"]) in board.acknowledged
            table.add_row(
                "seen" if seen else "NEW",
                local_hhmm(a.get("since")),
                clip(a["kind"], 18),
                clip(a.get("subject") or "", 10),
                clip(a.get("message") or "", message_w),
            )
