"""Every exam the console knows, and which one is open: persisted so that a daemon restarted
in the middle of a scan carries on with the same exam, and a late reconstruction of an earlier
patient is still filed under that patient's exam (SPEC §3, §5)."""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import asdict, dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

from agent.exam import Encoded, Exam, Patient, Procedure, Scheduled
from agent.spool.files import write_durable

OPEN, COMPLETED, DISCONTINUED = "open", "completed", "discontinued"


@dataclass(frozen=True)
class ExamEntry:
    exam: Exam
    state: str = OPEN  # open, completed or discontinued
    ended: datetime | None = None
    discontinue_reason: str | None = None

    @property
    def is_open(self) -> bool:
        return self.state == OPEN


@dataclass(frozen=True)
class Assignment:
    """A person filed a held series under an exam (SPEC §3: who and when)."""

    series_instance_uid: str
    token: str
    operator: str
    at: datetime


class ExamConflict(Exception):
    """Refused in the current state: an exam is already open, or none is."""


class ExamBook:
    """A small JSON document, rewritten atomically (temp, fsync, rename, folder fsync)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: dict[str, ExamEntry] = {}
        self._assignments: list[Assignment] = []
        if path.exists():
            self._load(json.loads(path.read_text(encoding="utf-8")))

    @property
    def current(self) -> Exam | None:
        with self._lock:
            return next((e.exam for e in self._entries.values() if e.is_open), None)

    def entry(self, token: str) -> ExamEntry | None:
        with self._lock:
            return self._entries.get(token)

    def find(self, key: str) -> ExamEntry | None:
        """By token or Study Instance UID."""
        with self._lock:
            if key in self._entries:
                return self._entries[key]
            return next(
                (e for e in self._entries.values() if e.exam.study_instance_uid == key), None
            )

    def entries(self) -> list[ExamEntry]:
        with self._lock:
            return list(self._entries.values())

    def start(self, exam: Exam) -> None:
        with self._lock:
            if any(e.is_open for e in self._entries.values()):
                raise ExamConflict("an exam is already open; end it first")
            self._entries[exam.token] = ExamEntry(exam)
            self._save()

    def end(self, discontinue_reason: str | None, now: datetime) -> ExamEntry:
        with self._lock:
            entry = next((e for e in self._entries.values() if e.is_open), None)
            if entry is None:
                raise ExamConflict("no exam is open")
            state = DISCONTINUED if discontinue_reason else COMPLETED
            ended = replace(entry, state=state, ended=now, discontinue_reason=discontinue_reason)
            self._entries[entry.exam.token] = ended
            self._save()
            return ended

    def record_assignment(self, assignment: Assignment) -> None:
        with self._lock:
            self._assignments.append(assignment)
            self._save()

    def assignments(self) -> list[Assignment]:
        with self._lock:
            return list(self._assignments)

    def _save(self) -> None:
        doc = {
            "version": 1,
            "exams": [_entry_to_json(e) for e in self._entries.values()],
            "assignments": [_to_json(asdict(a)) for a in self._assignments],
        }
        write_durable(self.path, json.dumps(doc, indent=1).encode("utf-8"))

    def _load(self, doc: dict[str, Any]) -> None:
        for raw in doc.get("exams", []):
            entry = _entry_from_json(raw)
            self._entries[entry.exam.token] = entry
        for raw in doc.get("assignments", []):
            self._assignments.append(
                Assignment(
                    series_instance_uid=raw["series_instance_uid"],
                    token=raw["token"],
                    operator=raw["operator"],
                    at=datetime.fromisoformat(raw["at"]),
                )
            )


def _to_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):  # a worklist value as encoded
        return base64.b64encode(value).decode("ascii")
    return value


def _entry_to_json(entry: ExamEntry) -> dict[str, Any]:
    doc: dict[str, Any] = _to_json(asdict(entry))
    return doc


def _entry_from_json(raw: dict[str, Any]) -> ExamEntry:
    e = raw["exam"]
    p = dict(e["patient"])
    p["birth_date"] = date.fromisoformat(p["birth_date"]) if p.get("birth_date") else None
    p["encoded"] = _encoded(p.get("encoded", []))
    proc = dict(e["procedure"])
    proc["scheduled"] = _scheduled_from_json(proc.get("scheduled"))
    exam = Exam(
        **{
            **e,
            "patient": Patient(**p),
            "procedure": Procedure(**proc),
            "started": datetime.fromisoformat(e["started"]),
            "destinations": tuple(e["destinations"]),
        }
    )
    ended = datetime.fromisoformat(raw["ended"]) if raw.get("ended") else None
    return ExamEntry(exam, raw["state"], ended, raw.get("discontinue_reason"))


def _encoded(raw: list[dict[str, Any]]) -> tuple[Encoded, ...]:
    return tuple(Encoded(r["tag"], r["vr"], base64.b64decode(r["value"])) for r in raw)


def _scheduled_from_json(raw: dict[str, Any] | None) -> Scheduled | None:
    if raw is None:
        return None
    return Scheduled(
        character_set=tuple(raw["character_set"]),
        study=_encoded(raw["study"]),
        request=_encoded(raw["request"]),
        protocol_codes=tuple(_encoded(code) for code in raw["protocol_codes"]),
        procedure_codes=tuple(_encoded(code) for code in raw.get("procedure_codes", [])),
        diagnosis_codes=tuple(_encoded(code) for code in raw.get("diagnosis_codes", [])),
        reason_codes=tuple(_encoded(code) for code in raw.get("reason_codes", [])),
    )
