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
        self.free_mb = 0

    def check(self) -> Level:
        """Measure, and raise or clear the `disk_low` alarm. An unreadable file system counts
        as full: refusing an exam is safe, accepting one onto a broken disk is not."""
        try:
            self.free_mb = self._free(self.path) // MB
        except OSError as e:
            self.level = Level.FULL
            self.alarms.raise_(ALARM, f"spool file system {self.path} unreadable: {e.strerror}")
            return self.level
        if self.free_mb < self.limits.refuse_free_mb:
            self.level = Level.FULL
            self.alarms.raise_(
                ALARM,
                f"spool disk nearly full: {self.free_mb} MB free, below "
                f"{self.limits.refuse_free_mb} MB: new exams are refused",
            )
        elif self.free_mb < self.limits.warn_free_mb:
            self.level = Level.LOW
            self.alarms.raise_(
                ALARM,
                f"spool disk low: {self.free_mb} MB free, below {self.limits.warn_free_mb} MB",
            )
        else:
            self.level = Level.OK
            self.alarms.clear(ALARM)
        return self.level

    def refusal(self) -> str | None:
        """Why a new exam must not start now (measured afresh), or None."""
        if self.check() is not Level.FULL:
            return None
        return (
            f"the spool disk has {self.free_mb} MB free, below the {self.limits.refuse_free_mb} "
            "MB needed to start an exam: free space (deliver or purge studies) first"
        )
