"""Alarms: conditions a person must see (unassigned series, an archive rejecting us, ...).

Raised once per (kind, subject) and cleared when the condition is gone; every change is
published so that the TUI shows it at once.
"""

from __future__ import annotations

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

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "message": self.message,
            "since": utc_iso(self.since),
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
            since = old.since if old else datetime.now(UTC)
            alarm = self._active[(kind, subject)] = Alarm(kind, subject, message, since)
        self._notify("alarm.raised", alarm.to_json())

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
