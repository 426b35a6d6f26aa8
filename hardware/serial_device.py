"""The reconstructor's side of the serial-shm protocol (PROTOCOL.md): a device in a thread.

Used by the tests, and by `modality-agent simulator` (hardware/serial_simulator.py). It
creates the ring as a plain file under /dev/shm (`os.open` + `ftruncate` + `mmap`, never
`multiprocessing.shared_memory`), writes slots with `hardware.ring.write_slot`, and speaks the
protocol on its end of a serial line: here the master side of a pseudo-terminal pair whose
slave path is published as a symlink (`line_path`), so that a host reopening the path after
`drop_line()` + `attach_line()` finds the new line, as after a USB re-enumeration.

Device rules implemented: HELLO / HELLO_ACK (version negotiation, refusal with version 0), the
state replay after HELLO_ACK (§7.4), heartbeats and the 3 s session timeout (§7.2),
SET_EXAM_TOKEN (ACKed), SLICE_RELEASE (idempotent, by slot_seq), RESEND_REQUEST FRAMES / SLICE /
ALL (§8.3, with a replay log of `REPLAY_DEPTH` frames), ACK of SERIES_END (the series is
forgotten), backpressure (a scan waits for a FREE slot, heartbeats say WAITING_FOR_SLOTS).

Faults for tests and `modality-agent simulate`: `drop_line()` (the line vanishes),
`inject_garbage()`, `corrupt_next()` (the next frame of a type goes out with a broken CRC,
leaving a gap in the frame numbers), `drop_next()` (a frame lost on the line), `reorder_next()`
(a frame overtaken by the next one), `announce_again()` (a duplicate announcement),
`tear_next_slice()` (the next slot is corrupted in the ring until the host re-requests it),
`lose_slice()` and `hardware_error()` (what the reconstructor itself reports).
"""

from __future__ import annotations

import collections
import contextlib
import grp
import itertools
import os
import random
import select
import threading
import time
import tty
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import numpy.typing as npt

from hardware.base import SeriesStart, SliceReady
from hardware.mock import PIXEL_SPACING_MM, simulated_series_start
from hardware.phantom import Phantom, shared_phantom
from hardware.protocol import (
    FLAG_RETRANSMIT,
    HEARTBEAT_INTERVAL_S,
    LINK_TIMEOUT_S,
    MAX_UNACKED_HW_ERRORS,
    PROTOCOL_VERSION,
    REPLAY_DEPTH,
    AckMsg,
    AckStatus,
    DecodedFrame,
    DeviceState,
    FrameDecoder,
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
    SeriesEndMsg,
    SeriesStartMsg,
    SetExamTokenMsg,
    SliceLostMsg,
    SliceReadyMsg,
    SliceReleaseMsg,
    encode,
    sent_by_host,
    series_start_message,
)
from hardware.ring import (
    HEADER_SIZE,
    SLOT_PAYLOAD_OFFSET,
    RingHeader,
    slot_size_for,
    write_slot,
)

SHM_DIR = Path("/dev/shm")
OBSERVED = 256  # recent tokens, ACKs and re-requests kept for tests: the simulator runs for days
POSITIONS = 24  # anatomy steps of a scan's series (the phantom's levels)
NOISE_VARIANTS = 4  # noise patterns a scan's slices cycle through


@dataclass
class _Series:
    start: SeriesStartMsg
    held: dict[int, SliceReadyMsg] = field(default_factory=dict)  # index -> announcement
    released: set[int] = field(default_factory=set)
    lost: dict[int, SliceLostMsg] = field(default_factory=dict)
    end: SeriesEndMsg | None = None
    end_seqs: set[int] = field(default_factory=set)  # frame numbers SERIES_END went out under


class SerialDevice:
    """A simulated reconstructor. `start()` creates the ring and the line; `close()` stops the
    threads, closes the line and unlinks the ring."""

    def __init__(
        self,
        ring_name: str,
        line_path: str | Path,
        *,
        slot_count: int = 8,
        max_rows: int = 64,
        max_columns: int = 64,
        versions: tuple[int, int] = (PROTOCOL_VERSION, PROTOCOL_VERSION),
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
        link_timeout_s: float = LINK_TIMEOUT_S,
        device_serial: str = "SIM0001",
        keep_written: bool = True,
        ring_group: str | int | None = None,
    ) -> None:
        self.ring_name = ring_name
        self.ring_group = ring_group
        self.line_path = Path(line_path)
        self.header = RingHeader(
            slot_count=slot_count,
            slot_size=slot_size_for(max_rows, max_columns),
            max_rows=max_rows,
            max_columns=max_columns,
            generation=random.getrandbits(64) or 1,
            created_us=time.time_ns() // 1000,
        )
        self._versions = versions
        self._hb_interval = heartbeat_interval_s
        self._link_timeout = link_timeout_s
        self._serial = device_serial
        self._cond = threading.Condition()  # guards everything below; notified on changes
        self._stop = threading.Event()
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_name: str | None = None
        self._writing = 0  # slot writes in flight (close waits for them)
        self._in_session = False
        self._seq = 0
        self._log: collections.OrderedDict[int, Message] = collections.OrderedDict()
        self._last_rx = 0.0
        self._last_tx = 0.0
        self._token = ""
        self._series: dict[str, _Series] = {}  # unfinished series (SERIES_END not ACKed)
        self._slots: dict[int, tuple[str, int, SliceReadyMsg]] = {}  # HELD slots
        self._free = list(range(slot_count))
        self._slot_seq = itertools.count(1)
        self._waiting = 0  # scans waiting for a FREE slot
        self._scanning = 0
        self._corrupt: collections.Counter[MsgType] = collections.Counter()
        self._drop: collections.Counter[MsgType] = collections.Counter()
        self._hold: collections.Counter[MsgType] = collections.Counter()
        self._held_frame: bytes | None = None  # sent after the next frame (reordered)
        self._hw_errors: collections.OrderedDict[int, HwErrorMsg] = collections.OrderedDict()
        self._hw_error_ids = itertools.count(1)
        self._hw_error_seqs: dict[int, int] = {}  # frame number -> HW_ERROR id, this session
        self._tear_next = False
        self._muted = False
        self._lose_releases = 0
        self._torn: dict[int, tuple[int, int]] = {}  # slot -> (offset, original byte)
        self._keys = itertools.count(1)
        self._records: dict[str, IrradiationEventMsg] = {}  # un-ACKed, by event_uid
        self._record_seqs: dict[int, str] = {}  # frame number -> event_uid, this session
        self._instance = f"{random.getrandbits(32):08X}"
        self._scans: list[threading.Thread] = []
        self._reader: threading.Thread | None = None
        self._fd: int | None = None
        self._mm: object = None
        self._buf: memoryview | None = None
        # observations for tests
        self.keep_written = keep_written  # a copy of every slice's pixels, in `written`
        self.written: dict[tuple[str, int], npt.NDArray[np.uint16]] = {}
        self.releases = 0
        self.release_frames = 0  # SLICE_RELEASE frames received, matching or not
        self.hellos = 0
        self.tokens: collections.deque[str] = collections.deque(maxlen=OBSERVED)
        self.acked_ends: collections.deque[str] = collections.deque(maxlen=OBSERVED)
        self.acked_records: collections.deque[str] = collections.deque(maxlen=OBSERVED)
        self.resend_requests: collections.deque[ResendRequestMsg] = collections.deque(
            maxlen=OBSERVED
        )
        self.max_waiting_seen = 0
        self.blocked = 0  # slices that had to wait for a FREE slot (backpressure)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def ring_path(self) -> Path:
        return SHM_DIR / self.ring_name

    def start(self) -> None:
        """Create the ring (mode 0660; group `ring_group` when given, so that an agent running
        as another user in that group can map it) and the line, and start serving."""
        import mmap

        gid = -1 if self.ring_group is None else _group_id(self.ring_group)
        fd = os.open(self.ring_path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o660)
        try:
            if gid != -1:
                try:
                    os.fchown(fd, -1, gid)
                except OSError as e:
                    raise OSError(
                        e.errno, f"{self.ring_path}: cannot give it to group {self.ring_group!r}"
                    ) from e
            os.fchmod(fd, 0o660)
            os.ftruncate(fd, self.header.total_size)
            mm = mmap.mmap(fd, self.header.total_size, mmap.MAP_SHARED)
        except BaseException:
            os.close(fd)
            self.ring_path.unlink(missing_ok=True)
            raise
        self._fd, self._mm = fd, mm
        self._buf = memoryview(mm)
        self._buf[:HEADER_SIZE] = self.header.pack()  # the header last (§9.1 step 3)
        self.attach_line()
        self._reader = threading.Thread(target=self._run, name="serial-device", daemon=True)
        self._reader.start()

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in [self._reader, *self._scans]:
            if t is not None:
                t.join(timeout=5)
        with self._cond:  # a slot write in flight must end before the ring is unmapped
            self._cond.wait_for(lambda: not self._writing, timeout=5)
        self.drop_line()
        if self._buf is not None:
            self._buf.release()
            self._buf = None
        if self._mm is not None:
            self._mm.close()  # type: ignore[attr-defined]
            self._mm = None
        if self._fd is not None:  # only a ring this device made is removed
            os.close(self._fd)
            self._fd = None
            self.ring_path.unlink(missing_ok=True)

    def __enter__(self) -> SerialDevice:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def attach_line(self) -> None:
        """A new pty pair; `line_path` now names its slave end (the host's port)."""
        master, slave = os.openpty()
        tty.setraw(slave)
        tmp = self.line_path.with_name(self.line_path.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        name = os.ttyname(slave)
        tmp.symlink_to(name)
        tmp.replace(self.line_path)
        with self._cond:
            self._master, self._slave, self._slave_name = master, slave, name
            self._in_session = False

    def drop_line(self) -> None:
        """The line vanishes (cable pulled): the host's port fails and its path is gone (the
        freed pty number may go to another process: a host must not find it there); the
        session is over."""
        with self._cond:
            master, slave, name = self._master, self._slave, self._slave_name
            self._master = self._slave = self._slave_name = None
            self._in_session = False
        with contextlib.suppress(OSError):
            if name is not None and os.readlink(self.line_path) == name:
                self.line_path.unlink()
        for fd in (slave, master):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    # -- faults --------------------------------------------------------------------------------

    def inject_garbage(self, data: bytes) -> None:
        with self._cond:
            self._write(data)

    def corrupt_next(self, msg_type: MsgType, count: int = 1) -> None:
        """The next `count` frames of `msg_type` are sent with a broken CRC (a frame gap)."""
        with self._cond:
            self._corrupt[msg_type] += count

    def drop_next(self, msg_type: MsgType, count: int = 1) -> None:
        """The next `count` frames of `msg_type` are lost on the line: their frame numbers
        are used, their bytes never sent (a frame gap)."""
        with self._cond:
            self._drop[msg_type] += count

    def reorder_next(self, msg_type: MsgType, count: int = 1) -> None:
        """The next `count` frames of `msg_type` each arrive after the frame sent after it."""
        with self._cond:
            self._hold[msg_type] += count

    def lose_next_release(self, count: int = 1) -> None:
        """The next `count` SLICE_RELEASE frames are lost on the line (ignored)."""
        with self._cond:
            self._lose_releases += count

    def mute(self, muted: bool = True) -> None:
        """Stop (or resume) speaking and listening, keeping the line: a hung device."""
        with self._cond:
            self._muted = muted
            self._in_session = False

    def tear_next_slice(self) -> None:
        """The next slot written is corrupted in the ring (after its CRC was computed) until
        the host asks for the slice again: a transient torn read."""
        with self._cond:
            self._tear_next = True

    # -- observations --------------------------------------------------------------------------

    @property
    def held(self) -> int:
        with self._cond:
            return len(self._slots)

    def held_slices(self) -> list[tuple[str, int]]:
        """(series key, index) of every HELD slot, in slot order."""
        with self._cond:
            return [(key, index) for key, index, _ in (self._slots[s] for s in sorted(self._slots))]

    @property
    def token(self) -> str:
        with self._cond:
            return self._token

    @property
    def unfinished(self) -> int:
        with self._cond:
            return len(self._series)

    def wait_for(self, predicate: object, timeout: float = 10.0) -> bool:
        """Wait until `predicate()` (called under the device lock) is true."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)  # type: ignore[arg-type]

    def idle(self) -> bool:
        """No scan running, no HELD slot, every series and record ACKed (under `wait_for`)."""
        busy = self._scanning or self._slots or self._series or self._records or self._hw_errors
        return not busy

    # -- scanning ------------------------------------------------------------------------------

    def irradiation(self, msg: IrradiationEventMsg) -> None:
        """An acquisition ended: its dose record, kept and replayed until ACKed (§8.4)."""
        with self._cond:
            self._records[msg.event_uid] = msg
            self._send(msg)

    @property
    def unacked_records(self) -> int:
        with self._cond:
            return len(self._records)

    def scan(self, series: int, slices: int, token: str | None = None) -> threading.Thread:
        """Acquire and reconstruct `series` x `slices` of phantom content in a thread."""
        with self._cond:
            stamp = self._token if token is None else token
            self._scanning += 1
        t = threading.Thread(
            target=self._scan, args=(series, slices, stamp), name="serial-device-scan", daemon=True
        )
        self._scans.append(t)
        t.start()
        return t

    def _scan(self, series: int, slices: int, token: str) -> None:
        try:
            rows, cols = self.header.max_rows, self.header.max_columns
            phantom = shared_phantom(rows, cols, PIXEL_SPACING_MM)
            acquired = datetime.now(UTC) - timedelta(seconds=5)
            for s in range(series):
                reconstructed = ScanSlices(phantom, slices, seed=s * 1000)
                key = self.new_series_key()
                # the 5 mm standard reconstruction: its slices are 5 mm apart below
                self.begin_series(
                    simulated_series_start(token, key, s + 1, rows=rows, columns=cols)
                )
                for index in range(slices):
                    z = -5.0 * index
                    pixels, encoded = reconstructed.slice(index)
                    slice_ = SliceReady(
                        series_key=key,
                        index=index,
                        image_position=(-22.05, -22.05, z),
                        table_position_mm=-z,
                        acquisition_time=acquired + timedelta(seconds=index * 0.01),
                        pixels=pixels,
                    )
                    if not self.put_slice(slice_, encoded=encoded):
                        return
                self.end_series(key, slices)
        finally:
            with self._cond:
                self._scanning -= 1
                self._cond.notify_all()

    # -- what a reconstructor does, one step at a time (for scans and scenario players) -------

    def new_series_key(self) -> str:
        """A series key this device never used before (§4.4)."""
        return f"SIM-{self._instance}-{next(self._keys)}"

    def begin_series(self, start: SeriesStart) -> None:
        """Announce a series (its key from `new_series_key`)."""
        msg = series_start_message(start)
        with self._cond:
            self._series[start.series_key] = _Series(msg)
            self._send(msg)

    def put_slice(
        self,
        slice_: SliceReady,
        *,
        tear: bool = False,
        corrupt: bool = False,
        drop: bool = False,
        reorder: bool = False,
        encoded: tuple[bytes, int] | None = None,
    ) -> bool:
        """Wait for a FREE slot (backpressure), write the pixels, announce the slice; the slot
        stays HELD until the host releases it. False when the device is closing. Faults of
        this slice alone: its slot `tear`n until re-requested; its SLICE_READY frame sent with
        a broken CRC (`corrupt`), never sent (`drop`), or after the next frame (`reorder`).
        `encoded`: the pixels already as ring bytes with their CRC-32 (`ScanSlices`)."""
        with self._cond:
            if not self._free:
                self.blocked += 1
            self._waiting += 1
            self.max_waiting_seen = max(self.max_waiting_seen, self._waiting)
            ok = self._cond.wait_for(lambda: self._free or self._stop.is_set())
            self._waiting -= 1
            if self._stop.is_set() or not ok:
                return False
            slot = self._free.pop(0)
            seq = next(self._slot_seq)
            self._writing += 1
        try:
            payload, known_crc = encoded or (_ring_bytes(slice_.pixels), None)
            assert self._buf is not None
            rows, cols = slice_.pixels.shape
            crc = write_slot(self._buf, self.header, slot, seq, rows, cols, payload, known_crc)
        finally:
            with self._cond:
                self._writing -= 1
                self._cond.notify_all()
        key, index = slice_.series_key, slice_.index
        msg = SliceReadyMsg(
            series_key=key,
            index=index,
            slot=slot,
            slot_seq=seq,
            rows=rows,
            columns=cols,
            pixel_length=len(payload),
            pixel_crc=crc,
            image_position=slice_.image_position,
            table_position_mm=slice_.table_position_mm,
            acquisition_time=slice_.acquisition_time,
        )
        with self._cond:
            if self._stop.is_set():
                return False
            if self.keep_written:
                self.written[(key, index)] = np.array(slice_.pixels, dtype=np.uint16)
            if tear or self._tear_next:
                self._tear_next = False
                off = self.header.slot_offset(slot) + SLOT_PAYLOAD_OFFSET
                self._torn[slot] = (off, self._buf[off])
                self._buf[off] ^= 0xFF
            self._slots[slot] = (key, index, msg)
            self._series[key].held[index] = msg
            self._send(msg, corrupt=corrupt, drop=drop, hold=reorder)
        return True

    @property
    def closing(self) -> bool:
        return self._stop.is_set()

    def is_announced(self, key: str, index: int) -> bool:
        """Whether slice `index` of series `key` was announced or reported lost."""
        with self._cond:
            series = self._series.get(key)
            if series is None:
                return False
            return index in series.held or index in series.released or index in series.lost

    def announce_again(self, key: str, index: int) -> None:
        """Send a held slice's SLICE_READY once more as a new frame (not a retransmission):
        a duplicate the host must keep once."""
        with self._cond:
            msg = self._series[key].held.get(index)
            if msg is not None:
                self._send(msg)

    def lose_slice(self, key: str, index: int, text: str = "reconstruction failed") -> None:
        """The reconstructor could not produce slice `index`: SLICE_LOST, a gap."""
        with self._cond:
            lost = SliceLostMsg(key, index, LostReason.RECON_FAILED, text)
            self._series[key].lost[index] = lost
            self._send(lost)

    def hardware_error(self, code: str, message: str, key: str | None = None) -> None:
        """A hardware fault: HW_ERROR, kept and replayed until ACKed (the last 16, §6)."""
        with self._cond:
            msg = HwErrorMsg(code, message, key)
            self._hw_errors[next(self._hw_error_ids)] = msg
            while len(self._hw_errors) > MAX_UNACKED_HW_ERRORS:
                self._hw_errors.popitem(last=False)
            self._send(msg)

    def end_series(self, key: str, slices: int) -> None:
        """SERIES_END: the series should have had `slices` slices."""
        with self._cond:
            end = SeriesEndMsg(key, slices)
            self._series[key].end = end
            self._send(end)

    # -- the line ------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Write to the line (under the lock); a vanished line loses the bytes."""
        fd = self._master
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(fd, data)

    def _send(
        self,
        msg: Message,
        flags: int = 0,
        *,
        corrupt: bool = False,
        drop: bool = False,
        hold: bool = False,
    ) -> None:
        """Send one frame (under the lock), only in a session (HELLO_ACK starts one): what
        is not sent now is part of the state replayed at the next HELLO. `corrupt`, `drop`
        and `hold` (sent after the next frame) are line faults of this frame, as are the
        pending counts of `corrupt_next`, `drop_next` and `reorder_next` for its type."""
        if not self._in_session or self._master is None or self._muted:
            return
        seq = self._seq
        self._seq = (self._seq + 1) % (1 << 32)
        frame = encode(msg, seq, flags)
        if corrupt or _take(self._corrupt, msg.TYPE):
            i = len(frame) // 2
            broken = bytearray(frame)
            broken[i] = broken[i] ^ 0xFF or 0x5A
            frame = bytes(broken)
        self._log[seq] = msg
        while len(self._log) > REPLAY_DEPTH:
            old, _ = self._log.popitem(last=False)
            self._record_seqs.pop(old, None)
            self._hw_error_seqs.pop(old, None)
        if isinstance(msg, IrradiationEventMsg):
            self._record_seqs[seq] = msg.event_uid
        if isinstance(msg, HwErrorMsg):
            for ident, record in self._hw_errors.items():
                if record is msg:
                    self._hw_error_seqs[seq] = ident
        if isinstance(msg, SeriesEndMsg) and msg.series_key in self._series:
            self._series[msg.series_key].end_seqs.add(seq)
        self._last_tx = time.monotonic()
        if drop or _take(self._drop, msg.TYPE):
            return
        if self._held_frame is None and (hold or _take(self._hold, msg.TYPE)):
            self._held_frame = frame
            return
        self._write(frame)
        if self._held_frame is not None:
            self._write(self._held_frame)
            self._held_frame = None

    def _state(self) -> DeviceState:
        if self._waiting:
            return DeviceState.WAITING_FOR_SLOTS
        return DeviceState.ACQUIRING if self._scanning else DeviceState.IDLE

    def _run(self) -> None:
        decoder = FrameDecoder(accept=sent_by_host)
        started = time.monotonic()
        while not self._stop.is_set():
            with self._cond:
                fd = self._master
            if fd is None:
                self._stop.wait(0.02)
                continue
            try:
                ready, _, _ = select.select([fd], [], [], 0.02)
                data = os.read(fd, 65536) if ready else b""
            except (OSError, ValueError):
                with self._cond:  # the line was dropped under us, or the peer is gone
                    if self._master == fd:
                        self._in_session = False
                self._stop.wait(0.02)
                continue
            now = time.monotonic()
            with self._cond:
                if self._muted:
                    continue
                for record in decoder.feed(data):
                    if isinstance(record, DecodedFrame):
                        self._handle(record)
                if self._in_session:
                    if now - self._last_rx > self._link_timeout:
                        self._in_session = False  # §7.2: wait for the next HELLO
                    elif now - self._last_tx >= self._hb_interval:
                        hb = HeartbeatMsg(
                            int((now - started) * 1000), self._state(), len(self._slots)
                        )
                        self._send(hb)
                self._cond.notify_all()

    def _handle(self, frame: DecodedFrame) -> None:
        msg = frame.message
        if isinstance(msg, HelloMsg):
            self._hello(msg)
            return
        if not self._in_session:
            return
        self._last_rx = time.monotonic()
        if isinstance(msg, SetExamTokenMsg):
            self._token = msg.token
            self.tokens.append(msg.token)
            self._send(AckMsg(frame.seq, MsgType.SET_EXAM_TOKEN, AckStatus.OK, ""))
        elif isinstance(msg, SliceReleaseMsg):
            self.release_frames += 1
            if self._lose_releases:
                self._lose_releases -= 1
            else:
                self._release(msg)
        elif isinstance(msg, ResendRequestMsg):
            self.resend_requests.append(msg)
            self._resend(msg)
        elif isinstance(msg, AckMsg) and msg.acked_type == MsgType.IRRADIATION_EVENT:
            uid = self._record_seqs.get(msg.acked_seq)
            if uid is not None and self._records.pop(uid, None) is not None:
                self.acked_records.append(uid)
        elif isinstance(msg, AckMsg) and msg.acked_type == MsgType.HW_ERROR:
            ident = self._hw_error_seqs.get(msg.acked_seq)
            if ident is not None:
                self._hw_errors.pop(ident, None)
        elif isinstance(msg, AckMsg) and msg.acked_type == MsgType.SERIES_END:
            for key, series in list(self._series.items()):
                if msg.acked_seq in series.end_seqs and not series.held:
                    del self._series[key]
                    self.acked_ends.append(key)

    def _hello(self, msg: HelloMsg) -> None:
        self.hellos += 1
        lo, hi = self._versions
        version = min(hi, msg.max_version)
        self._in_session = True
        self._seq = 0
        self._log.clear()
        self._record_seqs.clear()
        self._hw_error_seqs.clear()
        self._held_frame = None
        self._last_rx = time.monotonic()
        h = self.header
        if version < max(lo, msg.min_version):
            self._send(HelloAckMsg(0, lo, hi, "SIMULATOR", self._serial, "", 0, 0, 0, 0, 0, 0))
            self._in_session = False
            return
        self._send(
            HelloAckMsg(
                version, lo, hi, "SIMULATOR", self._serial, self.ring_name, h.generation,
                h.slot_count, h.slot_size, h.max_rows, h.max_columns, h.bytes_per_pixel,
            )
        )  # fmt: skip
        self._replay()

    def _replay(self) -> None:
        """§7.4: every unfinished series' state, then REPLAY_DONE, all RETRANSMIT."""
        for series in list(self._series.values()):
            self._send(series.start, FLAG_RETRANSMIT)
            for index in sorted(series.held):
                self._send(series.held[index], FLAG_RETRANSMIT)
            for index in sorted(series.lost):
                self._send(series.lost[index], FLAG_RETRANSMIT)
            if series.end is not None:
                self._send(series.end, FLAG_RETRANSMIT)
        for record in list(self._records.values()):
            self._send(record, FLAG_RETRANSMIT)
        for error in list(self._hw_errors.values()):
            self._send(error, FLAG_RETRANSMIT)
        self._send(ReplayDoneMsg(len(self._slots), self._unacked()), FLAG_RETRANSMIT)

    def _unacked(self) -> int:
        ended = sum(1 for s in self._series.values() if s.end is not None)
        return len(self._records) + len(self._hw_errors) + ended

    def _release(self, msg: SliceReleaseMsg) -> None:
        held = self._slots.get(msg.slot)
        if held is None or held[2].slot_seq != msg.slot_seq:
            return  # idempotent: a repeated or stale release
        key, index, _ = held
        del self._slots[msg.slot]
        self._torn.pop(msg.slot, None)
        self._free.append(msg.slot)
        series = self._series.get(key)
        if series is not None:
            series.held.pop(index, None)
            series.released.add(index)
        self.releases += 1

    def _current(self, msg: Message) -> bool:
        if isinstance(msg, SliceReadyMsg):
            held = self._slots.get(msg.slot)
            return held is not None and held[2].slot_seq == msg.slot_seq
        if isinstance(msg, SeriesStartMsg | SeriesEndMsg | SliceLostMsg):
            return msg.series_key in self._series
        if isinstance(msg, IrradiationEventMsg):
            return msg.event_uid in self._records
        if isinstance(msg, HwErrorMsg):
            return any(record is msg for record in self._hw_errors.values())
        return False

    def _resend(self, msg: ResendRequestMsg) -> None:
        if msg.mode == ResendMode.ALL:
            self._replay()
        elif msg.mode == ResendMode.FRAMES:
            seqs = [(msg.first_seq + i) % (1 << 32) for i in range(msg.count)]
            sent = [s for s in seqs if s != 0 and s < self._seq]
            if any(s not in self._log for s in sent):
                self._replay()
                return
            for s in sent:
                old = self._log[s]
                if self._current(old):
                    self._send(old, FLAG_RETRANSMIT)
            self._send(ReplayDoneMsg(len(self._slots), self._unacked()), FLAG_RETRANSMIT)
        else:
            self._resend_slice(msg.series_key, msg.index)

    def _resend_slice(self, key: str, index: int) -> None:
        series = self._series.get(key)
        if series is None:
            lost = SliceLostMsg(key, index, LostReason.NOT_HELD, "unknown series")
            self._send(lost, FLAG_RETRANSMIT)
            return
        if index in series.held:
            ready = series.held[index]
            torn = self._torn.pop(ready.slot, None)
            assert self._buf is not None
            if torn is not None:  # the transient fault is over
                self._buf[torn[0]] = torn[1]
            off = self.header.slot_offset(ready.slot) + SLOT_PAYLOAD_OFFSET
            if zlib.crc32(self._buf[off : off + ready.pixel_length]) == ready.pixel_crc:
                self._send(ready, FLAG_RETRANSMIT)
                return
            del series.held[index]  # the device lost it: a gap, the slot is FREE again
            del self._slots[ready.slot]
            self._free.append(ready.slot)
            series.lost[index] = SliceLostMsg(key, index, LostReason.RECON_FAILED, "slot CRC")
            self._send(series.lost[index], FLAG_RETRANSMIT)
        elif index in series.lost:
            self._send(series.lost[index], FLAG_RETRANSMIT)
        elif index in series.released:
            lost = SliceLostMsg(key, index, LostReason.NOT_HELD, "released before")
            self._send(lost, FLAG_RETRANSMIT)
        # else: not produced yet; it is announced when ready


def _group_id(group: str | int) -> int:
    """The id of group `group` (a name or a number); ValueError naming an unknown name."""
    if isinstance(group, int):
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"ring group {group!r}: no such group") from None


def _ring_bytes(pixels: npt.NDArray[np.uint16]) -> bytes:
    return np.ascontiguousarray(pixels, dtype="<u2").tobytes()


class ScanSlices:
    """The phantom slices of one scanned series, as the ring takes them (bytes and CRC-32).

    The anatomy changes in `POSITIONS` steps along the series (the phantom's own levels) and
    the noise cycles through `NOISE_VARIANTS` patterns, so a slice is made, converted and
    CRC-checked once per step and pattern and then only copied into its slot, as a
    reconstructor's DMA would: the device must cost less than the host it feeds (the ingest
    bench measures the host). Only the current step's slices are kept."""

    def __init__(self, phantom: Phantom, slices: int, seed: int) -> None:
        self._phantom = phantom
        self._steps = max(1, min(slices - 1, POSITIONS - 1))
        self._last = max(1, slices - 1)
        self._seed = seed
        self._step = -1
        self._made: dict[int, tuple[npt.NDArray[np.uint16], tuple[bytes, int]]] = {}

    def slice(self, index: int) -> tuple[npt.NDArray[np.uint16], tuple[bytes, int]]:
        step = round(index / self._last * self._steps)
        if step != self._step:
            self._step, self._made = step, {}
        variant = index % NOISE_VARIANTS
        made = self._made.get(variant)
        if made is None:
            pixels = self._phantom.slice(step / self._steps, self._seed + variant)
            payload = _ring_bytes(pixels)
            made = self._made[variant] = (pixels, (payload, zlib.crc32(payload)))
        return made


def _take(pending: collections.Counter[MsgType], msg_type: MsgType) -> bool:
    """Use up one pending fault of `msg_type`, if any."""
    if pending[msg_type]:
        pending[msg_type] -= 1
        return True
    return False
