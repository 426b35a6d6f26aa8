"""`exam assign`: one at a time, crash-safe (an interrupted assignment resumes to the same exam,
at the next call or at start), all or nothing when the held copy is forgotten, and an explicit
override for a series still being acquired, whose next slices then follow it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

from agent import holding as holding_module
from agent.assignment import assign_series, resume_assignments
from agent.control.protocol import OpError
from agent.dicom.assembler import Series
from agent.exam import Exam
from agent.holding import Holding
from agent.spool import SpooledInstance
from hardware.base import SeriesEnd, SliceReady
from tests.factory import UIDS
from tests.test_acquisition import Rig, make_rig, open_exam, slice_, start

if TYPE_CHECKING:
    from agent.daemon import Daemon

UNKNOWN = "0badc0de"


def daemon(r: Rig) -> Daemon:
    return cast("Daemon", r)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = make_rig(tmp_path)
    yield r
    r.spool.close()


def held_series(r: Rig, slices: int, *, ended: bool = True) -> str:
    r.run(start("H1", UNKNOWN), *[slice_("H1", i) for i in range(slices)])
    if ended:
        r.run(SeriesEnd("H1", slices))
    (held,) = r.holding.series()
    return held.series_instance_uid


def filed(r: Rig, series_uid: str) -> list[int]:
    return sorted(i.record.instance_number for i in r.instances(series_uid))


def test_an_assigned_series_is_filed_recorded_and_forgotten(rig: Rig) -> None:
    e = open_exam(rig)
    uid = held_series(rig, 3)
    assert assign_series(daemon(rig), uid, e.token, "LEAD^TECH").exam == e
    assert filed(rig, uid) == [1, 2, 3]
    assert {i.record.study_instance_uid for i in rig.instances(uid)} == {e.study_instance_uid}
    ((a),) = rig.book.assignments()
    assert (a.series_instance_uid, a.token, a.operator) == (uid, e.token, "LEAD^TECH")
    assert rig.holding.series() == [] and rig.alarm("unassigned_series") == []
    assert list((rig.root / "spool" / "unassigned").iterdir()) == []


def test_a_second_assign_while_one_runs_is_a_conflict(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = open_exam(rig)
    uid = held_series(rig, 2)
    inside, go_on = threading.Event(), threading.Event()
    accept = rig.acquisition.accept

    def slow(series: Series, s: SliceReady) -> SpooledInstance:
        inside.set()
        assert go_on.wait(30)
        return accept(series, s)

    monkeypatch.setattr(rig.acquisition, "accept", slow)
    first = threading.Thread(target=assign_series, args=(daemon(rig), uid, e.token, "A"))
    first.start()
    assert inside.wait(30)
    with pytest.raises(OpError) as second:
        assign_series(daemon(rig), uid, e.token, "B")
    go_on.set()
    first.join()
    assert second.value.code == "conflict" and "being assigned" in second.value.message
    assert filed(rig, uid) == [1, 2] and len(rig.book.assignments()) == 1


def interrupt_after(r: Rig, monkeypatch: pytest.MonkeyPatch, accepted: int) -> None:
    """The next assignment fails (a full disk) once `accepted` slices are filed."""
    accept = r.acquisition.accept
    count = [0]

    def failing(series: Series, s: SliceReady) -> SpooledInstance:
        count[0] += 1
        if count[0] > accepted:
            raise OSError(28, "No space left on device")
        return accept(series, s)

    monkeypatch.setattr(r.acquisition, "accept", failing)


def test_an_interrupted_assign_finishes_only_to_the_same_exam(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = open_exam(rig)
    uid = held_series(rig, 4)
    interrupt_after(rig, monkeypatch, 2)
    with pytest.raises(OpError) as failed:
        assign_series(daemon(rig), uid, first.token, "LEAD^TECH")
    assert failed.value.code == "failed" and "ENOSPC" in failed.value.message
    monkeypatch.undo()
    assert filed(rig, uid) == [1, 2] and rig.holding.find(uid) is not None
    rig.book.end(None, first.started)
    other = open_exam(rig)
    with pytest.raises(OpError) as refused:
        assign_series(daemon(rig), uid, other.token, "SOMEONE^ELSE")
    assert refused.value.code == "conflict" and first.token in refused.value.message
    assign_series(daemon(rig), uid, first.study_instance_uid, "SOMEONE^ELSE")
    assert filed(rig, uid) == [1, 2, 3, 4]  # each slice once
    assert {i.record.study_instance_uid for i in rig.instances(uid)} == {first.study_instance_uid}
    ((a),) = rig.book.assignments()
    assert a.operator == "LEAD^TECH"  # who decided, when the intent was recorded
    assert rig.holding.series() == []


def test_an_interrupted_assign_resumes_at_start(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    e = open_exam(rig)
    uid = held_series(rig, 3)
    interrupt_after(rig, monkeypatch, 1)
    with pytest.raises(OpError):
        assign_series(daemon(rig), uid, e.token, "LEAD^TECH")
    monkeypatch.undo()
    again = rig.restart()
    try:
        (held,) = again.holding.series()
        assert held.intent is not None and held.intent.token == e.token
        assert held.to_json()["assigning_to"] == e.token
        resume_assignments(daemon(again))
        assert filed(again, uid) == [1, 2, 3] and again.holding.series() == []
        assert len(again.book.assignments()) == 1
    finally:
        again.spool.close()


def test_forgetting_a_held_series_is_all_or_nothing(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = open_exam(rig)
    uid = held_series(rig, 2)

    def crash(path: Any, ignore_errors: bool = False) -> None:
        raise SystemExit("power cut")  # after the rename, before anything is removed

    monkeypatch.setattr(holding_module.shutil, "rmtree", crash)
    with pytest.raises(SystemExit):
        assign_series(daemon(rig), uid, e.token, "LEAD^TECH")
    monkeypatch.undo()
    root = rig.root / "spool" / "unassigned"
    assert [p.name for p in root.iterdir()] == [f".forgotten-{uid}"]
    assert Holding(root, UIDS).series() == []  # skipped at load (and removed)
    assert list(root.iterdir()) == []
    assert filed(rig, uid) == [1, 2]


def test_a_series_still_being_acquired_needs_the_override_and_its_next_slices_follow(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    e = open_exam(rig)
    uid = held_series(rig, 3, ended=False)
    with pytest.raises(OpError) as refused:
        assign_series(daemon(rig), uid, e.token, "LEAD^TECH")
    assert refused.value.code == "conflict" and "--incomplete" in refused.value.message
    with caplog.at_level(logging.INFO, logger="agent.assignment"):
        assign_series(daemon(rig), uid, e.token, "LEAD^TECH", incomplete=True)
    (logged,) = [r.getMessage() for r in caplog.records if r.name == "agent.assignment"]
    assert "incomplete" in logged and uid in logged and "DOE" not in logged
    rig.driver.released.clear()
    rig.run(slice_("H1", 3), slice_("H1", 4), SeriesEnd("H1", 5))
    assert rig.driver.released == [("H1", 3), ("H1", 4)]
    assert filed(rig, uid) == [1, 2, 3, 4, 5]
    assert {i.record.study_instance_uid for i in rig.instances(uid)} == {e.study_instance_uid}
    assert rig.holding.series() == [] and rig.alarm("series_gap") == []


def test_a_series_whose_start_was_never_seen_cannot_be_assigned(rig: Rig) -> None:
    e: Exam = open_exam(rig)
    rig.run(slice_("LOST", 0), SeriesEnd("LOST", 1))
    (held,) = rig.holding.series()
    with pytest.raises(OpError) as refused:
        assign_series(daemon(rig), held.series_instance_uid, e.token, "LEAD^TECH")
    assert refused.value.code == "conflict" and "series start not seen" in refused.value.message
    assert rig.holding.find(held.series_instance_uid) is not None
