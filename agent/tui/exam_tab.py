"""2 Exam: the open exam, its series with live slice counts; end, discontinue, assign."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import DataTable, Static

from agent.tui.board import Board
from agent.tui.text import clip, local_hhmm

if TYPE_CHECKING:
    from agent.tui.app import AgentApp


def exam_line(board: Board) -> str:
    exam = board.exam
    if exam is None:
        return "No exam open. Pick a patient on the worklist (1), or e: emergency patient."
    who = " · ".join(
        x
        for x in (
            exam.get("patient_name"),
            exam.get("patient_id"),
            exam.get("accession_number") or ("unscheduled" if exam.get("unscheduled") else ""),
        )
        if x
    )
    by = f" by {exam['operator']}" if exam.get("operator") else ""
    line = f"{who} · started {local_hhmm(exam.get('started'))}{by}"
    images = board.study_images(exam["study_instance_uid"])
    if images is not None:
        line += f" · {images} images kept"
    if exam.get("state") != "open":
        state = exam.get("state", "").upper()
        reason = f" ({exam['discontinue_reason']})" if exam.get("discontinue_reason") else ""
        line += f"\n{state} {local_hhmm(exam.get('ended'))}{reason}"
    return line


class ExamTab(Vertical):
    DEFAULT_CSS = """
    ExamTab #exam-line { height: auto; }
    ExamTab DataTable { height: auto; max-height: 1fr; }
    ExamTab #held { height: auto; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("x", "end", "end exam"),
        Binding("d", "discontinue", "discontinue"),
        Binding("g", "assign", "assign series"),
    ]

    @property
    def agent(self) -> AgentApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Static("", id="exam-line", markup=False)
        table: DataTable[str] = DataTable(cursor_type="row", id="series")
        table.add_column("#", width=3)
        table.add_column("Series", width=34)
        table.add_column("Slices", width=7)
        table.add_column("State", width=12)
        yield table
        yield Static("", id="held", markup=False)

    def show(self, board: Board, now: datetime) -> None:
        self.query_one("#exam-line", Static).update(exam_line(board))
        table: DataTable[str] = self.query_one(DataTable)
        row = table.cursor_row
        table.clear()
        for s in sorted(board.series.values(), key=lambda s: (s.number or 0, s.uid)):
            counted = f"{s.slices}" if s.ended else f"{s.slices}…"
            state = "ended" if s.ended else "acquiring"
            if s.ended and s.expected is not None and s.expected != s.slices:
                state = f"ended, {s.expected} expected"
            table.add_row(str(s.number or ""), clip(s.description or s.uid, 34), counted, state)
        if not board.series and board.exam is not None and board.exam.get("state") == "open":
            table.add_row("", "none yet: waiting for the scanner", "", "")
        if board.series:
            table.move_cursor(row=min(row, len(board.series) - 1))
        held = [
            f"  HELD  {clip(h.get('description') or 'series start not seen', 30)}  "
            f"{h.get('slices', 0)} slices: {h.get('reason', '')}"
            for h in board.unassigned
        ]
        if held:
            held.insert(0, "Unassigned series (a token no exam knows): g assigns")
        self.query_one("#held", Static).update("\n".join(held))

    def action_end(self) -> None:
        from agent.tui.end_exam import EndExamScreen

        if self._open():
            self.app.push_screen(EndExamScreen(self.agent.board.exam or {}))

    def action_discontinue(self) -> None:
        from agent.tui.end_exam import DiscontinueScreen

        if self._open():
            self.app.push_screen(DiscontinueScreen())

    def action_assign(self) -> None:
        from agent.tui.assign import AssignScreen, HeldScreen

        board = self.agent.board
        if not board.unassigned:
            self.app.notify("No unassigned series.")
        elif len(board.unassigned) == 1:
            self.app.push_screen(AssignScreen(board.unassigned[0], board))
        else:
            self.app.push_screen(HeldScreen(list(board.unassigned), board))

    def _open(self) -> bool:
        exam = self.agent.board.exam
        if exam is None or exam.get("state") != "open":
            self.app.notify("No exam is open.")
            return False
        return True
