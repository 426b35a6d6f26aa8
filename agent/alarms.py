"""Alarms: conditions a person must see (unassigned series, an archive rejecting us, ...).

Raised once per (kind, subject) and cleared when the condition is gone; every change is
published so that the TUI shows it at once.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.timestamps import utc_iso


@dataclass(frozen=True)
class Alarm:
    kind: str
    subject: str  # what it is about: a destination, a series UID, ... ("" for the agent)
    message: str
    since: datetime
    acknowledged_by: str = ""  # the operator who saw it (this raising of it)
    acknowledged_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        seen = self.acknowledged_at
        return {
            "kind": self.kind,
            "subject": self.subject,
            "message": self.message,
            "since": utc_iso(self.since),
            "acknowledged": (
                None if seen is None else {"by": self.acknowledged_by, "at": utc_iso(seen)}
            ),
        }


class Alarms:
    def __init__(self, notify: Callable[[str, dict[str, Any]], None]) -> None:
        self._notify = notify
        self._lock = threading.Lock()
        self._active: dict[tuple[str, str], Alarm] = {}

    def raise_(self, kind: str, message: str, subject: str = "") -> None:
        with self._lock:
            old = self._active.get((kind, subject))
            if old is not None and old.message == message:
                return
            if old is not None:  # the same raising, said anew: its acknowledgement stands
                alarm = dataclasses.replace(old, message=message)
            else:
                alarm = Alarm(kind, subject, message, datetime.now(UTC))
            self._active[(kind, subject)] = alarm
        self._notify("alarm.raised", alarm.to_json())

    def acknowledge(self, kind: str, subject: str, by: str) -> Alarm | None:
        """The operator saw it: shown as such to every client until it is cleared (the alarm
        itself stays while its cause lasts). None when no such alarm is active."""
        with self._lock:
            old = self._active.get((kind, subject))
            if old is None:
                return None
            alarm = dataclasses.replace(old, acknowledged_by=by, acknowledged_at=datetime.now(UTC))
            self._active[(kind, subject)] = alarm
        self._notify("alarm.acknowledged", alarm.to_json())
        return alarm

    def clear(self, kind: str, subject: str = "") -> None:
        with self._lock:
            alarm = self._active.pop((kind, subject), None)
        if alarm is not None:
            self._notify("alarm.cleared", alarm.to_json())

    def is_active(self, kind: str, subject: str = "") -> bool:
        with self._lock:
            return (kind, subject) in self._active

    def active(self) -> list[Alarm]:
        with self._lock:
            return sorted(self._active.values(), key=lambda a: a.since)
