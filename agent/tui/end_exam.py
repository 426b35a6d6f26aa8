"""End the exam (completed), or discontinue it with a reason."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static

from agent.tui.link import LinkError

if TYPE_CHECKING:
    from agent.tui.app import AgentApp

REASONS = [
    "Patient could not continue",
    "Equipment failure",
    "Contrast reaction",
    "Wrong patient or procedure selected",
    "Other (type it below)",
]


class _Ending(ModalScreen[bool]):
    DEFAULT_CSS = """
    _Ending { align: center middle; }
    _Ending > Vertical { width: 70; max-width: 100%; height: auto; border: round $warning;
                         padding: 0 1; }
    _Ending .error { color: $error; text-style: bold; }
    _Ending OptionList { height: auto; max-height: 7; }
    _Ending Input { height: 3; }
    """

    @property
    def agent(self) -> AgentApp:
        return self.app  # type: ignore[return-value]

    @work(exclusive=True, exit_on_error=False)
    async def end(self, args: dict[str, Any]) -> None:
        error = self.query_one(".error", Static)
        error.update("Ending… (waiting for the agent)")
        try:
            result = await self.agent.ask("exam.end", args)
        except LinkError as e:
            error.update(escape(f"NOT ENDED: {getattr(e, 'message', e)}"))
            return
        self.agent.exam_ended(result)
        self.dismiss(True)

    def action_back(self) -> None:
        self.dismiss(False)


class EndExamScreen(_Ending):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y,enter", "confirm", "end exam", priority=True),
        Binding("escape,n", "back", "back"),
    ]

    def __init__(self, exam: dict[str, Any]) -> None:
        super().__init__()
        self.exam = exam

    def compose(self) -> ComposeResult:
        name = self.exam.get("patient_name") or self.exam.get("patient_id") or "this patient"
        with Vertical():
            yield Static(f"End the exam of {name} as completed?", markup=False)
            yield Static("", classes="error")
            yield Static("y / Enter: end exam      Esc: back")

    def action_confirm(self) -> None:
        self.end({})


class DiscontinueScreen(_Ending):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "confirm", "discontinue", priority=True),
        Binding("escape", "back", "back"),
    ]

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Discontinue the exam: why? (arrows choose, or type a reason)")
            yield OptionList(*REASONS, id="reasons")
            yield Input(placeholder="reason in your words", id="reason", max_length=64)
            yield Static("", classes="error")
            yield Static("Enter: discontinue      Esc: back")

    def on_mount(self) -> None:
        self.query_one(OptionList).highlighted = 0
        self.query_one(OptionList).focus()

    def action_confirm(self) -> None:
        typed = self.query_one(Input).value.strip()
        options = self.query_one(OptionList)
        index = options.highlighted
        chosen = REASONS[index] if index is not None and not typed else ""
        if typed or (chosen and not chosen.startswith("Other")):
            self.end({"discontinue": typed or chosen})
            return
        self.query_one(Input).focus()
        self.query_one(".error", Static).update("Type the reason, then Enter.")
