"""The audit trail: who did what, when (SPEC §9; in the spirit of IHE ATNA, PS3.15 A.5).

One JSON object per line in `<spool>/audit.log`, appended and fsynced before the action is
answered. Each record names the action with its ATNA
event (e.g. `exam.start` is a Procedure Record event, `purge` a DICOM Study Deleted one),
the person (the operator named in the request, and the OS user on the other end of the control
socket), the outcome, and the objects acted on (study, exam token, series, destination). The
file holds patient-related identifiers, as an audit trail must: it is the agent user's alone
(mode 0640, the spool's), and nothing of it goes to the journal.

A line torn by a crash is reported by `read()` as such and skipped; the next record starts on
a line of its own, and the records after it stand.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.spool.files import append_durable, ends_with_newline
from agent.timestamps import utc_iso

# action -> (ATNA event ID (DCM code), event action code: C create, R read, U update, D delete,
# E execute)
ATNA_EVENTS: dict[str, tuple[str, str]] = {
    "agent.start": ("110100 Application Activity / 110120 Application Start", "E"),
    "agent.stop": ("110100 Application Activity / 110121 Application Stop", "E"),
    "config.change": ("110100 Application Activity", "U"),
    "exam.start": ("110111 Procedure Record", "C"),
    "exam.end": ("110111 Procedure Record", "U"),
    "exam.assign": ("110111 Procedure Record", "U"),
    "retry": ("110104 DICOM Instances Transferred", "R"),
    "purge": ("110105 DICOM Study Deleted", "D"),
    "alarm.acknowledge": ("110100 Application Activity", "E"),
    "operator.sign_in": ("110114 User Authentication / 110122 Login", "E"),
    "operator.lock": ("110114 User Authentication / 110123 Logout", "E"),
}


@dataclass(frozen=True)
class AuditRecord:
    time: datetime
    action: str  # a key of ATNA_EVENTS
    operator: str  # the person named in the request ("" if none)
    os_user: str  # the OS user on the other end of the control socket ("" if unknown)
    outcome: str  # "success", or the failure in plain words
    objects: Mapping[str, Any] = field(default_factory=dict)  # study, token, series, ...

    def to_json(self) -> dict[str, Any]:
        event, code = ATNA_EVENTS[self.action]
        return {
            "time": utc_iso(self.time),
            "action": self.action,
            "atna_event": event,
            "atna_action": code,
            "operator": self.operator,
            "os_user": self.os_user,
            "outcome": self.outcome,
            "objects": dict(self.objects),
        }


class AuditTrail:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._tail_ok = False  # the file is known to end with a whole line

    def record(
        self,
        action: str,
        *,
        operator: str = "",
        os_user: str = "",
        outcome: str = "success",
        **objects: Any,
    ) -> AuditRecord:
        """Append one record durably. OSError if it could not be written: the caller decides
        whether the action may go on without its record."""
        if action not in ATNA_EVENTS:
            raise ValueError(f"unknown audit action {action!r}")
        rec = AuditRecord(datetime.now(UTC), action, operator, os_user, outcome, objects)
        line = json.dumps(rec.to_json(), ensure_ascii=False).encode() + b"\n"
        with self._lock:
            if not self._tail_ok and not ends_with_newline(self.path):
                line = b"\n" + line  # a line torn by a crash must not swallow this one
            self._tail_ok = False  # until this append is known whole
            append_durable(self.path, line)
            self._tail_ok = True
        return rec

    def read(self) -> tuple[list[dict[str, Any]], list[int]]:
        """Every record, oldest first, and the numbers (1-based) of the lines that are not
        records (torn by a crash, or damaged)."""
        records: list[dict[str, Any]] = []
        bad: list[int] = []
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return records, bad
        for number, line in enumerate(data.splitlines(), 1):
            try:
                doc = json.loads(line)
                if not isinstance(doc, dict) or "action" not in doc:
                    raise ValueError("not a record")
                records.append(doc)
            except ValueError:
                bad.append(number)
        return records, bad
