"""g: file an unassigned (held) series under an exam: the open one or one still queued."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from agent.tui.board import Board
from agent.tui.link import LinkError

if TYPE_CHECKING:
    from agent.tui.app import AgentApp


def targets(board: Board) -> list[tuple[str, str]]:
    """(label, exam token or Study Instance UID): the open exam first, then queued studies."""
    found: list[tuple[str, str]] = []
    if board.exam is not None:
        e = board.exam
        label = f"{e.get('patient_name')} · {e.get('accession_number') or 'unscheduled'}"
        found.append((f"{label} ({e.get('state')})", e["study_instance_uid"]))
    for s in reversed((board.queue or {}).get("studies", [])):
        if any(uid == s["study_instance_uid"] for _, uid in found):
            continue
        label = s.get("accession_number") or ("unscheduled" if s.get("unscheduled") else "")
        found.append(
            (
                f"study {label or s['study_instance_uid']} ({s.get('exam_state')})",
                s["study_instance_uid"],
            )
        )
    return found


class AssignScreen(ModalScreen[bool]):
    DEFAULT_CSS = """
    AssignScreen { align: center middle; }
    AssignScreen > Vertical { width: 76; max-width: 100%; height: auto; border: round $warning;
                              padding: 0 1; }
    AssignScreen OptionList { height: auto; max-height: 8; }
    AssignScreen #assign-error { color: $error; text-style: bold; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "assign", "assign", priority=True),
        Binding("escape", "back", "back"),
    ]

    def __init__(self, held: dict[str, Any], board: Board) -> None:
        super().__init__()
        self.held = held
        self.targets = targets(board)

    @property
    def agent(self) -> AgentApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        what = self.held.get("description") or "series start not seen"
        with Vertical():
            yield Static(
                f"Assign the held series ({what}, {self.held.get('slices', 0)} slices) to:",
                markup=False,
            )
            yield OptionList(*[Option(label, uid) for label, uid in self.targets])
            yield Static("", id="assign-error")
            yield Static("Enter: assign (recorded with your name)      Esc: back")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        if self.targets:
            options.highlighted = 0
        options.focus()

    def action_back(self) -> None:
        self.dismiss(False)

    def action_assign(self) -> None:
        index = self.query_one(OptionList).highlighted
        if index is None or not self.targets:
            return
        self.assign(self.targets[index][1])

    @work(exclusive=True, exit_on_error=False)
    async def assign(self, exam: str) -> None:
        args = {
            "series_instance_uid": self.held["series_instance_uid"],
            "exam": exam,
            "operator": self.agent.operator or "unknown",
        }
        error = self.query_one("#assign-error", Static)
        try:
            await self.agent.ask("exam.assign", args, timeout=120)
        except LinkError as e:
            error.update(escape(f"NOT ASSIGNED: {getattr(e, 'message', e)}"))
            return
        self.agent.refresh_op("exam.status")
        self.agent.refresh_op("queue")
        self.dismiss(True)
