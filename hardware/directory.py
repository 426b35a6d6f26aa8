"""The drop-folder driver: a reconstructor writes each slice as raw pixels plus a JSON header
into a folder; this driver turns the folder into events (format and rules: DROPFOLDER.md).

The folder is the source of truth. Nothing is remembered between runs: at `open()` a full scan
announces everything not yet released, and files move to `.done/` only when the agent calls
`release()` (the slice is durable in the spool), so a crash re-announces what was in flight and
the agent keeps each (series key, index) once.

Watching only says *where* to look. watchdog's inotify `Observer` (or its `PollingObserver`
with `polling = true`, for network file systems) watches the folder and each live series
directory, not recursively, so `.done/` costs nothing; its callbacks put the name of the changed
directory on a queue, and `read_event` rescans that directory in the caller's thread. All
parsing and state changes happen there, under one lock.

A slice is complete when its header is there: the header is written (renamed into place) after
its raw file, and names the raw file's byte length and CRC-32. A file that fails a check is
moved to `.quarantine/` and reported as a `HardwareError` (code `DROP_BAD_FILE`): counted,
alarmed by the agent, never an image and never a crash.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from hardware.base import (
    Driver,
    DriverError,
    Event,
    HardwareError,
    SeriesEnd,
    SeriesStart,
    SliceReady,
)

# The JSON forms of SeriesStart and SliceReady are the agent's stored ones (one codec, pure,
# depending only on hardware.base); the drop folder adds the checks a shared folder needs.
from hardware.event_codec import EventCodecError, slice_from_bytes, start_from_json, start_to_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DONE, QUARANTINE = ".done", ".quarantine"
SERIES_FILE, END_FILE, ERROR_FILE = "series.json", "series-end.json", "error.json"
BAD_FILE = "DROP_BAD_FILE"
MAX_JSON_BYTES = 64 * 1024  # a header is a few hundred bytes; anything larger is garbage
SERIES_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SLICE_FILE = re.compile(r"slice-(\d{5,9})\.(json|raw)")
_ROOT = ""  # on the change queue: the folder itself changed


def slice_names(index: int) -> tuple[str, str]:
    """The header's and the raw file's names of slice `index` (0-based)."""
    stem = f"slice-{index:05d}"
    return f"{stem}.json", f"{stem}.raw"


def is_temporary(name: str) -> bool:
    """Names a writer uses while a file is incomplete: ignored by the driver."""
    return name.startswith(".") or name.endswith(".tmp")


# -- the format: pure, bytes in and out ------------------------------------------------------


def encode_start(start: SeriesStart) -> bytes:
    return json.dumps(start_to_json(start), indent=1).encode()


def encode_slice(slice_: SliceReady) -> tuple[bytes, bytes]:
    """(header, raw) of a slice: raw is rows x columns little-endian uint16."""
    raw = np.ascontiguousarray(slice_.pixels, dtype="<u2").tobytes()
    header = {
        "format": FORMAT_VERSION,
        "series_key": slice_.series_key,
        "index": slice_.index,
        "image_position": list(slice_.image_position),
        "table_position_mm": slice_.table_position_mm,
        "acquisition_time": slice_.acquisition_time.isoformat(),
        "shape": list(slice_.pixels.shape),
        "byte_length": len(raw),
        "crc32": zlib.crc32(raw),
    }
    return json.dumps(header).encode(), raw


def encode_end(series_key: str, slices: int) -> bytes:
    return json.dumps({"series_key": series_key, "slices": slices}).encode()


def encode_error(series_key: str, code: str, message: str, slices: int | None = None) -> bytes:
    doc: dict[str, Any] = {"series_key": series_key, "code": code, "message": message}
    if slices is not None:
        doc["slices"] = slices
    return json.dumps(doc).encode()


class BadFile(ValueError):
    """A drop-folder file that breaks the format; the message says how."""


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise BadFile(f"{what}: not JSON") from None
    if not isinstance(doc, dict):
        raise BadFile(f"{what}: expected a JSON object")
    return doc


def decode_start(data: bytes, series_key: str) -> SeriesStart:
    try:
        start = start_from_json(_json_object(data, SERIES_FILE))
    except (EventCodecError, TypeError, ValueError) as e:
        raise BadFile(f"{SERIES_FILE}: {e}") from None
    if start.series_key != series_key:
        raise BadFile(f"{SERIES_FILE}: series_key {start.series_key!r} in folder {series_key!r}")
    return start


def decode_slice(
    header: bytes, raw: bytes, series_key: str, index: int, start: SeriesStart
) -> SliceReady:
    """Check a slice's header against its name, its series and its raw file; raise BadFile."""
    h = _json_object(header, "slice header")
    if h.get("format", FORMAT_VERSION) != FORMAT_VERSION:
        raise BadFile(f"slice header: format {h.get('format')!r}, expected {FORMAT_VERSION}")
    if h.get("series_key") != series_key or h.get("index") != index:
        raise BadFile(
            f"slice header: names series {h.get('series_key')!r} index {h.get('index')!r}, "
            f"found as {series_key!r} index {index}"
        )
    if h.get("shape") != [start.rows, start.columns]:
        shape = f"{start.rows} x {start.columns}"
        raise BadFile(f"slice header: shape {h.get('shape')!r}, the series is {shape}")
    expected = start.rows * start.columns * 2
    if h.get("byte_length") != expected or len(raw) != expected:
        raise BadFile(
            f"raw file: {len(raw)} bytes, header says {h.get('byte_length')!r}, "
            f"{start.rows} x {start.columns} pixels need {expected}"
        )
    if h.get("crc32") != zlib.crc32(raw):
        raise BadFile(f"raw file: CRC-32 {zlib.crc32(raw):08x}, header says {h.get('crc32')!r}")
    try:
        slice_ = slice_from_bytes(json.dumps(h).encode() + b"\n" + raw)
    except EventCodecError as e:
        raise BadFile(str(e)) from None
    if slice_.acquisition_time.tzinfo is None:
        raise BadFile("slice header: acquisition_time has no UTC offset")
    return slice_


def decode_end(data: bytes, series_key: str) -> int:
    doc = _json_object(data, END_FILE)
    slices = doc.get("slices")
    if doc.get("series_key") != series_key or not isinstance(slices, int) or slices < 0:
        raise BadFile(f"{END_FILE}: expected series_key {series_key!r} and slices >= 0")
    return slices


def decode_error(data: bytes, series_key: str) -> tuple[HardwareError, int | None]:
    doc = _json_object(data, ERROR_FILE)
    code, message, slices = doc.get("code"), doc.get("message"), doc.get("slices")
    if not (isinstance(code, str) and code and isinstance(message, str)):
        raise BadFile(f"{ERROR_FILE}: expected code and message as text")
    if slices is not None and not (isinstance(slices, int) and slices >= 0):
        raise BadFile(f"{ERROR_FILE}: slices: expected an integer >= 0")
    return HardwareError(code=code, message=message, series_key=series_key), slices


# -- the driver ------------------------------------------------------------------------------


@dataclass
class _Series:
    key: str
    start: SeriesStart | None = None  # announced in this run
    headers: set[int] = field(default_factory=set)  # complete slices, not yet announced
    announced: set[int] = field(default_factory=set)  # announced, not yet released
    done: set[int] = field(default_factory=set)  # released (their files are in .done)
    next_index: int = 0  # the lowest index not announced yet, in order
    gap_since: float | None = None  # when a later slice started waiting for a missing one
    end: int | None = None  # slices, from series-end.json
    error: HardwareError | None = None
    error_slices: int | None = None
    error_sent: bool = False
    end_sent: bool = False
    watch: ObservedWatch | None = None

    @property
    def over(self) -> bool:
        """Nothing more will be written: its end or a hardware error is there."""
        return self.end is not None or self.error is not None


class _Changes(FileSystemEventHandler):
    """watchdog's callbacks (its thread): the name of the changed directory, on a queue."""

    def __init__(self, folder: Path, changes: queue.SimpleQueue[str]) -> None:
        self._folder = folder
        self._changes = changes

    def on_any_event(self, event: FileSystemEvent) -> None:
        for raw in (event.src_path, event.dest_path):
            if not raw:
                continue
            try:
                parts = Path(os.fsdecode(raw)).relative_to(self._folder).parts
            except ValueError:
                continue
            if len(parts) == 1:
                self._changes.put(_ROOT)
            elif len(parts) > 1 and not parts[0].startswith("."):
                self._changes.put(parts[0])


class _StopRace(logging.Filter):
    """watchdog 7's inotify emitter logs an ERROR when it is stopped while an event is being
    read (at `close()`, with changes pending): the event is dropped on purpose, nothing is
    wrong. Only that message is filtered, on watchdog's own logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


_STOP_RACE = _StopRace()


class DirectoryDriver(Driver):
    """`folder`: the drop folder; `polling`: poll every `poll_interval` s instead of inotify.
    `gap_wait`: how long a slice waits for a missing lower index before it is announced anyway
    (a series' end or error announces everything at once)."""

    def __init__(
        self,
        *,
        folder: Path | str,
        polling: bool = False,
        poll_interval: float = 1.0,
        gap_wait: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not poll_interval > 0:
            raise DriverError(f"directory driver: poll_interval must be > 0, got {poll_interval}")
        self.folder = Path(folder)
        self.polling = polling
        self.poll_interval = poll_interval
        self.gap_wait = gap_wait
        self._clock = clock
        self._lock = threading.RLock()
        self._changes: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._observer: BaseObserver | None = None
        self._series: dict[str, _Series] = {}  # in the order found
        self._ignored: set[str] = set()  # bad names already reported
        self._ended: list[str] = []  # SeriesEnd announced; tidied at the next read
        self._errors: list[HardwareError] = []  # bad files found, to announce next
        self._stopping: list[ObservedWatch] = []  # of deleted series folders
        self._token: str | None = None
        self.bad_files = 0
        self.duplicates = 0

    # -- the driver interface -------------------------------------------------------------

    def open(self) -> None:
        with self._lock:
            if self._observer is not None:
                return
            folder = self.folder
            if not folder.is_dir():
                raise DriverError(f"directory driver: drop folder {folder} does not exist")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise DriverError(
                    f"directory driver: drop folder {folder} is not writable by this user "
                    "(processed files are moved aside in it)"
                )
            try:
                (folder / DONE).mkdir(exist_ok=True)
                (folder / QUARANTINE).mkdir(exist_ok=True)
            except OSError as e:
                raise DriverError(f"directory driver: {folder}: {e.strerror}") from None
            logging.getLogger("watchdog.observers.inotify").addFilter(_STOP_RACE)  # idempotent
            self._series.clear()
            self._ended.clear()
            self._errors.clear()
            self._ignored.clear()
            self._stopping.clear()
            self._changes = queue.SimpleQueue()
            observer: BaseObserver = (
                PollingObserver(timeout=self.poll_interval) if self.polling else Observer()
            )
            observer.schedule(_Changes(folder, self._changes), str(folder), recursive=False)
            try:
                observer.start()
            except OSError as e:  # e.g. out of inotify watches
                raise DriverError(f"directory driver: cannot watch {folder}: {e}") from None
            self._observer = observer
            self._scan_root()  # what arrived while nobody watched

    def set_exam_token(self, token: str | None) -> None:
        self._token = token  # no back channel: the token comes back in series.json

    def read_event(self, timeout: float) -> Event | None:
        deadline = self._clock() + max(timeout, 0.0)
        with self._lock:
            self._check_open()
            self._tidy_ended()
        while True:
            with self._lock:
                self._drain()
                event, wake_at = self._next_event()
            if event is not None:
                return event
            now = self._clock()
            wait = min(deadline, wake_at if wake_at is not None else deadline) - now
            if wait <= 0:
                if now >= deadline:
                    return None
                continue  # a gap timed out: look again
            try:
                changed = self._changes.get(timeout=wait)
            except queue.Empty:
                continue
            self._changes.put(changed)  # handled by _drain, in order, under the lock

    def release(self, slice_: SliceReady) -> None:
        key, index = slice_.series_key, slice_.index
        with self._lock:
            for name in slice_names(index):  # the header first: a raw left alone is ignored
                self._move(key, name, DONE)
            s = self._series.get(key)
            if s is not None:
                s.announced.discard(index)
                s.done.add(index)

    def counters(self) -> dict[str, int]:
        return {"bad_files": self.bad_files, "duplicates": self.duplicates}

    def close(self) -> None:
        with self._lock:
            observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=10)

    # -- scanning -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._observer is None:
            raise DriverError("directory driver: not open")
        if not self.folder.is_dir():
            raise DriverError(f"directory driver: drop folder {self.folder} is gone")

    def _drain(self) -> None:
        dirty: dict[str, None] = {}
        while True:
            try:
                dirty[self._changes.get_nowait()] = None
            except queue.Empty:
                break
        for key in dirty:
            if key == _ROOT:
                self._scan_root()
            elif key in self._series:
                self._scan_series(self._series[key])
            else:
                self._scan_root()

    def _listdir(self, path: Path) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise DriverError(f"directory driver: cannot list {path}: {e.strerror}") from None

    def _scan_root(self) -> None:
        for name in self._listdir(self.folder):
            if is_temporary(name) or name in self._series or name in self._ignored:
                continue
            path = self.folder / name
            if not path.is_dir():
                self._ignored.add(name)
                self._bad(None, name, "a file at the top of the drop folder (series are folders)")
                continue
            if not SERIES_KEY.fullmatch(name):
                self._ignored.add(name)
                self._report(None, f"folder {name!r}: not a series key ([A-Za-z0-9._-], <= 64)")
                continue
            s = self._series[name] = _Series(name)
            s.done = {
                int(m.group(1))
                for f in self._listdir(self.folder / DONE / name)
                if (m := SLICE_FILE.fullmatch(f)) and m.group(2) == "json"
            }
            s.next_index = max(s.done) + 1 if s.done else 0
            assert self._observer is not None
            with contextlib.suppress(OSError):  # gone already: the scan below finds nothing
                s.watch = self._observer.schedule(
                    _Changes(self.folder, self._changes), str(path), recursive=False
                )
            self._scan_series(s)  # after the watch: nothing falls between the two

    def _scan_series(self, s: _Series) -> None:
        key = s.key
        for name in self._listdir(self.folder / key):
            if is_temporary(name):
                continue
            if name == SERIES_FILE:
                continue  # read when it is announced
            if name in (END_FILE, ERROR_FILE):
                if (name == END_FILE and s.end is None) or (name == ERROR_FILE and not s.error):
                    self._read_marker(s, name)
                continue
            m = SLICE_FILE.fullmatch(name)
            if m is None:
                self._bad(key, name, "not a drop-folder file name")
                continue
            index = int(m.group(1))
            if m.group(2) == "raw":
                if index in s.done and not (self.folder / key / slice_names(index)[0]).exists():
                    self._move(key, name, DONE)  # a release cut short
                continue
            if index in s.done:  # written again after it was released: already in the spool
                self.duplicates += 1
                log.warning("slice %d of series %s written again; kept once", index, key)
                for dup in slice_names(index):
                    self._move(key, dup, DONE)
            elif index not in s.announced:
                s.headers.add(index)

    def _read_marker(self, s: _Series, name: str) -> None:
        try:
            data = self._read(s.key, name)
            if name == END_FILE:
                s.end = decode_end(data, s.key)
            else:
                s.error, s.error_slices = decode_error(data, s.key)
        except BadFile as e:
            self._bad(s.key, name, str(e))

    def _read(self, key: str, name: str, limit: int = MAX_JSON_BYTES) -> bytes:
        path = self.folder / key / name
        try:
            with path.open("rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError:
            raise BadFile(f"{name}: vanished") from None
        except OSError as e:
            raise BadFile(f"{name}: unreadable ({e.strerror})") from None
        if len(data) > limit:
            raise BadFile(f"{name}: larger than {limit} bytes")
        return data

    # -- the next event -------------------------------------------------------------------

    def _next_event(self) -> tuple[Event | None, float | None]:
        """The next event to announce, else when to look again without a change (a gap)."""
        if self._errors:
            return self._errors.pop(0), None
        wake_at: float | None = None
        for s in list(self._series.values()):
            if s.start is None:
                if not (self.folder / s.key / SERIES_FILE).exists():
                    continue  # its slices wait for it
                try:
                    s.start = decode_start(self._read(s.key, SERIES_FILE), s.key)
                except BadFile as e:
                    self._bad(s.key, SERIES_FILE, str(e))
                    return self._errors.pop(0), None
                return s.start, None
            if s.headers:
                index = min(s.headers)
                if index > s.next_index and not s.over:
                    now = self._clock()
                    s.gap_since = now if s.gap_since is None else s.gap_since
                    due = s.gap_since + self.gap_wait
                    if now < due:
                        wake_at = due if wake_at is None else min(wake_at, due)
                        continue
                s.headers.discard(index)
                s.gap_since = None
                s.next_index = max(s.next_index, index + 1)
                return self._load_slice(s, index), None
            if s.error is not None and not s.error_sent:
                s.error_sent = True
                return s.error, None
            if s.over and not s.end_sent:
                s.end_sent = True
                self._ended.append(s.key)
                slices = s.end if s.end is not None else s.error_slices
                if slices is None:
                    slices = max(s.done | s.announced, default=-1) + 1
                return SeriesEnd(series_key=s.key, slices=slices), None
        return None, wake_at

    def _load_slice(self, s: _Series, index: int) -> Event:
        assert s.start is not None
        header_name, raw_name = slice_names(index)
        try:
            header = self._read(s.key, header_name)
            raw = self._read(s.key, raw_name, s.start.rows * s.start.columns * 2)
            slice_ = decode_slice(header, raw, s.key, index, s.start)
        except BadFile as e:
            self._move(s.key, raw_name, QUARANTINE)
            self._bad(s.key, header_name, str(e))
            return self._errors.pop(0)
        s.announced.add(index)
        return slice_

    def _tidy_ended(self) -> None:
        """Series whose end the agent has handled (it reads again only after handling an event):
        their remaining files go to .done, once every slice announced was released."""
        for key in list(self._ended):
            s = self._series.get(key)
            if s is None:
                self._ended.remove(key)
                continue
            if s.announced:
                continue
            self._ended.remove(key)
            for name in self._listdir(self.folder / key):
                if not is_temporary(name):
                    self._move(key, name, DONE)
            try:
                (self.folder / key).rmdir()
            except OSError:  # a writer's temporary file is still there: left for a person
                log.warning("series folder %s not empty after its end; left", key)
                self._ignored.add(key)
            else:  # its emitter stops by itself on the deletion; forgotten once it has
                if s.watch is not None:
                    self._stopping.append(s.watch)
            del self._series[key]
        self._forget_stopped_watches()

    def _forget_stopped_watches(self) -> None:
        """Unschedule the watches of deleted series folders whose emitter thread has ended
        (unscheduling a running inotify emitter takes a while and logs a spurious error)."""
        observer = self._observer
        if observer is None or not self._stopping:
            return
        alive = {e.watch for e in observer.emitters if e.is_alive()}
        for watch in [w for w in self._stopping if w not in alive]:
            self._stopping.remove(watch)
            with contextlib.suppress(KeyError, OSError):
                observer.unschedule(watch)

    # -- moving files aside ---------------------------------------------------------------

    def _move(self, key: str, name: str, to: str) -> None:
        source = self.folder / key / name
        target = self.folder / to / key
        try:
            target.mkdir(parents=True, exist_ok=True)
            os.replace(source, target / name)
        except FileNotFoundError:
            if source.exists():  # the target could not be made
                raise DriverError(f"directory driver: cannot create {target}") from None
        except OSError as e:
            raise DriverError(
                f"directory driver: cannot move {source} to {target}: {e.strerror}"
            ) from None

    def _bad(self, key: str | None, name: str, why: str) -> None:
        """A file that breaks the format: moved to .quarantine, counted, reported."""
        if key is None:
            with contextlib.suppress(OSError):
                (self.folder / QUARANTINE).mkdir(exist_ok=True)
                os.replace(self.folder / name, self.folder / QUARANTINE / name)
        else:
            self._move(key, name, QUARANTINE)
        where = f"{key}/{name}" if key else name
        self._report(key, f"{where} quarantined: {why}")

    def _report(self, key: str | None, message: str) -> None:
        """Counted, logged, and announced as a HardwareError before any other event."""
        self.bad_files += 1
        log.error("drop folder: %s", message)
        self._errors.append(HardwareError(code=BAD_FILE, message=message, series_key=key))
