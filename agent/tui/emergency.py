"""Emergency patient: registered by hand, or unidentified (generated EMERG-… identifiers)."""

from __future__ import annotations

import re
from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Input, Static

from agent.tui.destinations import DestinationPicker
from agent.tui.start_exam import StartExamScreen

FIELDS = [  # id, label, placeholder, max length, allowed characters
    ("em-id", "Patient ID", "empty: generated", 64, r"[^\\]*"),
    ("em-name", "Name", "FAMILY^GIVEN, empty: generated", 64, r"[^\\]*"),
    ("em-birth", "Birth date", "YYYYMMDD", 8, r"[0-9]*"),
    ("em-sex", "Sex", "M, F or O", 1, r"[MFOmfo]?"),
]


def request_args(values: dict[str, str]) -> dict[str, Any] | str:
    """The exam.start arguments for the form's values, or what is wrong with them."""
    pid, name = values["em-id"].strip(), values["em-name"].strip()
    birth, sex = values["em-birth"].strip(), values["em-sex"].strip().upper()
    if bool(pid) != bool(name):
        return "Give both the patient ID and the name, or neither (unidentified patient)."
    if birth and not re.fullmatch(r"(19|20)\d\d(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])", birth):
        return "Birth date: YYYYMMDD, or empty."
    if not pid:
        return {"unscheduled": True}
    args: dict[str, Any] = {"patient_id": pid, "patient_name": name}
    if birth:
        args["birth_date"] = birth
    if sex:
        args["sex"] = sex
    return args


class EmergencyScreen(StartExamScreen):
    DEFAULT_CSS = """
    EmergencyScreen { align: center top; }
    EmergencyScreen > Vertical { width: 100%; max-width: 110; height: auto; max-height: 100%;
                                 margin-top: 2; border: round $error; padding: 0 1; }
    EmergencyScreen Horizontal { height: 1; }
    EmergencyScreen .label { width: 14; }
    EmergencyScreen Input, EmergencyScreen Input:focus { width: 1fr; height: 1; border: none;
                                                         padding: 0; }
    EmergencyScreen Input:focus { text-style: underline; }
    EmergencyScreen .form-error { color: $error; text-style: bold; }
    """

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static("EMERGENCY patient: an unscheduled exam (Tab: next field)")
            for field_id, label, placeholder, length, allowed in FIELDS:
                with Horizontal():
                    yield Static(f"  {label}", classes="label")
                    yield Input(
                        placeholder=placeholder, id=field_id, max_length=length, restrict=allowed
                    )
            yield Static("  Send to     (space toggles)")
            yield DestinationPicker(self.agent.cfg.destinations)
            yield Static("", classes="form-error")
            yield Static("  Enter: start exam      Esc: back")

    def on_mount(self) -> None:
        self.query_one("#em-id", Input).focus()
        self.query_one(DestinationPicker).show_health(self.agent.board, self.agent.now())

    def start_args(self) -> dict[str, Any] | str:
        return request_args({f[0]: self.query_one(f"#{f[0]}", Input).value for f in FIELDS})
