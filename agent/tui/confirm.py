"""Confirm patient: who, what, the safety information and the destinations, before the start."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from agent.tui.destinations import DestinationPicker
from agent.tui.start_exam import StartExamScreen
from agent.tui.text import birth_date, safety_lines, weight_size


def describe(item: dict[str, Any]) -> list[str]:
    """The lines of the confirm screen above the destinations (plain text)."""
    procedure = (
        item.get("requested_procedure_description")
        or item.get("scheduled_procedure_step_description")
        or ""
    )
    lines = [
        f"  Name        {item.get('patient_name') or '':<28} Sex {item.get('sex') or '?'}"
        f"   Born {birth_date(item.get('birth_date')) or 'not recorded'}",
        f"  Patient ID  {item.get('patient_id') or '':<20} {weight_size(item)}",
        f"  Accession   {item.get('accession_number') or '-':<12} Procedure  {procedure}",
    ]
    for label, value, flagged in safety_lines(item):
        lines.append(f"{'!' if flagged else ' '} {label:<11} {value}")
    return lines


class ConfirmScreen(StartExamScreen):
    DEFAULT_CSS = """
    ConfirmScreen { align: center top; }
    ConfirmScreen > Vertical { width: 100%; max-width: 110; height: auto; max-height: 100%;
                               margin-top: 2; border: round $accent; padding: 0 1; }
    ConfirmScreen .form-error { color: $error; text-style: bold; }
    """

    def __init__(self, item: dict[str, Any]) -> None:
        super().__init__()
        self.item = item

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("Start this exam?")
            yield Static(escape("\n".join(describe(self.item))), id="confirm-details")
            yield Static("  Send to     (space toggles)")
            yield DestinationPicker(self.agent.cfg.destinations)
            yield Static("", classes="form-error")
            yield Static("  Enter: start exam      Esc: back")

    def on_mount(self) -> None:
        picker = self.query_one(DestinationPicker)
        picker.show_health(self.agent.board, self.agent.now())
        picker.focus()
        self.agent.check_destinations()

    def start_args(self) -> dict[str, Any] | str:
        args: dict[str, Any] = {}
        if self.item.get("accession_number"):
            args["accession"] = self.item["accession_number"]
        if self.item.get("scheduled_procedure_step_id"):
            args["sps_id"] = self.item["scheduled_procedure_step_id"]
        return args
