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


def held_label(held: dict[str, Any]) -> str:
    what = held.get("description") or "series start not seen"
    return f"{what}, {held.get('slices', 0)} slices"


class PickScreen(ModalScreen[Any]):
    """A framed list to pick from: Enter picks the highlighted row, Esc goes back."""

    DEFAULT_CSS = """
    PickScreen { align: center middle; }
    PickScreen > Vertical { width: 76; max-width: 100%; height: auto; border: round $warning;
                       padding: 0 1; }
    PickScreen OptionList { height: auto; max-height: 8; }
    PickScreen #assign-error { color: $error; text-style: bold; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "pick", "pick", priority=True),
        Binding("escape", "back", "back"),
    ]

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        if options.option_count:
            options.highlighted = 0
        options.focus()

    def action_back(self) -> None:
        self.dismiss(None)

    def action_pick(self) -> None:
        index = self.query_one(OptionList).highlighted
        if index is not None:
            self.picked(index)

    def picked(self, index: int) -> None:
        raise NotImplementedError


class HeldScreen(PickScreen):
    """More than one series is held: which one to assign."""

    def __init__(self, held: list[dict[str, Any]], board: Board) -> None:
        super().__init__()
        self.held = held
        self.board = board

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Which held series?", markup=False)
            yield OptionList(*[Option(held_label(h)) for h in self.held])
            yield Static("Enter: choose      Esc: back")

    def picked(self, index: int) -> None:
        self.app.switch_screen(AssignScreen(self.held[index], self.board))


class AssignScreen(PickScreen):
    def __init__(self, held: dict[str, Any], board: Board) -> None:
        super().__init__()
        self.held = held
        self.targets = targets(board)

    @property
    def agent(self) -> AgentApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"Assign the held series ({held_label(self.held)}) to:", markup=False)
            yield OptionList(*[Option(label, uid) for label, uid in self.targets])
            yield Static("", id="assign-error")
            yield Static("Enter: assign (recorded with your name)      Esc: back")

    def picked(self, index: int) -> None:
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
