"""The destinations of an exam: the configured archives with their health from the last echo,
the defaults pre-selected; space toggles. The choice is a word on screen (`[x]` / `[ ]`), not
a colour."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from agent.config import Destination
from agent.tui.board import Board
from agent.tui.text import clip, echo_health


class DestinationPicker(OptionList):
    DEFAULT_CSS = """
    DestinationPicker, DestinationPicker:focus { height: auto; max-height: 6; border: none;
                                                 padding: 0 0 0 2; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("space", "choose", "toggle")]

    def __init__(self, destinations: tuple[Destination, ...]) -> None:
        self.destinations = destinations
        self.chosen = {d.name for d in destinations if d.default}
        self.health = {d.name: "checking…" for d in destinations}
        super().__init__(*self._choices(), id="destinations")

    @property
    def selected(self) -> list[str]:
        return [d.name for d in self.destinations if d.name in self.chosen]

    def _choices(self) -> list[Option]:
        return [
            Option(
                Text(
                    f"[{'x' if d.name in self.chosen else ' '}] {d.name:<16} "
                    f"{clip(self.health[d.name], 52)}"
                ),
                d.name,
            )
            for d in self.destinations
        ]

    def _redraw(self) -> None:
        highlighted = self.highlighted
        self.clear_options()
        self.add_options(self._choices())
        self.highlighted = highlighted if highlighted is not None else 0

    def action_choose(self) -> None:
        index = self.highlighted
        if index is None:
            return
        name = self.destinations[index].name
        self.chosen ^= {name}
        self._redraw()

    def show_health(self, board: Board, now: datetime) -> None:
        for d in self.destinations:
            peer, at = board.echo.get(d.name, (None, None))
            self.health[d.name] = echo_health(peer, at, now)
        self._redraw()
