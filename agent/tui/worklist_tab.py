"""1 Worklist: today's items, search as you type, the stale marker; Enter confirms an item."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Input, Static

from agent.tui.board import Board
from agent.tui.text import age, clip, matches, scheduled

if TYPE_CHECKING:
    from agent.tui.app import AgentApp


def status_line(board: Board, now: datetime) -> str:
    doc = board.worklist
    if doc is None:
        return (
            f"No worklist: {board.worklist_error}" if board.worklist_error else "Worklist: asking…"
        )
    dates = sorted(set(doc.get("dates") or []))
    day = "Today " + dates[0] if len(dates) == 1 else " to ".join(dates) or "Worklist"
    count = f"{doc['count']} item{'s' if doc['count'] != 1 else ''}"
    if doc.get("truncated"):
        count += " (more exist)"
    if doc.get("stale"):
        if doc.get("fetched_at") is None:
            return f"{day} · NO LIST — RIS not answering"
        seconds = float(doc.get("age_seconds") or 0)
        if board.worklist_at is not None:
            seconds += (now - board.worklist_at).total_seconds()
        return f"{day} · {count} · STALE {age(seconds)} — RIS not answering"
    fetched = doc.get("fetched_at")
    when = ""
    if fetched and board.worklist_at is not None:
        when = f" · updated {board.worklist_at.strftime('%H:%M')}"
    return f"{day} · {count}{when}"


class WorklistTab(Vertical):
    DEFAULT_CSS = """
    WorklistTab > Horizontal { height: 1; }
    WorklistTab #wl-status { width: 1fr; }
    WorklistTab #wl-search { width: 24; height: 1; border: none; padding: 0 1; }
    WorklistTab DataTable { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "search", "search", key_display="/"),
        Binding("r", "refresh", "refresh"),
        Binding("e", "emergency", "emergency"),
        Binding("escape", "clear_search", "clear", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.items: list[dict[str, Any]] = []
        self._shown: list[dict[str, Any]] = []
        self._board: Board | None = None
        self._now: datetime | None = None

    @property
    def agent(self) -> AgentApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Static("Worklist: asking…", id="wl-status")
            yield Input(placeholder="/ search", id="wl-search")
        table: DataTable[str] = DataTable(cursor_type="row", zebra_stripes=False, id="wl-table")
        yield table

    def focus_list(self) -> None:
        self.query_one(DataTable).focus()

    def show(self, board: Board, now: datetime) -> None:
        self._board, self._now = board, now
        self.query_one("#wl-status", Static).update(status_line(board, now))
        items = list((board.worklist or {}).get("items", []))
        if items != self.items:
            self.items = items
            self._fill()

    def _fill(self) -> None:
        query = self.query_one(Input).value
        shown = [
            i
            for i in self.items
            if matches(query, i.get("patient_name"), i.get("patient_id"), i.get("accession_number"))
        ]
        shown.sort(
            key=lambda i: (
                i.get("scheduled_date") or "",
                i.get("scheduled_time") or "",
                i.get("accession_number") or "",
            )
        )
        table: DataTable[str] = self.query_one(DataTable)
        row = table.cursor_row
        table.clear(columns=True)
        width = max(60, self.size.width or 80)
        name_w = max(16, (width - 41) * 2 // 5)
        proc_w = max(12, width - 41 - name_w)
        table.add_column("Time", width=5)
        table.add_column("Name", width=name_w)
        table.add_column("Patient ID", width=12)
        table.add_column("Accession", width=11)
        table.add_column("Procedure", width=proc_w)
        for i in shown:
            procedure = (
                i.get("scheduled_procedure_step_description")
                or i.get("requested_procedure_description")
                or ""
            )
            if not i.get("usable", True):
                procedure = "UNUSABLE: " + procedure
            table.add_row(
                scheduled(i.get("scheduled_time")),
                clip(i.get("patient_name") or "", name_w),
                clip(i.get("patient_id") or "", 12),
                clip(i.get("accession_number") or "", 11),
                clip(procedure, proc_w),
            )
        self._shown = shown
        if shown:
            table.move_cursor(row=min(row, len(shown) - 1))

    def on_resize(self) -> None:
        self._fill()

    def on_input_changed(self, event: Input.Changed) -> None:
        self._fill()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.focus_list()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if 0 <= event.cursor_row < len(self._shown):
            self.agent_open(self._shown[event.cursor_row])

    def agent_open(self, item: dict[str, Any]) -> None:
        from agent.tui.confirm import ConfirmScreen
        from agent.tui.message import MessageScreen

        if not item.get("usable", True):
            why = "\n".join(item.get("problems") or []) or "the RIS's item is not usable"
            self.app.push_screen(MessageScreen("This item cannot start an exam", why))
            return
        self.app.push_screen(ConfirmScreen(item))

    def action_search(self) -> None:
        self.query_one(Input).focus()

    def action_clear_search(self) -> None:
        self.query_one(Input).value = ""
        self.focus_list()

    def action_refresh(self) -> None:
        self.agent.refresh_worklist()

    def action_emergency(self) -> None:
        from agent.tui.emergency import EmergencyScreen

        self.app.push_screen(EmergencyScreen())
