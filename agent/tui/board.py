"""What the screens show, kept from the daemon's answers and events: pure, no Textual, no I/O.

The daemon is the source of truth; the board only remembers its last answers and applies the
events in between. `apply` says which parts changed and what to ask again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

AlarmKey = tuple[str, str]  # (kind, subject): how the daemon identifies an alarm


@dataclass
class Series:
    uid: str
    number: int | None
    description: str
    slices: int = 0
    ended: bool = False
    expected: int | None = None  # as the hardware counted them at series end


@dataclass
class Changes:
    parts: set[str] = field(default_factory=set)  # "exam", "alarms", "delivery", "worklist"
    ask: set[str] = field(default_factory=set)  # ops to ask again: "queue", "exam.status", ...


@dataclass
class Board:
    hello: dict[str, Any] | None = None
    status: dict[str, Any] | None = None
    exam: dict[str, Any] | None = None  # the open (or last ended) exam
    unassigned: list[dict[str, Any]] = field(default_factory=list)
    series: dict[str, Series] = field(default_factory=dict)  # of the exam shown, by UID
    queue: dict[str, Any] | None = None
    worklist: dict[str, Any] | None = None
    worklist_error: str | None = None
    worklist_at: datetime | None = None  # when that answer came (its age counts from there)
    alarms: dict[AlarmKey, dict[str, Any]] = field(default_factory=dict)
    acknowledged: dict[AlarmKey, str] = field(default_factory=dict)  # key -> its `since`
    echo: dict[str, tuple[dict[str, Any], datetime]] = field(default_factory=dict)
    last_seq: int = 0

    # -- documents ------------------------------------------------------------------------

    def take_status(self, doc: dict[str, Any]) -> None:
        self.status = doc
        self._take_exam(doc.get("exam"))
        self.alarms = {(a["kind"], a["subject"]): a for a in doc.get("alarms", [])}
        self._forget_acknowledged()
        for key, alarm in self.alarms.items():
            if alarm.get("acknowledged"):  # seen at another console, or before a restart
                self.acknowledged[key] = alarm["since"]

    def take_exam_status(self, doc: dict[str, Any]) -> None:
        self._take_exam(doc.get("exam"))
        self.unassigned = list(doc.get("unassigned", []))
        if self.exam is not None and doc.get("exam") is not None:
            for listed in doc.get("series", []):
                self._take_series(listed)

    def _take_series(self, listed: dict[str, Any]) -> None:
        """A series as the spool holds it. Events may have counted further since the answer
        was made, or not yet: both counts only grow, so the larger is the newer."""
        s = self._series(listed)
        s.slices = max(s.slices, int(listed.get("slices", 0)))
        s.ended = s.ended or bool(listed.get("ended"))

    def take_queue(self, doc: dict[str, Any]) -> None:
        self.queue = doc
        self.unassigned = list(doc.get("unassigned", self.unassigned))

    def _take_exam(self, exam: dict[str, Any] | None) -> None:
        if exam is None:
            if self.exam is not None and self.exam.get("state") == "open":
                self.exam = None  # ended elsewhere while we were away
            return
        if self.exam is None or exam["study_instance_uid"] != self.exam["study_instance_uid"]:
            self.series = {}
        self.exam = exam

    def _forget_acknowledged(self) -> None:
        """An acknowledgement holds for that raising of the alarm only."""
        self.acknowledged = {
            k: since
            for k, since in self.acknowledged.items()
            if k in self.alarms and self.alarms[k]["since"] == since
        }

    # -- events ---------------------------------------------------------------------------

    def apply(self, seq: int, name: str, data: dict[str, Any]) -> Changes:
        changes = Changes()
        if self.last_seq and seq != self.last_seq + 1:  # the daemon dropped some for us
            changes.ask |= {"status", "exam.status", "queue"}
        self.last_seq = seq
        topic = name.partition(".")[0]
        if name == "exam.started":
            self.series = {}
            self.exam = data
            changes.parts.add("exam")
            changes.ask.add("queue")
        elif name == "exam.ended":
            if self.exam is None or self.exam["study_instance_uid"] == data["study_instance_uid"]:
                self.exam = data
            changes.parts.add("exam")
            changes.ask.add("queue")
        elif name in ("series.started", "series.ended"):
            if self._ours(data):
                s = self._series(data)
                if name == "series.ended":
                    s.ended = True
                    s.expected = data.get("slices")
                changes.parts.add("exam")
        elif name == "slice.accepted":
            if self._ours(data):
                self._series(data).slices += 1
                changes.parts.add("exam")
            changes.ask.add("queue")
        elif topic == "series" or name == "slice.held":
            changes.ask.add("exam.status")
        elif topic == "delivery":
            changes.ask.add("queue")
        elif name in ("alarm.raised", "alarm.acknowledged"):
            key = (data["kind"], data["subject"])
            self.alarms[key] = data
            self._forget_acknowledged()
            if data.get("acknowledged"):  # by any console: the daemon keeps it
                self.acknowledged[key] = data["since"]
            changes.parts.add("alarms")
        elif name == "alarm.cleared":
            self.alarms.pop((data["kind"], data["subject"]), None)
            self._forget_acknowledged()
            changes.parts.add("alarms")
        return changes

    def _ours(self, data: dict[str, Any]) -> bool:
        return self.exam is not None and data.get("study_instance_uid") == self.exam.get(
            "study_instance_uid"
        )

    def _series(self, data: dict[str, Any]) -> Series:
        uid = data["series_instance_uid"]
        s = self.series.get(uid)
        if s is None:
            s = self.series[uid] = Series(uid, data.get("series_number"), "")
        if data.get("description"):
            s.description = data["description"]
        if data.get("series_number") is not None:
            s.number = data["series_number"]
        return s

    # -- alarms ---------------------------------------------------------------------------

    def acknowledge(self, key: AlarmKey) -> None:
        alarm = self.alarms.get(key)
        if alarm is not None:
            self.acknowledged[key] = alarm["since"]

    def newest_unacknowledged(self) -> dict[str, Any] | None:
        waiting = [a for k, a in self.alarms.items() if k not in self.acknowledged]
        return max(waiting, key=lambda a: a["since"], default=None)

    def alarms_newest_first(self) -> list[dict[str, Any]]:
        return sorted(self.alarms.values(), key=lambda a: a["since"], reverse=True)

    # -- delivery -------------------------------------------------------------------------

    def deliveries(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(study, destination) pairs, newest study first (the queue lists oldest first)."""
        studies = (self.queue or {}).get("studies", [])
        return [(s, d) for s in reversed(studies) for d in s.get("destinations", [])]

    def study_images(self, study_uid: str) -> int | None:
        for s in (self.queue or {}).get("studies", []):
            if s["study_instance_uid"] == study_uid:
                return int(s["images"])
        return None
