"""Acquisition with a scripted in-process driver: nothing taken from the hardware is dropped
(transient failures are retried before the next event, permanent ones quarantined), open series
survive a restart, gaps are named at the series end."""

from __future__ import annotations

import errno
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO

from agent.acquisition import Acquisition, Routing
from agent.alarms import Alarms
from agent.dicom.assembler import Assembler
from agent.exam import Exam, Patient
from agent.exam_book import ExamBook
from agent.holding import START_NOT_SEEN, Holding
from agent.net.retry import Backoff
from agent.spool import Spool, SpooledInstance
from hardware.base import Driver, DriverError, Event, SeriesEnd, SeriesStart, SliceReady
from hardware.dose import IrradiationEvent
from hardware.event_codec import (
    EventCodecError,
    slice_from_bytes,
    slice_to_bytes,
    start_from_json,
    start_to_json,
)
from hardware.mock import RECONS, simulated_irradiation, simulated_series_start
from tests.factory import EQUIPMENT, UIDS, exam

SIZE = 16


class Scripted(Driver):
    """Hands out the events it is given, in order; records reads and releases. `on_read`,
    `on_release` and `on_acknowledge` see each event first (releases come from the
    acquisition's workers)."""

    def __init__(self) -> None:
        self.events: deque[Event] = deque()
        self.released: list[tuple[str, int]] = []
        self.acknowledged: list[SeriesEnd | IrradiationEvent] = []
        self.reads = 0
        self.on_read: Callable[[Event], None] = lambda event: None
        self.on_release: Callable[[SliceReady], None] = lambda slice_: None
        self.on_acknowledge: Callable[[SeriesEnd | IrradiationEvent], None] = lambda e: None

    def open(self) -> None:
        pass

    def set_exam_token(self, token: str | None) -> None:
        pass

    def read_event(self, timeout: float) -> Event | None:
        self.reads += 1
        if not self.events:
            return None
        event = self.events.popleft()
        self.on_read(event)
        return event

    def release(self, slice_: SliceReady) -> None:
        self.on_release(slice_)
        self.released.append((slice_.series_key, slice_.index))

    def acknowledge(self, event: SeriesEnd | IrradiationEvent) -> None:
        self.on_acknowledge(event)
        self.acknowledged.append(event)

    def close(self) -> None:
        pass


def start(key: str, token: str, **changes: Any) -> SeriesStart:
    s = simulated_series_start(token, key, 1, RECONS[0], None)
    return replace(s, rows=SIZE, columns=SIZE, **changes)


def slice_(key: str, index: int, size: int = SIZE) -> SliceReady:
    pixels = np.full((size, size), 1000 + index, np.uint16)
    position = (0.0, 0.0, -5.0 * index)
    return SliceReady(key, index, position, 5.0 * index, datetime.now(UTC), pixels)


@dataclass
class Rig:
    """An acquisition on a spool folder, with what a daemon gives it; also stands in for the
    daemon in `exam assign` (book, holding, acquisition, spool, alarms, route, wake)."""

    root: Path
    driver: Scripted
    spool: Spool
    book: ExamBook
    holding: Holding
    alarms: Alarms
    acquisition: Acquisition
    published: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def run(self, *events: Event, timeout: float = 0) -> None:
        """Feed `events` and handle them all (retries included: the backoff is zero). Each
        poll(0) takes one event; a longer `timeout` lets a poll pipeline the slices."""
        self.driver.events.extend(events)
        for _ in range(1000):
            if not self.driver.events and self.acquisition.pending is None:
                return
            self.acquisition.poll(timeout)
        raise AssertionError("acquisition stuck")

    def durable(self, index: int) -> bool:
        """Slice `index` is in the spool (read from its index)."""
        return any(i.record.instance_number == index + 1 for i in self.spool.instances())

    def route(self, the_exam: Exam) -> Routing:
        return Routing(the_exam.destinations)

    def wake(self, destinations: object) -> None:
        pass

    def instances(self, series_uid: str | None = None) -> list[SpooledInstance]:
        return [
            i
            for i in self.spool.instances()
            if series_uid is None or i.record.series_instance_uid == series_uid
        ]

    def alarm(self, kind: str) -> list[str]:
        return [a.message for a in self.alarms.active() if a.kind == kind]

    def restart(self) -> Rig:
        self.spool.close()
        return make_rig(self.root)


def make_rig(root: Path) -> Rig:
    published: list[tuple[str, dict[str, Any]]] = []
    spool = Spool(root / "spool")
    holding = Holding(root / "spool" / "unassigned", UIDS)
    book = ExamBook(root / "exams.json")
    alarms = Alarms(lambda event, data: published.append((event, data)))
    driver = Scripted()

    def exam_for_token(token: str) -> Exam | None:
        entry = book.entry(token)
        return entry.exam if entry else None

    acquisition = Acquisition(
        driver,
        Assembler(EQUIPMENT, UIDS),
        spool,
        exam_for_token,
        holding=holding,
        alarms=alarms,
        notify=lambda event, data: published.append((event, data)),
        retry=Backoff(0.0, 0.0),
    )
    return Rig(root, driver, spool, book, holding, alarms, acquisition, published)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = make_rig(tmp_path)
    yield r
    r.spool.close()


def open_exam(r: Rig, patient_name: str = "DOE^JANE") -> Exam:
    e = exam()
    e = replace(e, patient=Patient(name=patient_name, id="PID-1"))
    r.book.start(e)
    return e


# -- permanent failures: held with the reason, then released ----------------------------------


def test_a_series_start_that_cannot_be_filed_is_held_with_its_slices(rig: Rig) -> None:
    e = open_exam(rig)
    sagittal = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # not an orientation for a supine patient
    rig.run(start("K1", e.token, image_orientation=sagittal), *[slice_("K1", i) for i in range(3)])
    rig.run(SeriesEnd("K1", 3))
    assert rig.driver.released == [("K1", 0), ("K1", 1), ("K1", 2)]
    assert rig.instances() == []
    (held,) = rig.holding.series()
    assert held.slices == 3 and held.complete and held.start is not None
    assert held.reason == "series start could not be filed (ValueError)"
    assert held.to_json()["reason"] == held.reason
    (message,) = rig.alarm("unassigned_series")
    assert held.reason in message and held.series_instance_uid in message


def test_a_slice_that_cannot_be_filed_is_quarantined_and_the_series_goes_on(rig: Rig) -> None:
    e = open_exam(rig)
    bad = slice_("K1", 1, size=SIZE // 2)  # pixels that do not match the series start
    rig.run(start("K1", e.token), slice_("K1", 0), bad, slice_("K1", 2), SeriesEnd("K1", 3))
    assert rig.driver.released == [("K1", 0), ("K1", 1), ("K1", 2)]
    assert sorted(i.record.instance_number for i in rig.instances()) == [1, 3]
    (held,) = rig.holding.series()
    assert held.indices == {1} and held.reason == "slice could not be filed (ValueError)"
    (got,) = rig.holding.slices(held)
    assert got.pixels.shape == (SIZE // 2, SIZE // 2)
    (gap,) = rig.alarm("series_gap")
    assert "2 of 3 slices" in gap and "missing indices 1" in gap


def test_slices_of_a_series_never_started_are_held(rig: Rig) -> None:
    open_exam(rig)
    rig.run(slice_("LOST", 4), slice_("LOST", 5), SeriesEnd("LOST", 6))
    assert rig.driver.released == [("LOST", 4), ("LOST", 5)]
    (held,) = rig.holding.series()
    assert held.start is None and held.reason == START_NOT_SEEN and held.indices == {4, 5}
    assert held.to_json()["token"] is None
    assert START_NOT_SEEN in rig.alarm("unassigned_series")[0]
    assert "missing indices 0-3" in rig.alarm("series_gap")[0]


@pytest.mark.filterwarnings("ignore:The PN component length")
def test_messages_name_attributes_not_a_patient_s_values(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    name = "X" * 70 + "^SECRETNAME"  # a component longer than PN allows: encoding refuses it
    e = open_exam(rig, patient_name=name)
    with caplog.at_level(logging.INFO):
        rig.run(start("K1", e.token), slice_("K1", 0))
    (held,) = rig.holding.series()
    assert held.reason == "slice could not be filed (InvalidDataset (PatientName))"
    shown = [r.getMessage() for r in caplog.records] + [a.message for a in rig.alarms.active()]
    assert shown and not any("SECRETNAME" in m for m in shown)
    assert rig.driver.released == [("K1", 0)]


# -- transient failures: kept, retried before the next event, never released early ----------


def test_a_full_disk_keeps_the_slice_and_retries_it_before_the_next(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = open_exam(rig)
    rig.run(start("K1", e.token))
    accept = rig.spool.accept
    failures = [OSError(errno.ENOSPC, "No space left on device")] * 2

    def full_disk(*args: Any, **kwargs: Any) -> SpooledInstance:
        if failures:
            raise failures.pop()
        return accept(*args, **kwargs)

    monkeypatch.setattr(rig.spool, "accept", full_disk)
    first = slice_("K1", 0)
    rig.driver.events.extend([first, slice_("K1", 1)])
    a = rig.acquisition
    assert a.poll(0) is None and a.pending is first and rig.driver.released == []
    (stalled,) = rig.alarm("acquisition_stalled")
    assert "slice 0 of series K1" in stalled and "ENOSPC" in stalled
    reads = rig.driver.reads
    assert a.poll(0) is None and a.pending is first and rig.driver.released == []
    assert a.poll(0) is first and a.pending is None
    assert rig.driver.reads == reads  # the driver was not read while the slice was pending
    assert rig.alarm("acquisition_stalled") == []
    rig.run()
    assert rig.driver.released == [("K1", 0), ("K1", 1)]
    assert sorted(i.record.instance_number for i in rig.instances()) == [1, 2]


def test_a_pending_slice_waits_for_its_backoff(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    e = open_exam(rig)
    rig.acquisition.retry = Backoff(3600.0, 3600.0)
    rig.run(start("K1", e.token))

    def fail(*args: Any) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(rig.holding, "quarantine", fail)
    lost = slice_("NEVER-STARTED", 0)
    rig.driver.events.extend([lost, slice_("K1", 0)])
    assert rig.acquisition.poll(0) is None
    reads = rig.driver.reads
    for _ in range(3):
        assert rig.acquisition.poll(0) is None
    assert rig.driver.reads == reads and rig.driver.released == []
    assert rig.acquisition.pending is lost and len(rig.driver.events) == 1


# -- pipelining: several slices in flight, each released once durable, nothing else reordered --

WAIT_S = 30.0  # for an event that a correct acquisition sets; a broken one times out


def accept_hook(rig: Rig, monkeypatch: pytest.MonkeyPatch, before: Callable[[int], object]) -> None:
    """`before(index)` runs in the worker of each slice, before its real accept."""
    accept = rig.spool.accept

    def hooked(record: Any, *args: Any, **kwargs: Any) -> SpooledInstance:
        before(record.instance_number - 1)
        return accept(record, *args, **kwargs)

    monkeypatch.setattr(rig.spool, "accept", hooked)


def test_slices_are_made_durable_side_by_side(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    e = open_exam(rig)
    rig.run(start("K1", e.token))
    both = threading.Barrier(2, timeout=WAIT_S)  # broken (raises) unless two are in flight
    accept_hook(rig, monkeypatch, lambda index: both.wait() if index < 2 else None)
    rig.run(*[slice_("K1", i) for i in range(6)], SeriesEnd("K1", 6), timeout=WAIT_S)
    assert sorted(rig.driver.released) == [("K1", i) for i in range(6)]
    assert sorted(i.record.instance_number for i in rig.instances()) == [1, 2, 3, 4, 5, 6]
    assert rig.acquisition.counts.slices_accepted == 6 and rig.alarm("series_gap") == []


def test_each_slot_is_released_once_its_own_slice_is_durable_in_any_order(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = open_exam(rig)
    rig.run(start("K1", e.token))
    second_released = threading.Event()

    def before(index: int) -> None:
        if index == 0:  # slice 0 becomes durable only after slice 1 was released
            assert second_released.wait(WAIT_S)

    def on_release(s: SliceReady) -> None:
        assert rig.durable(s.index), f"slice {s.index} released before it was durable"
        if s.index == 1:
            second_released.set()

    accept_hook(rig, monkeypatch, before)
    rig.driver.on_release = on_release
    rig.run(slice_("K1", 0), slice_("K1", 1), slice_("K1", 2), timeout=WAIT_S)
    assert rig.driver.released.index(("K1", 1)) < rig.driver.released.index(("K1", 0))
    assert sorted(rig.driver.released) == [("K1", 0), ("K1", 1), ("K1", 2)]


def test_a_series_end_read_while_slices_are_in_flight_waits_for_them(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = open_exam(rig)
    rig.run(start("K1", e.token))
    end_read = threading.Event()
    rig.driver.on_read = lambda event: end_read.set() if isinstance(event, SeriesEnd) else None
    # the last slice is made durable only once its series end was read
    accept_hook(rig, monkeypatch, lambda index: end_read.wait(WAIT_S) if index == 2 else None)

    def on_acknowledge(event: SeriesEnd | IrradiationEvent) -> None:
        assert all(rig.durable(i) for i in range(3)), "series end handled before its slices"
        assert sorted(rig.driver.released) == [("K1", 0), ("K1", 1), ("K1", 2)]

    rig.driver.on_acknowledge = on_acknowledge
    rig.run(*[slice_("K1", i) for i in range(3)], SeriesEnd("K1", 3), timeout=WAIT_S)
    assert end_read.is_set() and len(rig.driver.acknowledged) == 1
    assert rig.alarm("series_gap") == [] and rig.acquisition.counts.series_ended == 1


def test_a_full_disk_under_one_of_the_slices_in_flight_keeps_it_and_what_follows(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = open_exam(rig)
    rig.run(start("K1", e.token))
    failures = [OSError(errno.ENOSPC, "No space left on device")]
    end_read = threading.Event()
    rig.driver.on_read = lambda event: end_read.set() if isinstance(event, SeriesEnd) else None

    def before(index: int) -> None:
        if index == 1 and failures:  # fails once everything was read, the others in flight
            assert end_read.wait(WAIT_S)
            raise failures.pop()

    accept_hook(rig, monkeypatch, before)
    rig.driver.on_acknowledge = lambda event: None if rig.durable(1) else pytest.fail("early end")
    rig.driver.events.extend([*[slice_("K1", i) for i in range(4)], SeriesEnd("K1", 4)])
    a = rig.acquisition
    assert a.poll(WAIT_S) is None  # the end waits behind the slice that failed
    assert isinstance(a.pending, SliceReady) and a.pending.index == 1
    assert ("K1", 1) not in rig.driver.released and rig.driver.acknowledged == []
    assert sorted(rig.driver.released) == [("K1", 0), ("K1", 2), ("K1", 3)]
    assert "slice 1 of series K1" in rig.alarm("acquisition_stalled")[0]
    reads = rig.driver.reads
    rig.run()
    assert rig.driver.reads == reads  # the driver was not read while anything was pending
    assert sorted(rig.driver.released) == [("K1", i) for i in range(4)]
    assert len(rig.driver.acknowledged) == 1 and rig.alarm("series_gap") == []
    assert rig.alarm("acquisition_stalled") == []
    assert sorted(i.record.instance_number for i in rig.instances()) == [1, 2, 3, 4]


def test_a_slice_the_spool_refuses_for_good_in_flight_is_quarantined(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = open_exam(rig)
    rig.run(start("K1", e.token))

    def before(index: int) -> None:
        if index == 2:
            raise ValueError("refused")

    accept_hook(rig, monkeypatch, before)
    rig.run(*[slice_("K1", i) for i in range(4)], SeriesEnd("K1", 4), timeout=WAIT_S)
    assert sorted(rig.driver.released) == [("K1", i) for i in range(4)]
    assert sorted(i.record.instance_number for i in rig.instances()) == [1, 2, 4]
    (held,) = rig.holding.series()
    assert held.indices == {2} and held.reason == "slice could not be filed (ValueError)"
    assert "missing indices 2" in rig.alarm("series_gap")[0]


def test_a_link_lost_on_release_leaves_the_durable_slice_pending_not_filed_twice(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    e = open_exam(rig)
    rig.run(start("K1", e.token))
    lost = [DriverError("link lost")]

    def on_release(s: SliceReady) -> None:
        if s.index == 1 and lost:
            raise lost.pop()

    rig.driver.on_release = on_release
    rig.driver.events.extend(slice_("K1", i) for i in range(3))
    with pytest.raises(DriverError):
        rig.acquisition.poll(WAIT_S)
    pending = rig.acquisition.pending
    assert isinstance(pending, SliceReady) and pending.index == 1 and rig.durable(1)
    rig.run(timeout=WAIT_S)  # reconnected: the pending slice is released, then the rest read
    assert sorted(rig.driver.released) == [("K1", 0), ("K1", 1), ("K1", 2)]
    assert sorted(i.record.instance_number for i in rig.instances()) == [1, 2, 3]


# -- open series survive a restart; a repeated start resumes; gaps are named ---------------------


def test_a_restart_in_the_middle_of_a_series_carries_on_with_it(rig: Rig) -> None:
    e = open_exam(rig)
    rig.run(start("K1", e.token), slice_("K1", 0), slice_("K1", 1))
    (before,) = {i.record.series_instance_uid for i in rig.instances()}
    again = rig.restart()
    try:
        again.run(slice_("K1", 2), slice_("K1", 3), SeriesEnd("K1", 4))
        assert again.driver.released == [("K1", 2), ("K1", 3)]
        got = again.instances()
        assert {i.record.series_instance_uid for i in got} == {before}
        assert sorted(i.record.instance_number for i in got) == [1, 2, 3, 4]
        assert again.holding.series() == [] and again.alarm("series_gap") == []
        assert list((again.root / "spool" / "series").iterdir()) == []  # forgotten at its end
    finally:
        again.spool.close()


def test_a_resumed_series_has_the_same_series_attributes(rig: Rig) -> None:
    e = open_exam(rig)
    rig.run(start("K1", e.token), slice_("K1", 0))
    again = rig.restart()
    try:
        again.run(slice_("K1", 1))
        a, b = (again.spool.read(i) for i in again.instances())
        x, y = (dcmread(DicomBytesIO(data)) for data in (a, b))
        for keyword in ("SeriesInstanceUID", "SeriesNumber", "SeriesDate", "SeriesTime"):
            assert x[keyword].value == y[keyword].value, keyword
        assert x.TimezoneOffsetFromUTC == y.TimezoneOffsetFromUTC
    finally:
        again.spool.close()


def test_a_series_start_seen_again_is_a_resume(rig: Rig) -> None:
    e = open_exam(rig)
    s = start("K1", e.token)
    rig.run(s, slice_("K1", 0), s, slice_("K1", 1), SeriesEnd("K1", 2))
    assert len({i.record.series_instance_uid for i in rig.instances()}) == 1
    assert rig.acquisition.counts.series_started == 1
    held = start("H1", "unknown-token")
    rig.run(held, slice_("H1", 0), held, slice_("H1", 1))
    (only,) = rig.holding.series()
    assert only.indices == {0, 1}
    assert len(list((rig.root / "spool" / "unassigned").iterdir())) == 1


def test_a_slice_announced_again_after_a_restart_is_kept_once(rig: Rig) -> None:
    e = open_exam(rig)
    rig.run(start("K1", e.token), slice_("K1", 0), slice_("K1", 1))
    again = rig.restart()
    try:  # the agent died before releasing slice 1: the hardware announces it again
        again.run(slice_("K1", 1), slice_("K1", 2), SeriesEnd("K1", 3))
        assert again.driver.released == [("K1", 1), ("K1", 2)]
        assert sorted(i.record.instance_number for i in again.instances()) == [1, 2, 3]
    finally:
        again.spool.close()


def test_a_gap_is_named_at_the_series_end_even_across_a_restart(rig: Rig) -> None:
    e = open_exam(rig)
    rig.run(start("K1", e.token), slice_("K1", 0), slice_("K1", 2))
    again = rig.restart()
    try:
        again.run(slice_("K1", 3), slice_("K1", 4), slice_("K1", 7), SeriesEnd("K1", 9))
        (series_uid,) = {i.record.series_instance_uid for i in again.instances()}
        (gap,) = [a for a in again.alarms.active() if a.kind == "series_gap"]
        assert gap.subject == series_uid
        assert "5 of 9 slices" in gap.message and "missing indices 1, 5-6, 8" in gap.message
    finally:
        again.spool.close()


def test_a_held_series_with_a_gap_is_named_too(rig: Rig) -> None:
    rig.run(start("H1", "unknown-token"), slice_("H1", 1), SeriesEnd("H1", 2))
    (held,) = rig.holding.series()
    assert held.complete and held.expected == 2
    assert "missing indices 0" in rig.alarm("series_gap")[0]


# -- the one codec of hardware events -------------------------------------------------------------


def test_events_survive_the_codec_exactly() -> None:
    s = start("K1", "tok", contrast_agent="IOHEXOL", spiral_pitch_factor=None)
    assert start_from_json(start_to_json(s)) == s
    one = slice_("K1", 3)
    got = slice_from_bytes(slice_to_bytes(replace(one, slot=7)))
    assert got.slot is None and (got.pixels == one.pixels).all()
    assert got.pixels.dtype == np.uint16 and got.pixels.flags.writeable
    assert replace(got, pixels=one.pixels) == one


def test_the_codec_refuses_what_it_did_not_write() -> None:
    data = slice_to_bytes(slice_("K1", 0))
    for bad in (data[:-1], data.partition(b"\n")[2], b"{}\n", b"[]\n", b""):
        with pytest.raises(EventCodecError):
            slice_from_bytes(bad)
    with pytest.raises(EventCodecError):
        start_from_json({**start_to_json(start("K1", "t")), "extra": 1})
    with pytest.raises(EventCodecError):
        start_from_json({"token": "t"})


# -- irradiation records (SPEC §3: the dose SR is built only from what the hardware reported) --


def test_irradiation_record_is_durable_before_it_is_acknowledged(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = simulated_irradiation("T1", datetime.now(UTC), 300.0)
    kept = rig.acquisition.irradiation.keep

    def keep(e: IrradiationEvent) -> bool:
        assert e not in rig.driver.acknowledged  # not yet acknowledged while it is written
        return kept(e)

    monkeypatch.setattr(rig.acquisition.irradiation, "keep", keep)
    rig.run(event)
    assert rig.driver.acknowledged == [event]
    assert rig.acquisition.irradiation.for_token("T1") == [event]  # read back from disk, equal
    assert rig.restart().acquisition.irradiation.for_token("T1") == [event]


def test_replayed_irradiation_record_is_kept_once_and_acknowledged_again(rig: Rig) -> None:
    event = simulated_irradiation("T1", datetime.now(UTC), 300.0)
    rig.run(event, event)
    assert rig.driver.acknowledged == [event, event]
    assert rig.acquisition.counts.irradiation_events == 1
    assert len(list((rig.root / "spool" / "irradiation").glob("*.json"))) == 1


def test_irradiation_record_not_writable_is_retried_not_acknowledged(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = simulated_irradiation("T1", datetime.now(UTC), 300.0)
    failures = [OSError(errno.ENOSPC, "No space left on device")] * 2
    kept = rig.acquisition.irradiation.keep

    def full_disk(e: IrradiationEvent) -> bool:
        if failures:
            raise failures.pop()
        return kept(e)

    monkeypatch.setattr(rig.acquisition.irradiation, "keep", full_disk)
    rig.driver.events.append(event)
    rig.acquisition.poll(0)
    assert rig.acquisition.pending == event and rig.driver.acknowledged == []
    assert rig.alarm("acquisition_stalled")
    rig.run()
    assert rig.driver.acknowledged == [event]
    assert rig.acquisition.irradiation.for_token("T1") == [event]
