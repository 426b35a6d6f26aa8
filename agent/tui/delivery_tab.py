"""3 Delivery: per study and destination a progress bar, the state, the last error; retry."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from agent.tui.board import Board
from agent.tui.link import LinkError
from agent.tui.text import STATE_WORDS, bar, clip, echo_health, local_hhmm

if TYPE_CHECKING:
    from agent.tui.app import AgentApp


def state_word(d: dict[str, Any]) -> str:
    state = str(d.get("state", ""))
    if state == "pending" and d.get("deferred") and d.get("deferred") == d.get("pending"):
        state = "deferred"
    word = STATE_WORDS.get(state, state)
    if d.get("next_attempt") and state != "failed":
        word += f" (retry {local_hhmm(d['next_attempt'])})"
    return word


def health_line(board: Board, now: datetime) -> str:
    """Each sender: the last echo, failures in a row and the end of a backoff wait."""
    parts = []
    senders = {s["name"]: s for s in (board.queue or {}).get("destinations", [])}
    for name in sorted(set(senders) | set(board.echo)):
        peer, at = board.echo.get(name, (None, None))
        text = f"{name}: {echo_health(peer, at, now)}"
        s = senders.get(name, {})
        if s.get("failures_in_a_row"):
            text += f", {s['failures_in_a_row']} failures in a row"
        parts.append(text)
    return " · ".join(parts) or "Destinations: asking…"


class DeliveryTab(Vertical):
    DEFAULT_CSS = """
    DeliveryTab #health { height: auto; }
    DeliveryTab DataTable { height: 1fr; }
    DeliveryTab #detail { height: auto; max-height: 4; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("t", "retry", "retry"),
        Binding("r", "refresh", "refresh"),
        Binding("enter", "details", "error", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[dict[str, Any], dict[str, Any]]] = []

    @property
    def agent(self) -> AgentApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Static("Destinations: asking…", id="health", markup=False)
        yield DataTable(cursor_type="row", id="deliveries")
        yield Static("", id="detail", markup=False)

    def show(self, board: Board, now: datetime) -> None:
        self.query_one("#health", Static).update(health_line(board, now))
        table: DataTable[str] = self.query_one(DataTable)
        row = table.cursor_row
        width = max(60, self.size.width or 80)
        error_w = max(12, width - 63)
        table.clear(columns=True)
        table.add_column("Study", width=12)
        table.add_column("Destination", width=12)
        table.add_column("Progress", width=18)
        table.add_column("State", width=12)
        table.add_column("Last error", width=error_w)
        self.rows = board.deliveries()
        if not self.rows:
            table.add_row("", "nothing queued", "", "", "")
        for study, d in self.rows:
            label = study.get("accession_number") or (
                "unscheduled" if study.get("unscheduled") else study["study_instance_uid"][-12:]
            )
            images = int(d.get("images") or study.get("images") or 0)
            sent = int(d.get("sent") or 0)
            table.add_row(
                clip(label, 12),
                clip(d["name"], 12),
                f"{bar(sent, images, 8)} {sent:>4}/{images}",
                state_word(d),
                clip(d.get("last_error") or "", error_w),
            )
        if self.rows:
            table.move_cursor(row=min(row, len(self.rows) - 1))
        self._detail()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._detail()

    def _detail(self) -> None:
        """The selected row's whole last error, in plain words, under the table."""
        picked = self._selected()
        error = picked[1].get("last_error") if picked else None
        text = f"{picked[1]['name']}: {error}" if picked and error else ""
        if picked and picked[1].get("state") == "failed":
            text += "\nt: retry it"
        self.query_one("#detail", Static).update(text)

    def _selected(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        row = self.query_one(DataTable).cursor_row
        return self.rows[row] if 0 <= row < len(self.rows) else None

    def action_refresh(self) -> None:
        self.agent.refresh_op("queue")
        self.agent.check_destinations()

    def action_details(self) -> None:
        from agent.tui.message import MessageScreen

        picked = self._selected()
        if picked is None:
            return
        study, d = picked
        text = (
            f"Study {study['study_instance_uid']}\nDestination {d['name']}: {state_word(d)}, "
            f"{d.get('sent', 0)} of {d.get('images', 0)} sent, {d.get('failed', 0)} failed\n\n"
            f"Last error: {d.get('last_error') or 'none'}"
        )
        self.app.push_screen(MessageScreen("Delivery", text))

    def action_retry(self) -> None:
        picked = self._selected()
        if picked is None:
            return
        self.retry(picked[0]["study_instance_uid"], picked[1]["name"])

    @work(group="retry", exit_on_error=False)
    async def retry(self, study: str, dest: str) -> None:
        try:
            result = await self.agent.ask("retry", {"study": study, "dest": dest})
        except LinkError as e:
            self.app.notify(f"retry FAILED: {getattr(e, 'message', e)}", severity="error")
            return
        self.app.notify(f"retry: {result.get('rearmed', 0)} image(s) re-armed for {dest}")
        self.agent.refresh_op("queue")
