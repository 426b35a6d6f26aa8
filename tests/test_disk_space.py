"""The spool's free space: thresholds, the alarm, refusal of new exams, recovery."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.alarms import Alarms
from agent.disk_space import MB, Level, SpaceLimits, SpoolSpace, free_bytes


class Disk:
    def __init__(self, free_mb: int) -> None:
        self.free_mb = free_mb
        self.error: OSError | None = None

    def __call__(self, path: Path) -> int:
        if self.error is not None:
            raise self.error
        return self.free_mb * MB


def make(tmp_path: Path, disk: Disk) -> tuple[SpoolSpace, list[tuple[str, dict[str, Any]]]]:
    published: list[tuple[str, dict[str, Any]]] = []
    alarms = Alarms(lambda event, data: published.append((event, data)))
    return SpoolSpace(tmp_path, SpaceLimits(1000, 200), alarms, disk), published


def test_levels_alarm_and_recovery(tmp_path: Path) -> None:
    disk = Disk(5000)
    space, published = make(tmp_path, disk)
    assert space.check() is Level.OK and space.refusal() is None and not published
    disk.free_mb = 999
    assert space.check() is Level.LOW and space.refusal() is None
    assert published[-1][0] == "alarm.raised" and "999 MB free" in published[-1][1]["message"]
    disk.free_mb = 998  # same level: no new alarm event for every megabyte
    raised = len(published)
    assert space.check() is Level.LOW and len(published) == raised
    disk.free_mb = 150
    refusal = space.refusal()
    assert refusal is not None and "150 MB free" in refusal and "200 MB" in refusal
    assert "new exams are refused" in space.alarms.active()[0].message
    disk.free_mb = 1000  # space returned: the alarm goes, exams start again
    assert space.check() is Level.OK and space.refusal() is None
    assert published[-1][0] == "alarm.cleared" and not space.alarms.active()


def test_unreadable_file_system_refuses(tmp_path: Path) -> None:
    disk = Disk(5000)
    space, _ = make(tmp_path, disk)
    disk.error = OSError(5, "Input/output error")
    refusal = space.refusal()
    assert refusal is not None and "unreadable: Input/output error" in refusal
    assert "unreadable" in space.alarms.active()[0].message


def test_limits_are_ordered() -> None:
    with pytest.raises(ValueError, match="refuse_free_mb"):
        SpaceLimits(warn_free_mb=100, refuse_free_mb=200)


def test_free_bytes_of_a_real_file_system(tmp_path: Path) -> None:
    assert free_bytes(tmp_path) > 0
