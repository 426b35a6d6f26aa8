"""`SerialShmDriver`: the host side of PROTOCOL.md, one session at a time.

`open()` opens the port, runs the handshake (HELLO / HELLO_ACK, §7.1) in the caller's thread,
maps the ring (`link.map_ring`), then starts one I/O thread. That thread reads and decodes
frames, turns them into events on a queue (`read_event` takes them off), and keeps the clocks:
heartbeats every second, the link timeout, the SET_EXAM_TOKEN acknowledgement, re-requests of
lost frames (`resend.Resends`) and of missing or torn slices. A lost link is recorded and raised
as `DriverError` by `read_event`; the agent then closes and opens again.

The series state (`series.SeriesState`) survives `close()` / `open()`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import mmap
import queue
import threading
import time

import serial

from hardware.base import Driver, DriverError, Event, HardwareError, SeriesEnd, SliceReady
from hardware.dose import IrradiationEvent
from hardware.protocol import (
    ACK_TIMEOUT_S,
    BAUD_RATE,
    FLAG_RETRANSMIT,
    HANDSHAKE_TIMEOUT_S,
    HEARTBEAT_INTERVAL_S,
    HELD_MISMATCH_HEARTBEATS,
    LINK_TIMEOUT_S,
    PROTOCOL_VERSION,
    REORDER_WINDOW_S,
    RESEND_ATTEMPTS,
    RESEND_RETRY_S,
    TORN_RETRY_S,
    AckMsg,
    AckStatus,
    DecodedFrame,
    DeviceState,
    FrameDecoder,
    FrameError,
    HeartbeatMsg,
    HelloAckMsg,
    HelloMsg,
    HwErrorMsg,
    IrradiationEventMsg,
    LostReason,
    Message,
    MsgType,
    ReplayDoneMsg,
    ResendMode,
    ResendRequestMsg,
    SeqKind,
    SequenceTracker,
    SeriesEndMsg,
    SeriesStartMsg,
    SetExamTokenMsg,
    SliceKind,
    SliceLostMsg,
    SliceReadyMsg,
    SliceReleaseMsg,
    encode,
    hardware_error_event,
    irradiation_event,
    sent_by_device,
    series_end_event,
    series_start_event,
    slice_ready_event,
)
from hardware.ring import RingHeader, SlotContents, TornSlotError, read_slot
from hardware.serial_shm import link
from hardware.serial_shm.resend import Resends
from hardware.serial_shm.series import Record, SeriesState, outstanding

log = logging.getLogger(__name__)

AGENT_NAME = "modality-agent"
AGENT_VERSION = "0.1.0"
BAD_FRAMES_PER_S = 10  # §4.3: this many bad frames within 1 s is a broken link
TORN_CODE = "SLOT_TORN"


RECENT_REQUESTS = 64  # re-requests kept for diagnostics

Copy = SlotContents | TornSlotError  # a slot's slice, or why its copy is not intact


class SerialShmDriver(Driver):
    """Host side of the serial-shm protocol. `port` is the serial device path (or a pyserial
    URL); `ring_name`, when given, must equal the name the device announces."""

    def __init__(
        self,
        *,
        port: str,
        baudrate: int = BAUD_RATE,
        ring_name: str | None = None,
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
        link_timeout_s: float = LINK_TIMEOUT_S,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        reorder_window_s: float = REORDER_WINDOW_S,
        resend_retry_s: float = RESEND_RETRY_S,
    ) -> None:
        if not port:
            raise DriverError("serial-shm driver: `port` (the serial device path) is required")
        self._port_name = port
        self._baudrate = int(baudrate)
        self._ring_name = ring_name
        self._hb_interval = heartbeat_interval_s
        self._link_timeout = link_timeout_s
        self._handshake_timeout = handshake_timeout_s
        self._ack_timeout = ack_timeout_s
        self._resend_retry = resend_retry_s
        self._lock = threading.RLock()
        self._events: queue.Queue[Event | None] = queue.Queue()  # None: wake up, link lost
        self._token = ""
        self._series: dict[str, SeriesState] = {}
        self._records: dict[str, Record] = {}
        self._port: serial.Serial | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._failure: str | None = None
        self._session = 0
        self._generation: int | None = None
        self._mm: mmap.mmap | None = None
        self._header: RingHeader | None = None
        self._seq = 0
        self._last_rx = 0.0
        self._last_tx = 0.0
        self._rx_seq = SequenceTracker()
        self._decoder = FrameDecoder(accept=sent_by_device)
        self._resends = Resends(self._rx_seq, reorder_s=reorder_window_s, retry_s=resend_retry_s)
        self._token_frames: set[int] = set()  # frame numbers of the unACKed SET_EXAM_TOKEN
        self._token_sent_at: float | None = None
        self._token_attempts = 0
        self._bad_times: collections.deque[float] = collections.deque()
        self._held_mismatch = 0
        self._copied: dict[SliceReadyMsg, Copy] = {}  # slots copied ahead by the I/O thread
        # diagnostics
        self.bad_frames: collections.Counter[str] = collections.Counter()
        self.duplicates = 0
        self.torn_reads = 0
        self.resends = 0
        self.resend_requests: list[ResendRequestMsg] = []  # the latest RECENT_REQUESTS
        self.device_state = DeviceState.IDLE
        self.device: HelloAckMsg | None = None

    # -- the driver interface ----------------------------------------------------------------

    def open(self) -> None:
        with self._lock:
            if self._thread is not None:
                raise DriverError("serial-shm driver: already open")
            self._failure = None
            self._stop.clear()
        port = link.open_port(self._port_name, self._baudrate)
        try:
            backlog = self._handshake(port)
        except BaseException:
            port.close()
            self._unmap()
            raise
        with self._lock:
            self._port = port
            self._thread = threading.Thread(
                target=self._run, args=(backlog,), name="serial-shm", daemon=True
            )
            self._thread.start()

    def set_exam_token(self, token: str | None) -> None:
        with self._lock:
            self._token = token or ""
            if self._port is not None and self._failure is None:
                self._token_attempts = 0
                self._token_frames.clear()
                self._send_token()

    def read_event(self, timeout: float) -> Event | None:
        with self._lock:
            failure = self._failure
            if failure is None and self._thread is None:
                failure = "serial-shm driver is not open"
        if failure is None:
            try:
                event = self._events.get(timeout=max(0.0, timeout))
            except queue.Empty:
                return None
            if event is not None:
                return event
            failure = self.failure or "serial-shm: link lost"
        while True:  # the link is lost: deliver what arrived before, then raise
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                raise DriverError(failure) from None
            if event is not None:
                return event

    def release(self, slice_: SliceReady) -> None:
        with self._lock:
            series = self._series.get(slice_.series_key)
            if series is None:
                return
            series.durable.add(slice_.index)
            same_ring = series.generation == self._generation  # §7.5: never an old ring's slot
            if same_ring and slice_.slot is not None and slice_.slot_seq is not None:
                msg = SliceReleaseMsg(slice_.series_key, slice_.index, slice_.slot, slice_.slot_seq)
                self._send(msg)
            self._check_complete(series)

    def acknowledge(self, event: SeriesEnd | IrradiationEvent) -> None:
        with self._lock:
            if isinstance(event, SeriesEnd):
                series = self._series.get(event.series_key)
                if series is None:
                    return
                series.end_acknowledged = True
                self._ack_end(series)
            else:
                record = self._records.get(event.event_uid)
                if record is None:
                    return
                record.acknowledged = True
                self._ack_record(record)

    def counters(self) -> dict[str, int]:
        with self._lock:
            counts = {f"bad_frames_{kind}": n for kind, n in sorted(self.bad_frames.items())}
            counts.update(
                bad_frames=sum(self.bad_frames.values()),
                duplicates=self.duplicates,
                torn_reads=self.torn_reads,
                resend_requests=self.resends,
            )
            return counts

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        with self._lock:
            port, self._port = self._port, None
            if port is not None:
                with contextlib.suppress(Exception):
                    port.close()
            self._unmap()
            self._resends.clear()
            self._token_frames.clear()
            self._token_sent_at = None

    def _drain_wakeups(self) -> None:
        """Drop the wake-up markers of an earlier failure, keeping undelivered events."""
        kept: list[Event] = []
        while True:
            try:
                item = self._events.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                kept.append(item)
        for item in kept:
            self._events.put(item)

    # -- observations (tests, status) ------------------------------------------------------------

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._thread is not None and self._failure is None

    @property
    def failure(self) -> str | None:
        with self._lock:
            return self._failure

    # -- handshake -----------------------------------------------------------------------------

    def _handshake(self, port: serial.Serial) -> list[DecodedFrame | FrameError]:
        """§7.1 in the caller's thread; returns the frames that followed HELLO_ACK."""
        decoder = FrameDecoder(accept=sent_by_device)
        hello = HelloMsg(PROTOCOL_VERSION, PROTOCOL_VERSION, AGENT_NAME, AGENT_VERSION)
        with self._lock:
            self._decoder = decoder
            self._seq = 0
            self._rx_seq.reset()
            self._resends.clear()
            self._bad_times.clear()
            self._session += 1
            self._held_mismatch = 0
        link.write(port, encode(hello, 0), self._port_name)
        self._seq = 1
        deadline = time.monotonic() + self._handshake_timeout
        while time.monotonic() < deadline:
            data = link.read(port, self._port_name)
            records = decoder.feed(data)
            for i, record in enumerate(records):
                if isinstance(record, DecodedFrame) and isinstance(record.message, HelloAckMsg):
                    self._rx_seq.observe(record.seq)
                    self._accept_hello_ack(record.message)
                    return records[i + 1 :]
        raise DriverError(
            f"serial-shm: no HELLO_ACK from {self._port_name} within {self._handshake_timeout} s"
        )

    def _accept_hello_ack(self, ack: HelloAckMsg) -> None:
        if ack.version == 0:
            raise DriverError(
                f"protocol version mismatch: agent {PROTOCOL_VERSION}..{PROTOCOL_VERSION}, "
                f"device {ack.min_version}..{ack.max_version}"
            )
        if self._ring_name is not None and ack.ring_name != self._ring_name:
            raise DriverError(
                f"serial-shm: device announces ring {ack.ring_name!r}, "
                f"configured {self._ring_name!r}"
            )
        mm, header = link.map_ring(ack)
        with self._lock:
            if self._generation is not None and self._generation != ack.ring_generation:
                log.warning("serial-shm: the device restarted (new ring generation)")
                self._close_old_generation()
            self._generation = ack.ring_generation
            self._mm, self._header, self.device = mm, header, ack
            self._last_rx = time.monotonic()
            self._resends.reset(self._last_rx)  # the replay that follows HELLO_ACK

    def _unmap(self) -> None:
        if self._mm is not None:
            with contextlib.suppress(BufferError):
                self._mm.close()
            self._mm = None
            self._header = None

    # -- the I/O thread ------------------------------------------------------------------------

    def _run(self, backlog: list[DecodedFrame | FrameError]) -> None:
        try:
            with self._lock:
                self._handle_records(backlog)
                self._send_token()
            while not self._stop.is_set():
                port = self._port
                if port is None:
                    break
                data = link.read(port, self._port_name)
                with self._lock:
                    if self._stop.is_set():
                        break
                    records = self._decoder.feed(data)
                    wanted = self._slots_wanted(records)
                # the copy of each announced slot and its CRC-32 (~0.5 ms each at 512x512),
                # outside the lock: releases from the acquisition's workers go on meanwhile
                copies = self._copy_slots(wanted)
                with self._lock:
                    if self._stop.is_set():
                        break
                    self._copied = copies
                    try:
                        self._handle_records(records)
                    finally:
                        self._copied = {}
                    self._tick(time.monotonic())
        except DriverError as e:
            self._fail(str(e))
        except Exception as e:  # a bug must not leave read_event waiting for ever
            log.exception("serial-shm: I/O thread failed")
            self._fail(f"serial-shm: internal error: {e!r}")

    def _slots_wanted(self, records: list[DecodedFrame | FrameError]) -> list[SliceReadyMsg]:
        """The announcements among `records` whose slot `_slice_ready` will read: those of
        slices not received yet, in a slot of the ring (it checks the rest)."""
        h = self._header
        wanted: list[SliceReadyMsg] = []
        for record in records:
            msg = record.message if isinstance(record, DecodedFrame) else None
            if not isinstance(msg, SliceReadyMsg) or h is None or not _fits(msg, h):
                continue
            series = self._series.get(msg.series_key)
            if series is None or msg.index not in series.tracker.received:
                wanted.append(msg)
        return wanted

    def _copy_slots(self, wanted: list[SliceReadyMsg]) -> dict[SliceReadyMsg, Copy]:
        """Each slot of `wanted`, copied (the ring stays mapped while this thread runs)."""
        mm, h = self._mm, self._header
        if not wanted or mm is None or h is None:
            return {}
        with memoryview(mm) as view:
            return {msg: _copy_slot(view, h, msg) for msg in wanted}

    def _fail(self, reason: str) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = reason
                log.warning("%s", reason)
                self._events.put(None)

    def _send(self, msg: Message) -> int | None:
        """Send one frame (under the lock); None while not connected. A write error breaks
        the link (reported by `read_event`), it is not raised here."""
        if self._port is None or self._failure is not None:
            return None
        seq = self._seq
        self._seq = (self._seq + 1) % (1 << 32)
        try:
            link.write(self._port, encode(msg, seq), self._port_name)
        except DriverError as e:
            self._fail(str(e))
            return None
        self._last_tx = time.monotonic()
        return seq

    def _send_token(self) -> None:
        seq = self._send(SetExamTokenMsg(self._token))
        if seq is not None:
            self._token_frames.add(seq)
            self._token_sent_at = time.monotonic()
            self._token_attempts += 1

    def _resend_request(self, msg: ResendRequestMsg) -> None:
        self.resends += 1
        self.resend_requests.append(msg)
        del self.resend_requests[:-RECENT_REQUESTS]  # a daemon runs for months
        self._send(msg)

    def _tick(self, now: float) -> None:
        if now - self._last_rx > self._link_timeout:
            raise DriverError(f"serial-shm: no valid frame for {self._link_timeout:g} s")
        if now - self._last_tx >= self._hb_interval:
            self._send(HeartbeatMsg(int(now * 1000), DeviceState.HOST, 0))
        if self._token_sent_at is not None and now - self._token_sent_at > self._ack_timeout:
            if self._token_attempts >= RESEND_ATTEMPTS:
                raise DriverError("serial-shm: SET_EXAM_TOKEN not acknowledged (3 attempts)")
            self._send_token()
        for request in self._resends.due(now):
            self._resend_request(request)
        for series in self._series.values():
            if series.end is None or series.start is None:
                continue
            for index in series.tracker.missing(series.end.slices):
                self._ask_again(series, index, now)

    def _ask_again(self, series: SeriesState, index: int, now: float) -> None:
        """§8.2: a slice missing at SERIES_END is asked for every second, 3 times; then the
        host asks for ALL (and starts counting again). A torn slice: every 30 s (§9.6)."""
        asked = series.asked.get(index)
        torn = series.torn.get(index, 0) > RESEND_ATTEMPTS
        if asked is not None and now - asked < (TORN_RETRY_S if torn else self._resend_retry):
            return
        if not torn and series.unanswered.get(index, 0) >= RESEND_ATTEMPTS:
            series.unanswered[index] = 0
            if not self._resends.in_progress:
                series.asked[index] = now
                self._resend_request(self._resends.request_all(now))
                return
        series.unanswered[index] = series.unanswered.get(index, 0) + 1
        self._ask_slice(series, index, now)

    def _ask_slice(self, series: SeriesState, index: int, now: float) -> None:
        series.asked[index] = now
        self._resend_request(ResendRequestMsg(ResendMode.SLICE, 0, 0, series.key, index))

    # -- receiving -----------------------------------------------------------------------------

    def _handle_records(self, records: list[DecodedFrame | FrameError]) -> None:
        now = time.monotonic()
        for record in records:
            if isinstance(record, FrameError):
                self._bad(record.kind.value, now)
                if record.seq is not None:  # the CRC was good: its number counts as received
                    self._observe_seq(record.seq, now)
                continue
            self._last_rx = now
            if record.flags & FLAG_RETRANSMIT:
                replay_done = isinstance(record.message, ReplayDoneMsg)
                self._resends.retransmitted(now, replay_done=replay_done)
            if self._observe_seq(record.seq, now):
                self._handle(record)

    def _bad(self, kind: str, now: float) -> None:
        self.bad_frames[kind] += 1
        self._bad_times.append(now)
        while self._bad_times and now - self._bad_times[0] > 1.0:
            self._bad_times.popleft()
        if len(self._bad_times) >= BAD_FRAMES_PER_S:
            raise DriverError(f"serial-shm: {len(self._bad_times)} bad frames within 1 s")

    def _observe_seq(self, seq: int, now: float) -> bool:
        result = self._rx_seq.observe(seq)
        if result.kind is SeqKind.GAP:
            self._resends.gap(result.missing, now)
        elif result.kind is SeqKind.LATE:
            self._resends.late(seq)
        return result.deliver

    def _handle(self, frame: DecodedFrame) -> None:
        msg = frame.message
        if isinstance(msg, HeartbeatMsg):
            self._heartbeat(msg)
        elif isinstance(msg, AckMsg):
            if msg.acked_type == MsgType.SET_EXAM_TOKEN and msg.acked_seq in self._token_frames:
                self._token_frames.clear()
                self._token_sent_at = None
                self._token_attempts = 0
        elif isinstance(msg, SeriesStartMsg):
            self._series_start(msg)
        elif isinstance(msg, SliceReadyMsg | SliceLostMsg | SeriesEndMsg):
            series = self._new_series(msg.series_key)
            if series.start is None:
                series.pending.append((frame, self._session))
            else:
                self._series_message(series, frame, self._session)
        elif isinstance(msg, HwErrorMsg):
            self._events.put(hardware_error_event(msg))
            self._send(AckMsg(frame.seq, MsgType.HW_ERROR, AckStatus.OK, ""))
        elif isinstance(msg, IrradiationEventMsg):
            record = self._records.get(msg.event_uid)
            if record is None:
                self._records[msg.event_uid] = Record((self._session, frame.seq))
                self._events.put(irradiation_event(msg))
            else:
                self.duplicates += 1
                record.frame = (self._session, frame.seq)
                if record.acknowledged:  # the ACK was lost, or sent before the reconnect
                    self._ack_record(record)
        elif isinstance(msg, ReplayDoneMsg):
            pass  # the end of an answer: see _handle_records
        elif isinstance(msg, HelloAckMsg):
            self._bad("unexpected-hello-ack", time.monotonic())

    def _new_series(self, key: str) -> SeriesState:
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = SeriesState(key, generation=self._generation)
        return series

    def _close_old_generation(self) -> None:
        """§7.5: the device restarted; its old ring's unfinished series are over. Every index
        not received intact is a gap (DEVICE_RESTART), the series ends with what is known."""
        for key, series in list(self._series.items()):
            if series.generation == self._generation and series.start is None:
                del self._series[key]  # never started: nothing was delivered
                continue
            if series.generation != self._generation or series.end_emitted:
                continue
            seen = series.tracker.received | series.tracker.lost | set(series.torn)
            total = series.end.slices if series.end else max(seen, default=-1) + 1
            for index in series.tracker.missing(total):
                series.tracker.mark_lost(index)  # a gap: the series end names it (_lost)
                _lost(key, index, LostReason.DEVICE_RESTART, "the device restarted")
            series.end = series.end or SeriesEndMsg(key, total)
            series.end_frame = None
            self._check_complete(series)

    def _heartbeat(self, msg: HeartbeatMsg) -> None:
        if msg.state == DeviceState.HOST or (
            self._header is not None and msg.held_slots > self._header.slot_count
        ):
            self._bad("session-rule", time.monotonic())
            return
        self.device_state = msg.state
        # §9.5: more slots held than announced and unreleased, 3 times: a release was lost
        in_progress = self._resends.in_progress
        if msg.held_slots > outstanding(self._series.values()) and not in_progress:
            self._held_mismatch += 1
            if self._held_mismatch >= HELD_MISMATCH_HEARTBEATS:
                self._held_mismatch = 0
                self._resend_request(self._resends.request_all(time.monotonic()))
        else:
            self._held_mismatch = 0

    def _series_start(self, msg: SeriesStartMsg) -> None:
        series = self._new_series(msg.series_key)
        if series.start is not None:
            self.duplicates += 1
            return
        h = self._header
        if h is not None and (msg.rows > h.max_rows or msg.columns > h.max_columns):
            self._bad("session-rule", time.monotonic())
            return
        series.start = msg
        self._events.put(series_start_event(msg))
        pending, series.pending = series.pending, []
        for frame, session in pending:
            self._series_message(series, frame, session)

    def _series_message(self, series: SeriesState, frame: DecodedFrame, session: int) -> None:
        msg = frame.message
        if isinstance(msg, SliceReadyMsg):
            self._slice_ready(series, msg, session)
        elif isinstance(msg, SliceLostMsg):
            if msg.index not in series.tracker.received and msg.index not in series.tracker.lost:
                series.tracker.mark_lost(msg.index)
                _lost(msg.series_key, msg.index, LostReason(msg.reason), msg.text)
            self._check_complete(series)
        elif isinstance(msg, SeriesEndMsg):
            if series.end is None:
                series.end = msg
            else:
                self.duplicates += 1
            series.end_frame = (session, frame.seq)
            if series.end_acknowledged:
                self._ack_end(series)
            self._check_complete(series)

    def _slice_ready(self, series: SeriesState, msg: SliceReadyMsg, session: int) -> None:
        assert series.start is not None
        h = self._header
        if h is None or session != self._session:
            return  # announced in an earlier session: the replay announces it again
        shape = (series.start.rows, series.start.columns)
        if not _fits(msg, h) or (msg.rows, msg.columns) != shape:
            self._bad("session-rule", time.monotonic())
            return
        if msg.index in series.tracker.received:
            self.duplicates += 1
            if msg.index in series.durable:  # §9.5: a lost release, or a replay
                self._send(SliceReleaseMsg(msg.series_key, msg.index, msg.slot, msg.slot_seq))
            return
        contents = self._copied.pop(msg, None)
        if contents is None:  # (announced before its series start: not copied ahead)
            assert self._mm is not None
            with memoryview(self._mm) as view:
                contents = _copy_slot(view, h, msg)
        if isinstance(contents, TornSlotError):
            self._torn(series, msg, str(contents))
            return
        kind = series.tracker.observe(msg.index)
        if kind is SliceKind.DUPLICATE:  # pragma: no cover - checked above
            return
        series.asked.pop(msg.index, None)
        series.unanswered.pop(msg.index, None)
        self._events.put(slice_ready_event(msg, contents.pixels()))
        self._check_complete(series)

    def _torn(self, series: SeriesState, msg: SliceReadyMsg, why: str) -> None:
        """§9.6: never an image; asked for again, 3 times, then an alarm (slot kept)."""
        self.torn_reads += 1
        attempts = series.torn.get(msg.index, 0) + 1
        series.torn[msg.index] = attempts
        series.unanswered.pop(msg.index, None)  # answered, if torn
        log.warning("serial-shm: torn slot: %s", why)
        now = time.monotonic()
        if attempts <= RESEND_ATTEMPTS:
            self._ask_slice(series, msg.index, now)
        elif attempts == RESEND_ATTEMPTS + 1:
            self._events.put(
                HardwareError(
                    code=TORN_CODE,
                    message=f"series {series.key} slice {msg.index} slot {msg.slot}: every "
                    f"copy read torn ({why})",
                    series_key=series.key,
                )
            )
            series.asked[msg.index] = now  # the retry clock of _tick asks again

    def _check_complete(self, series: SeriesState) -> None:
        """Emit SeriesEnd once every index is in or lost (announcement order, §8.2)."""
        if series.end is None or series.end_emitted or series.start is None:
            return
        if series.tracker.complete(series.end.slices):
            series.end_emitted = True
            self._events.put(series_end_event(series.end))

    def _ack_record(self, record: Record) -> None:
        session, seq = record.frame
        if session == self._session:
            self._send(AckMsg(seq, MsgType.IRRADIATION_EVENT, AckStatus.OK, ""))

    def _ack_end(self, series: SeriesState) -> None:
        if series.end_frame is None or series.end_frame[0] != self._session:
            return  # ACKed when the replay brings the SERIES_END again
        self._send(AckMsg(series.end_frame[1], MsgType.SERIES_END, AckStatus.OK, ""))


def _fits(msg: SliceReadyMsg, h: RingHeader) -> bool:
    """The announced slot and shape are within the ring's."""
    return msg.slot < h.slot_count and msg.rows <= h.max_rows and msg.columns <= h.max_columns


def _copy_slot(view: memoryview, h: RingHeader, msg: SliceReadyMsg) -> Copy:
    try:
        return read_slot(
            view,
            h,
            msg.slot,
            msg.slot_seq,
            msg.pixel_crc,
            msg.pixel_length,
            rows=msg.rows,
            columns=msg.columns,
        )
    except TornSlotError as e:
        return e


def _lost(key: str, index: int, reason: LostReason, text: str) -> None:
    """A slice that will never come: a gap. Logged here with the device's reason; the series
    end counts it missing, and the acquisition raises the one alarm naming every missing
    slice of the series (PROTOCOL.md Appendix A, `lose`), not one more per lost slice."""
    log.warning("serial-shm: series %s slice %d lost (%s): %s", key, index, reason.name, text)
