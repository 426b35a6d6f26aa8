"""The serial-shm driver against the simulated device, over a pseudo-terminal pair."""

from __future__ import annotations

import dataclasses
import grp
import os
import stat
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from hardware.base import DriverError, Event, HardwareError, SeriesEnd, SeriesStart, SliceReady
from hardware.dose import IrradiationEvent
from hardware.mock import PIXEL_SPACING_MM, simulated_series_start
from hardware.phantom import shared_phantom
from hardware.protocol import (
    MAX_RESEND_FRAMES,
    MsgType,
    ResendMode,
    ResendRequestMsg,
    SequenceTracker,
)
from hardware.serial_device import (
    NOISE_VARIANTS,
    POSITIONS,
    SHM_DIR,
    ScanSlices,
    SerialDevice,
)
from hardware.serial_shm import SerialShmDriver
from hardware.serial_shm.resend import Answer, Resends
from tests.test_protocol import IRRADIATION  # one sample record for codec and driver

HB = 0.1  # heartbeat interval in the tests: gaps are noticed quickly


@pytest.fixture
def device(tmp_path: Path) -> Iterator[SerialDevice]:
    name = f"modality-agent-test-{uuid.uuid4().hex[:12]}"
    dev = SerialDevice(
        name, tmp_path / "tty", slot_count=4, max_rows=32, max_columns=48, heartbeat_interval_s=HB
    )
    dev.start()
    try:
        yield dev
    finally:
        dev.close()
    assert not (SHM_DIR / name).exists()


@pytest.fixture
def driver(device: SerialDevice) -> Iterator[SerialShmDriver]:
    drv = SerialShmDriver(
        port=str(device.line_path), ring_name=device.ring_name, heartbeat_interval_s=HB
    )
    try:
        yield drv
    finally:
        drv.close()


def _no_threads_left() -> None:
    names = [t.name for t in threading.enumerate() if t.name.startswith("serial-")]
    assert names == []


class Agent:
    """What the agent does with the events: keep them, release slices, acknowledge ends."""

    def __init__(self, driver: SerialShmDriver, device: SerialDevice) -> None:
        self.driver, self.device = driver, device
        self.events: list[Event] = []
        self.slices: dict[tuple[str, int], SliceReady] = {}
        self.ends: list[str] = []

    def pump(self, until: Callable[[], bool], *, release: bool = True, limit: float = 10) -> None:
        deadline = time.monotonic() + limit
        while not until():
            assert time.monotonic() < deadline, f"timed out; {len(self.events)} events"
            event = self.driver.read_event(0.2)
            if event is None:
                continue
            self.events.append(event)
            if isinstance(event, SliceReady):
                key = (event.series_key, event.index)
                assert key not in self.slices, f"duplicate SliceReady {key}"
                self.slices[key] = event
                np.testing.assert_array_equal(event.pixels, self.device.written[key])
                if release:
                    self.driver.release(event)
            elif isinstance(event, SeriesEnd):
                self.ends.append(event.series_key)
                self.driver.acknowledge(event)

    def release_all(self) -> None:
        for s in self.slices.values():
            self.driver.release(s)


# -- 1. handshake --------------------------------------------------------------------------


def test_handshake_maps_the_ring_and_hands_over_the_token(
    device: SerialDevice, driver: SerialShmDriver
) -> None:
    driver.set_exam_token("EXAM.1")  # before open: remembered
    driver.open()
    assert driver.device is not None
    assert driver.device.ring_generation == device.header.generation
    assert device.wait_for(lambda: device.token == "EXAM.1")
    driver.set_exam_token("EXAM.2")
    assert device.wait_for(lambda: device.token == "EXAM.2")
    driver.set_exam_token(None)
    assert device.wait_for(lambda: device.token == "")
    assert driver.read_event(0.05) is None
    driver.close()
    _no_threads_left_but_device(device)


def _no_threads_left_but_device(device: SerialDevice) -> None:
    names = [t.name for t in threading.enumerate() if t.name == "serial-shm"]
    assert names == []


def test_version_mismatch_is_a_driver_error(tmp_path: Path) -> None:
    name = f"modality-agent-test-{uuid.uuid4().hex[:12]}"
    with SerialDevice(name, tmp_path / "tty", versions=(2, 3)) as device:
        driver = SerialShmDriver(port=str(device.line_path))
        with pytest.raises(DriverError, match=r"version mismatch: agent 1\.\.1, device 2\.\.3"):
            driver.open()
        driver.close()


def test_ring_header_mismatch_is_a_driver_error(device: SerialDevice) -> None:
    device.header = dataclasses.replace(device.header, generation=device.header.generation ^ 1)
    driver = SerialShmDriver(port=str(device.line_path))
    with pytest.raises(DriverError, match="generation"):
        driver.open()
    driver.close()


def test_wrong_ring_name_and_missing_port(device: SerialDevice, tmp_path: Path) -> None:
    driver = SerialShmDriver(port=str(device.line_path), ring_name="other-ring")
    with pytest.raises(DriverError, match="other-ring"):
        driver.open()
    with pytest.raises(DriverError, match="cannot open"):
        SerialShmDriver(port=str(tmp_path / "nothing")).open()


# -- 2. happy path with backpressure ---------------------------------------------------------


def test_two_series_through_four_slots(device: SerialDevice, driver: SerialShmDriver) -> None:
    driver.set_exam_token("EX")
    driver.open()
    assert device.wait_for(lambda: device.token == "EX")
    device.scan(2, 20)
    agent = Agent(driver, device)
    # hold the first four slices: the device must wait for a slot
    agent.pump(lambda: len(agent.slices) == 4, release=False)
    assert device.wait_for(lambda: device.blocked >= 1 and device.held == 4)
    assert driver.read_event(0.05) is None  # nothing beyond the ring
    agent.release_all()
    agent.pump(lambda: len(agent.ends) == 2)
    assert device.wait_for(device.idle)
    starts = [e for e in agent.events if isinstance(e, SeriesStart)]
    assert [s.token for s in starts] == ["EX", "EX"]
    assert len(agent.slices) == 40 and device.releases == 40
    order = [(type(e).__name__, getattr(e, "series_key", "")) for e in agent.events]
    key1, key2 = starts[0].series_key, starts[1].series_key
    assert order[0] == ("SeriesStart", key1) and order[21] == ("SeriesEnd", key1)
    assert order[22] == ("SeriesStart", key2) and order[-1] == ("SeriesEnd", key2)
    assert sorted(device.acked_ends) == sorted([key1, key2])
    assert not driver.bad_frames and driver.duplicates == 0
    driver.close()
    device.close()
    _no_threads_left()


# -- 3. heartbeats, link loss, reconnect ------------------------------------------------------


def test_line_dropped_mid_series_reconnects_without_duplicates(
    device: SerialDevice, driver: SerialShmDriver
) -> None:
    driver.open()
    device.scan(1, 20)
    agent = Agent(driver, device)
    agent.pump(lambda: len(agent.slices) == 4, release=False)
    # two are released (they may or may not reach the device), two stay unreleased
    held = list(agent.slices.values())
    driver.release(held[0])
    driver.release(held[1])
    device.drop_line()
    with pytest.raises(DriverError):
        agent.pump(lambda: False, limit=5)
    driver.close()
    device.attach_line()
    driver.open()
    agent.release_all()  # the agent finishes its work after the reconnect
    agent.pump(lambda: len(agent.ends) == 1)
    assert sorted(i for _, i in agent.slices) == list(range(20))
    assert device.wait_for(device.idle)
    assert device.hellos == 2
    assert driver.duplicates >= 2  # the replay re-announced what was still held
    driver.close()
    device.close()
    _no_threads_left()


def test_silent_device_is_a_dead_link(tmp_path: Path) -> None:
    name = f"modality-agent-test-{uuid.uuid4().hex[:12]}"
    with SerialDevice(name, tmp_path / "tty", heartbeat_interval_s=HB) as device:
        driver = SerialShmDriver(
            port=str(device.line_path), link_timeout_s=0.5, heartbeat_interval_s=HB
        )
        driver.open()
        assert driver.read_event(0.3) is None  # heartbeats keep it alive
        device.mute()
        with pytest.raises(DriverError, match="no valid frame"):
            for _ in range(50):
                driver.read_event(0.1)
        driver.close()
        device.mute(False)
        driver.open()
        device.scan(1, 3)
        agent = Agent(driver, device)
        agent.pump(lambda: len(agent.ends) == 1)
        assert device.wait_for(device.idle)
        driver.close()


# -- 4. bad frames, lost announcements, torn slots --------------------------------------------


def test_garbage_and_a_bad_crc_frame_are_recovered(
    device: SerialDevice, driver: SerialShmDriver
) -> None:
    driver.open()
    device.inject_garbage(b"\x17\x42noise\x00\x01\x02\x03\x00")
    device.corrupt_next(MsgType.SLICE_READY)
    device.corrupt_next(MsgType.SERIES_END)
    device.scan(1, 10)
    agent = Agent(driver, device)
    agent.pump(lambda: len(agent.ends) == 1)
    assert sorted(i for _, i in agent.slices) == list(range(10))
    assert device.wait_for(device.idle)
    assert sum(driver.bad_frames.values()) >= 3
    assert any(r.mode == ResendMode.FRAMES for r in driver.resend_requests)
    counters = driver.counters()  # what `status` reports (SPEC §3: counted and reported)
    assert counters["bad_frames"] >= 3 and counters["bad_frames_crc"] >= 2
    assert counters["resend_requests"] >= 1 and counters["torn_reads"] == 0


def test_torn_slot_is_never_an_image_and_is_asked_again(
    device: SerialDevice, driver: SerialShmDriver
) -> None:
    driver.open()
    device.tear_next_slice()
    device.scan(1, 5)
    agent = Agent(driver, device)  # compares every image with what the device wrote
    agent.pump(lambda: len(agent.ends) == 1)
    assert driver.torn_reads == 1
    assert any(r.mode == ResendMode.SLICE and r.index == 0 for r in driver.resend_requests)
    assert sorted(i for _, i in agent.slices) == list(range(5))
    assert device.wait_for(device.idle)


def test_lost_release_is_repaired_by_a_replay(
    device: SerialDevice, driver: SerialShmDriver
) -> None:
    driver.open()
    device.lose_next_release()
    device.scan(1, 6)
    agent = Agent(driver, device)
    agent.pump(lambda: len(agent.ends) == 1)
    # the device still holds one slot: its heartbeats say so, the host asks for ALL
    assert device.wait_for(device.idle)
    assert any(r.mode == ResendMode.ALL for r in driver.resend_requests)
    assert device.releases == 6 and len(agent.slices) == 6


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another group needs root")
def test_the_ring_is_given_to_the_agents_group(tmp_path: Path) -> None:
    """A daemon running as its own user, in `ring_group`, can map the device's ring."""
    name = f"modality-agent-test-{uuid.uuid4().hex[:12]}"
    with SerialDevice(name, tmp_path / "tty", ring_group="daemon") as dev:
        st = os.stat(dev.ring_path)
        assert st.st_gid == grp.getgrnam("daemon").gr_gid
        assert stat.S_IMODE(st.st_mode) == 0o660
    with SerialDevice(name, tmp_path / "tty", ring_group=65534) as dev:
        assert os.stat(dev.ring_path).st_gid == 65534


def test_an_unknown_ring_group_is_refused_before_the_ring_exists(tmp_path: Path) -> None:
    name = f"modality-agent-test-{uuid.uuid4().hex[:12]}"
    dev = SerialDevice(name, tmp_path / "tty", ring_group="no-such-group-here")
    with pytest.raises(ValueError, match="ring group 'no-such-group-here': no such group"):
        dev.start()
    assert not (SHM_DIR / name).exists() and not (tmp_path / "tty").exists()


def test_a_scan_makes_each_slice_once_per_step_and_noise_pattern() -> None:
    """The device's scans reuse converted, CRC-checked slices (its cost stays below the
    host's): the phantom's anatomy along the series, its noise cycling, every CRC right."""
    phantom = shared_phantom(16, 24, PIXEL_SPACING_MM)
    made = ScanSlices(phantom, 100, seed=1000)
    steps = POSITIONS - 1
    for index in range(100):
        pixels, (payload, crc) = made.slice(index)
        step = round(index / 99 * steps)
        expected = phantom.slice(step / steps, 1000 + index % NOISE_VARIANTS)
        np.testing.assert_array_equal(pixels, expected)
        assert payload == expected.astype("<u2").tobytes() and crc == zlib.crc32(payload)
    short = ScanSlices(phantom, 3, seed=0)  # fewer slices than steps: each its own
    np.testing.assert_array_equal(short.slice(2)[0], phantom.slice(1.0, 2))


def test_a_slice_the_device_lost_is_a_gap_not_a_hardware_error(
    device: SerialDevice, driver: SerialShmDriver, caplog: pytest.LogCaptureFixture
) -> None:
    """SLICE_LOST: logged with its reason, and missing at the series end, whose gap alarm
    names it (PROTOCOL.md Appendix A, `lose`): no HardwareError, so no second alarm."""
    driver.open()
    key = device.new_series_key()
    device.begin_series(simulated_series_start("", key, 1, rows=32, columns=48))
    for index in (0, 2):
        pixels = np.full((32, 48), index, dtype=np.uint16)
        if index == 2:
            device.lose_slice(key, 1, "simulated reconstruction failure")
        slice_ = SliceReady(key, index, (0.0, 0.0, -index), index, datetime.now(UTC), pixels)
        assert device.put_slice(slice_)
    device.end_series(key, 3)
    agent = Agent(driver, device)
    agent.pump(lambda: len(agent.ends) == 1)
    assert sorted(i for _, i in agent.slices) == [0, 2]
    assert not any(isinstance(e, HardwareError) for e in agent.events)
    assert agent.events[-1] == SeriesEnd(key, 3)
    assert "slice 1 lost (RECON_FAILED): simulated reconstruction failure" in caplog.text
    assert device.wait_for(device.idle)


def test_device_restart_closes_the_old_series_with_gaps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"modality-agent-test-{uuid.uuid4().hex[:12]}"
    line = tmp_path / "tty"
    old = SerialDevice(name, line, slot_count=4, heartbeat_interval_s=HB)
    old.start()
    # a long reorder window: the lost announcement of slice 0 is not asked for in time
    driver = SerialShmDriver(port=str(line), heartbeat_interval_s=HB, reorder_window_s=60)
    try:
        driver.open()
        old.corrupt_next(MsgType.SLICE_READY)
        old.scan(1, 10)
        agent = Agent(driver, old)
        agent.pump(lambda: len(agent.slices) == 3, release=False)
        assert old.wait_for(lambda: old.held == 4)
        written = dict(old.written)
        old.close()  # the device process dies; its ring is unlinked
        with pytest.raises(DriverError):
            agent.pump(lambda: False, limit=5)
        driver.close()
        with SerialDevice(name, line, slot_count=4, heartbeat_interval_s=HB) as new:
            assert new.header.generation != old.header.generation
            driver.open()
            agent.device = new
            new.written.update(written)
            agent.pump(lambda: len(agent.ends) == 1)
            # a gap, named by the series end (its one alarm), not a hardware error
            assert not any(isinstance(e, HardwareError) for e in agent.events)
            assert agent.events[-1] == SeriesEnd(agent.ends[0], 4)
            assert sorted(i for k, i in agent.slices if k == agent.ends[0]) == [1, 2, 3]
            assert "slice 0 lost (DEVICE_RESTART)" in caplog.text
            agent.release_all()  # slices of the old ring: no SLICE_RELEASE for the new one
            new.scan(1, 3)
            agent.pump(lambda: len(agent.ends) == 2)
            assert new.wait_for(new.idle)
            assert new.release_frames == 3
    finally:
        driver.close()
        old.close()
    _no_threads_left()


def test_irradiation_event_is_acked_only_when_durable_and_once_across_reconnects(
    device: SerialDevice, driver: SerialShmDriver
) -> None:
    driver.open()
    device.irradiation(IRRADIATION)
    event = driver.read_event(5)
    assert isinstance(event, IrradiationEvent) and event.event_uid == IRRADIATION.event_uid
    # not durable yet: a reconnect replays it, and the host delivers it only once
    device.drop_line()
    with pytest.raises(DriverError):
        while True:
            assert driver.read_event(5) is None
    driver.close()
    device.attach_line()
    driver.open()
    assert device.wait_for(lambda: driver.duplicates == 1)
    assert device.unacked_records == 1
    driver.acknowledge(event)
    assert device.wait_for(lambda: device.unacked_records == 0)
    assert list(device.acked_records) == [IRRADIATION.event_uid]
    assert driver.read_event(0.05) is None


# -- 5. re-requests: retried, escalated to ALL, then a broken link (PROTOCOL.md §8.2) ---------


def test_unanswered_frames_request_is_retried_then_escalated_to_all(tmp_path: Path) -> None:
    name = f"modality-agent-test-{uuid.uuid4().hex[:12]}"
    # device heartbeats 1 s apart: its held-slot count does not trigger an ALL of its own first
    with SerialDevice(name, tmp_path / "tty", slot_count=4, heartbeat_interval_s=1.0) as device:
        driver = SerialShmDriver(
            port=str(device.line_path),
            heartbeat_interval_s=HB,
            link_timeout_s=30,  # the muted device is not a dead link before the ALL fails
            reorder_window_s=1.0,  # time to mute the device before the request goes out
            resend_retry_s=0.2,
        )
        try:
            driver.open()
            device.corrupt_next(MsgType.SLICE_READY)  # slice 0's announcement: a frame gap
            device.scan(1, 6)
            agent = Agent(driver, device)
            agent.pump(lambda: len(agent.slices) == 3, release=False)  # slices 1-3
            device.mute()  # a hung device: it hears no request and answers none
            with pytest.raises(DriverError, match="no answer to RESEND_REQUEST ALL"):
                agent.pump(lambda: False, release=False, limit=10)
            modes = [r.mode for r in driver.resend_requests]
            assert modes == [ResendMode.FRAMES] * 3 + [ResendMode.ALL]
            assert len({(r.first_seq, r.count) for r in driver.resend_requests[:3]}) == 1
            # the agent reconnects; the replay brings slice 0, and the series completes
            driver.close()
            device.mute(False)
            driver.open()
            agent.release_all()
            agent.pump(lambda: len(agent.ends) == 1)
            assert sorted(i for _, i in agent.slices) == list(range(6))
            assert device.wait_for(device.idle)
        finally:
            driver.close()


def _resends(tracker: SequenceTracker) -> Resends:
    """Times below are exact binary fractions: no rounding at the limits."""
    resends = Resends(tracker, reorder_s=0.25, retry_s=1.0)
    resends.reset(0.0)
    resends.retransmitted(0.125, replay_done=True)  # the opening replay is over
    return resends


def _gap(tracker: SequenceTracker, resends: Resends, seq: int, now: float) -> None:
    result = tracker.observe(seq)
    resends.gap(result.missing, now)


def test_resends_retry_three_times_then_all_then_a_broken_link() -> None:
    tracker = SequenceTracker()
    tracker.observe(0)
    resends = _resends(tracker)
    assert not resends.in_progress
    _gap(tracker, resends, 3, 0.5)  # 1 and 2 were skipped
    frames = ResendRequestMsg(ResendMode.FRAMES, 1, 2, "", 0)
    assert resends.due(0.625) == []  # the reorder window
    assert resends.due(0.75) == [frames]
    assert tracker.missing == ()  # forgotten: the answer brings them
    assert resends.due(1.5) == []
    assert resends.due(1.75) == [frames]  # attempt 2
    assert resends.due(2.75) == [frames]  # attempt 3
    assert resends.due(3.75) == [ResendRequestMsg(ResendMode.ALL, 0, 0, "", 0)]
    assert resends.waiting == (Answer.ALL,)
    assert resends.due(4.5) == []
    with pytest.raises(DriverError, match="no answer to RESEND_REQUEST ALL"):
        resends.due(4.75)


def test_resends_an_answer_keeps_a_request_alive_until_replay_done() -> None:
    tracker = SequenceTracker()
    tracker.observe(0)
    resends = _resends(tracker)
    _gap(tracker, resends, 2, 0.0)
    assert len(resends.due(0.25)) == 1
    resends.retransmitted(1.0, replay_done=False)  # the first RETRANSMIT frame: answered
    resends.retransmitted(1.75, replay_done=False)
    assert resends.due(2.5) == []  # alive while its frames keep coming
    resends.retransmitted(2.625, replay_done=True)
    assert not resends.in_progress
    assert resends.due(100.0) == []


def test_resends_a_lost_replay_done_costs_one_more_request() -> None:
    tracker = SequenceTracker()
    tracker.observe(0)
    resends = _resends(tracker)
    _gap(tracker, resends, 2, 0.0)  # 1
    _gap(tracker, resends, 4, 0.0)  # 3
    first, second = resends.due(0.25)
    assert (first.first_seq, second.first_seq) == (1, 3)
    resends.retransmitted(0.5, replay_done=True)  # the first answer's REPLAY_DONE was lost
    assert resends.waiting == (Answer.FRAMES,)
    assert resends.due(1.25) == []
    assert resends.due(1.5) == [second]  # the one left waiting is asked for again
    resends.retransmitted(1.625, replay_done=True)
    assert not resends.in_progress


def test_resends_a_stalled_opening_replay_or_a_long_gap_asks_for_all() -> None:
    everything = ResendRequestMsg(ResendMode.ALL, 0, 0, "", 0)
    tracker = SequenceTracker()
    resends = Resends(tracker, reorder_s=0.25, retry_s=1.0)
    resends.reset(0.0)
    assert resends.waiting == (Answer.REPLAY,)
    resends.retransmitted(0.5, replay_done=False)
    assert resends.due(1.25) == []
    assert resends.due(1.5) == [everything]  # no 1 s silence in a replay: ask for all
    resends.retransmitted(1.625, replay_done=True)
    tracker.observe(0)
    _gap(tracker, resends, MAX_RESEND_FRAMES + 2, 2.0)  # 1 025 numbers skipped in a row
    assert resends.due(2.25) == [everything]
    _gap(tracker, resends, MAX_RESEND_FRAMES + 4, 2.5)  # while ALL is under way: no FRAMES
    assert resends.due(2.75) == []
