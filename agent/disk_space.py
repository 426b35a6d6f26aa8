"""Free space on the spool's file system (SPEC §5): an alarm when it runs low, and new exams
refused before it is full, so that the scanner stops before data could be lost.

Only new exams are refused: an exam already open goes on (its slices are already being
acquired), and if the disk does fill, the acquisition stalls with the hardware waiting and an
alarm (agent.acquisition), and resumes when space returns. Nothing is ever dropped.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.alarms import Alarms

MB = 1024 * 1024
ALARM = "disk_low"


class Level(enum.Enum):
    OK = "ok"
    LOW = "low"  # below the warning threshold: an alarm
    FULL = "full"  # below the refusal threshold: an alarm, and no new exam


@dataclass(frozen=True)
class SpaceLimits:
    warn_free_mb: int
    refuse_free_mb: int

    def __post_init__(self) -> None:
        if not 0 <= self.refuse_free_mb <= self.warn_free_mb:
            raise ValueError(
                f"expected 0 <= refuse_free_mb ({self.refuse_free_mb}) "
                f"<= warn_free_mb ({self.warn_free_mb})"
            )


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer can still use on `path`'s file system."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class SpoolSpace:
    def __init__(
        self,
        path: Path,
        limits: SpaceLimits,
        alarms: Alarms,
        free: Callable[[Path], int] = free_bytes,
    ) -> None:
        self.path = path
        self.limits = limits
        self.alarms = alarms
        self._free = free
        self.level = Level.OK
        self.reason = ""  # the alarm's message while the level is not OK
        self.free_mb = 0

    def check(self) -> Level:
        """Measure; raise the `disk_low` alarm when the level drops, clear it when space is
        back (published on a change of level, not on every megabyte). An unreadable file
        system counts as full: refusing an exam is safe, accepting one onto a broken disk is
        not."""
        try:
            self.free_mb = self._free(self.path) // MB
        except OSError as e:
            self._set(Level.FULL, f"spool file system {self.path} unreadable: {e.strerror}")
            return self.level
        if self.free_mb < self.limits.refuse_free_mb:
            self._set(
                Level.FULL,
                f"spool disk nearly full: {self.free_mb} MB free, below "
                f"{self.limits.refuse_free_mb} MB: new exams are refused",
            )
        elif self.free_mb < self.limits.warn_free_mb:
            self._set(
                Level.LOW,
                f"spool disk low: {self.free_mb} MB free, below {self.limits.warn_free_mb} MB",
            )
        else:
            self._set(Level.OK, "")
        return self.level

    def refusal(self) -> str | None:
        """Why a new exam must not start now (measured afresh), or None."""
        if self.check() is not Level.FULL:
            return None
        return f"{self.reason}: free space (deliver or purge studies) first"

    def _set(self, level: Level, reason: str) -> None:
        """`reason` is always the fresh one (for `refusal`); the alarm is raised again only
        when the level or the kind of cause changes."""
        before, self.level, self.reason = (self.level, self.reason), level, reason
        if level is Level.OK:
            self.alarms.clear(ALARM)
            return
        cause_changed = ("unreadable" in reason) != ("unreadable" in before[1])
        if level is not before[0] or cause_changed or not self.alarms.is_active(ALARM):
            self.alarms.raise_(ALARM, reason)
