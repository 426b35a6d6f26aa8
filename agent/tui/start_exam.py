"""What the confirm and emergency forms share: the destinations, and `exam.start` sent off the
UI thread with the refusal shown in the form (`NOT STARTED: …`)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from rich.markup import escape
from textual import work
from textual.binding import Binding, BindingType
from textual.screen import ModalScreen
from textual.widgets import Static

from agent.tui.board import Board
from agent.tui.destinations import DestinationPicker
from agent.tui.link import LinkError

if TYPE_CHECKING:
    from agent.tui.app import AgentApp


class StartExamScreen(ModalScreen[bool]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "start", "start exam", priority=True),
        Binding("escape", "back", "back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.starting = False

    @property
    def agent(self) -> AgentApp:
        return self.app  # type: ignore[return-value]

    def error(self, text: str) -> None:
        self.query_one(".form-error", Static).update(escape(text))

    def show_health(self, board: Board, now: datetime) -> None:
        self.query_one(DestinationPicker).show_health(board, now)

    def action_back(self) -> None:
        self.dismiss(False)

    def action_start(self) -> None:
        if self.starting:
            return
        args = self.start_args()
        if isinstance(args, str):
            self.error(args)
            return
        chosen = self.query_one(DestinationPicker).selected
        if not chosen:
            self.error("Choose at least one destination.")
            return
        self.start(args | {"destinations": chosen, "operator": self.agent.operator})

    def start_args(self) -> dict[str, Any] | str:
        """The exam.start arguments from the form, or what is wrong with it."""
        raise NotImplementedError

    @work(exclusive=True, exit_on_error=False)
    async def start(self, args: dict[str, Any]) -> None:
        self.starting = True
        self.error("Starting… (waiting for the agent)")
        try:
            result = await self.agent.ask("exam.start", args)
        except LinkError as e:
            self.error(f"NOT STARTED: {getattr(e, 'message', e)}")
            self.starting = False
            return
        self.agent.exam_started(result)
        self.dismiss(True)
