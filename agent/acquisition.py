"""Driver events -> CT Image instances -> spool. A slice is released to the hardware only once
it is durable (in the spool, or held), so a slow agent makes the hardware wait.

Slices are pipelined: while up to `in_flight` slices are being made durable by worker threads
(file, fsyncs, index commit), the next one is read and assembled. Each worker releases its own
slice as soon as that slice is durable, in whatever order they finish (drivers take releases in
any order: PROTOCOL.md §9.5 for serial-shm). Every other event waits until each slice taken
before it is durable (a series end is handled only once all its slices are), and `poll` returns
with nothing in flight, so outside it every event taken is handled or pending.

Nothing taken from the driver is dropped. An event whose handling fails for a reason that may
pass (OSError, e.g. a full disk) stays pending and is retried with backoff before the driver is
read again; a slice that can never be filed (it fails assembly or validation, or its series
start was never seen) is quarantined in the Holding with the reason, then released. Open
series are persisted (agent.open_series), so a restart in the middle of a series resumes it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.alarms import Alarms
from agent.dicom.assembler import Assembler, Series
from agent.exam import Exam
from agent.faults import TRANSIENT, describe
from agent.holding import START_NOT_SEEN, UNKNOWN_TOKEN, HeldSeries, Holding
from agent.irradiation import IrradiationRecords
from agent.net.retry import Backoff
from agent.open_series import OpenSeries, gaps, ranges
from agent.spool import InstanceRecord, Spool, SpooledInstance
from agent.spool.files import FileData
from hardware.base import (
    Driver,
    DriverError,
    Event,
    HardwareError,
    SeriesEnd,
    SeriesStart,
    SliceReady,
)
from hardware.dose import IrradiationEvent

log = logging.getLogger(__name__)


# Slices made durable at once, each holding its encoded file (~0.5 MB) meanwhile. Each spends
# most of its time waiting for fsyncs, so more in flight means larger group commits: 8 gave
# +10-15 % ingest over 4 on a 2-core VM (bench/ingest_serial_shm.py, --in-flight).
IN_FLIGHT = 8


@dataclass
class AcquisitionCounts:
    series_started: int = 0
    series_ended: int = 0
    slices_accepted: int = 0  # into the spool
    slices_held: int = 0  # held as unassigned, or quarantined
    bad_events: int = 0  # quarantined slices, series held for a fault, ends of unknown series
    irradiation_events: int = 0
    hardware_errors: list[str] = field(default_factory=list)


Notify = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Routing:
    """Where an exam's images go now, and where only once the exam has ended."""

    now: tuple[str, ...]
    deferred: tuple[str, ...] = ()


def _send_everywhere_now(exam: Exam) -> Routing:
    return Routing(exam.destinations)


@dataclass
class _Job:
    """A slice handed to a worker, which makes it durable and then releases it."""

    event: SliceReady
    series: Series
    record: InstanceRecord
    data: FileData | None  # the file's bytes, in pieces; dropped once durable
    routing: Routing
    spooled: SpooledInstance | None = None  # set once durable in the spool
    error: Exception | None = None  # what stopped the worker (before or after `spooled`)


class Acquisition:
    """`series_dir` keeps the open series (default: `<spool root>/series`), `holding` what
    cannot be filed (default: `<spool root>/unassigned`), `irradiation` the dose records
    (default: `<spool root>/irradiation`); `retry` paces the retries of an event that could not
    be made durable; `in_flight` bounds the slices being made durable at once (1: none
    pipelined)."""

    def __init__(
        self,
        driver: Driver,
        assembler: Assembler,
        spool: Spool,
        exam_for_token: Callable[[str], Exam | None],
        *,
        route: Callable[[Exam], Routing] = _send_everywhere_now,
        holding: Holding | None = None,
        on_accepted: Callable[[SpooledInstance, Exam], None] | None = None,
        notify: Notify | None = None,
        alarms: Alarms | None = None,
        series_dir: Path | None = None,
        retry: Backoff | None = None,
        irradiation: IrradiationRecords | None = None,
        in_flight: int = IN_FLIGHT,
    ) -> None:
        self.driver = driver
        self.assembler = assembler
        self.spool = spool
        self.exam_for_token = exam_for_token
        self.route = route
        self.holding = holding or Holding(spool.root / "unassigned", assembler.uids)
        self.on_accepted = on_accepted
        self.notify: Notify = notify or (lambda event, data: None)
        self.alarms = alarms or Alarms(self._notify)
        self.retry = retry or Backoff(0.5, 30.0)
        self.irradiation = irradiation or IrradiationRecords(spool.root / "irradiation")
        self.counts = AcquisitionCounts()
        self._lock = threading.RLock()  # one event, or one hand-over of a held series, at a time
        self._open = OpenSeries(series_dir or spool.root / "series", spool)
        self._open.load(exam_for_token)
        self._pending: deque[Event] = deque()  # in the order taken; the first retried first
        self._failures = 0
        self._retry_at = 0.0
        self._in_flight = max(1, in_flight)
        self._workers: ThreadPoolExecutor | None = None
        self._jobs: dict[tuple[str, int], tuple[_Job, Future[None]]] = {}  # in submission order
        self._link_error: DriverError | None = None  # met by a worker; raised by poll

    def open_series_uids(self) -> set[str]:
        """The Series Instance UIDs of the series still being acquired."""
        return self._open.series_instance_uids()

    @property
    def pending(self) -> Event | None:
        """The first event that could not be handled yet (others may wait behind it); pending
        events are retried, in order, before the driver is read again."""
        return self._pending[0] if self._pending else None

    def poll(self, timeout: float) -> Event | None:
        """With an event pending: retry the first once its retry is due (waiting up to
        `timeout` s for that). Else handle the driver's events for about `timeout` s, or until
        none comes within it, slices pipelined. Returns with nothing in flight: each event
        taken is handled (durable and released, held or quarantined) or pending. Returns the
        last event handled, None when none was. Raises only the driver's DriverError (an event
        that met it is kept pending, for after the reconnection)."""
        if self._pending:
            return self._retry(timeout)
        deadline = time.monotonic() + max(timeout, 0.0)
        last: Event | None = None
        try:
            while not self._pending:
                self._reap(block=len(self._jobs) >= self._in_flight)
                if self._pending:
                    break
                event = self.driver.read_event(max(0.0, deadline - time.monotonic()))
                if event is None:
                    break
                self._take(event)
                last = event
                if time.monotonic() >= deadline:
                    break
        finally:
            self._reap(block=True, every=True)
            lost, self._link_error = self._link_error, None
        if lost is not None:
            raise lost
        return None if last is None or any(e is last for e in self._pending) else last

    def _retry(self, timeout: float) -> Event | None:
        event = self._pending[0]
        if (wait_s := self._retry_at - time.monotonic()) > 0:
            time.sleep(min(wait_s, max(timeout, 0.0)))
            if self._retry_at > time.monotonic():
                return None
        try:
            self.handle(event)
        except DriverError:  # the link is lost: handled again once the caller reconnected
            raise
        except Exception as e:
            self._stall(event, e)
            return None
        self._pending.popleft()
        if self._pending:
            self._retry_at = time.monotonic()  # the next one at once
        else:
            self._failures = 0
            log.info("acquisition resumed")
            self.alarms.clear("acquisition_stalled")
        return event

    def _take(self, event: Event) -> None:
        """An event just read: a slice of an open series is assembled here and made durable by
        a worker; any other event is handled here once every slice before it is durable."""
        if isinstance(event, SliceReady) and self._in_flight > 1:
            key = (event.series_key, event.index)
            if key not in self._jobs:  # (announced again while in flight: once that one is done)
                job = self._guarded(event, lambda: self._prepare(event))
                if job is not None:
                    if self._workers is None:  # idle between polls; gone with this object
                        self._workers = ThreadPoolExecutor(
                            self._in_flight, thread_name_prefix="acquisition"
                        )
                    self._jobs[key] = (job, self._workers.submit(self._durable, job))
                return
        self._reap(block=True, every=True)  # e.g. a series end: after all its slices
        self._guarded(event, lambda: self.handle(event))

    def _guarded(self, event: Event, fn: Callable[[], _Job | None]) -> _Job | None:
        """`fn()` for `event`, or `event` made pending: behind others already pending, or
        because `fn` failed (DriverError raised again)."""
        if self._pending:
            self._pending.append(event)
            return None
        try:
            return fn()
        except DriverError:
            self._pending.append(event)
            raise
        except Exception as e:
            self._stall(event, e)
            return None

    def _prepare(self, event: SliceReady) -> _Job | None:
        """The job of a slice of an open series, assembled; None when it was handled here
        (held, quarantined, or already durable and released again). Raises only when it
        must be retried."""
        with self._lock:
            series = self._series_for(event)
            if series is None:
                return None
            try:
                image = self.assembler.file(series, event)
            except TRANSIENT:
                raise
            except Exception as e:
                self._refuse(event, series, e)
                return None
        return _Job(event, series, image.record, image.parts, self.route(series.exam))

    def _durable(self, job: _Job) -> None:
        """In a worker: the slice durable in the spool, then released to the hardware. What
        stops it is kept in `job.error`, for `_finish`."""
        assert job.data is not None
        try:
            routing = job.routing
            job.spooled = self.spool.accept(job.record, job.data, routing.now, routing.deferred)
            job.data = None
            self._recheck_deferred(job.series.exam, routing)
            self.driver.release(job.event)
        except Exception as e:
            job.error = e

    def _reap(self, *, block: bool, every: bool = False) -> None:
        """Finish the jobs done; with `block`, wait first for one (with `every`: for all)."""
        if not self._jobs:
            return
        if block:
            wait(
                [future for _, future in self._jobs.values()],
                return_when=ALL_COMPLETED if every else FIRST_COMPLETED,
            )
        for key, (job, future) in list(self._jobs.items()):
            if future.done():
                del self._jobs[key]
                self._finish(job)

    def _finish(self, job: _Job) -> None:
        """A worker's job is done: book it, or handle what stopped it (never raises)."""
        event, error = job.event, job.error
        if job.spooled is not None:
            self._book(job.series, event.index, job.spooled)
        if error is None:
            if self.on_accepted is not None:
                self._callback(self.on_accepted, job.spooled, job.series.exam)
            return
        if job.spooled is None and not isinstance(error, (*TRANSIENT, DriverError)):
            try:  # refused for good by the spool: quarantined
                with self._lock:
                    self._refuse(event, job.series, error)
                return
            except Exception as e:
                error = e
        # retried later; a slice already durable is then released again, not filed again
        if isinstance(error, DriverError):
            self._pending.append(event)
            self._link_error = error
        else:
            self._stall(event, error)

    def handle(self, event: Event) -> None:
        """Raises only when `event` must be retried (then nothing of it was released)."""
        with self._lock:
            if isinstance(event, SeriesStart):
                self._start(event)
            elif isinstance(event, SliceReady):
                self._slice(event)
            elif isinstance(event, SeriesEnd):
                self._end(event)
            elif isinstance(event, HardwareError):
                self.counts.hardware_errors.append(f"{event.code}: {event.message}")
                log.error("hardware error %s: %s", event.code, event.message)
                # one alarm per code: a burst of follow-on errors never hides the first cause
                message = f"{event.code}: {event.message}"
                self.alarms.raise_("hardware_error", message, subject=event.code)
            elif isinstance(event, IrradiationEvent):
                if self.irradiation.keep(event):  # durable before the hardware may forget it
                    self.counts.irradiation_events += 1
                    log.info("irradiation record kept")
                self.driver.acknowledge(event)

    def _stall(self, event: Event, error: Exception) -> None:
        if not any(e is event for e in self._pending):
            self._pending.append(event)
        if self._pending[0] is not event:  # its turn comes after the first one's retry
            log.error("%s could not be handled (%s); retried later", _what(event), describe(error))
            return
        self._failures += 1
        delay = self.retry.delay(self._failures)
        self._retry_at = time.monotonic() + delay
        what, why = _what(event), describe(error)
        log.error("%s could not be handled (%s); retry in %.1f s", what, why, delay)
        log.debug("acquisition", exc_info=error)  # the text may quote a patient's data
        self.alarms.raise_(
            "acquisition_stalled",
            f"{what} could not be made durable ({why}); retrying, the hardware waits",
        )

    def _start(self, event: SeriesStart) -> None:
        key = event.series_key
        if self._open.get(key) is not None:
            log.info("series %s started again: resumed", key)
            return
        if self.holding.holds(key):
            self.holding.hold_start(event)
            return
        exam = self.exam_for_token(event.token)
        if exam is None:
            self._hold(event, UNKNOWN_TOKEN)
            return
        try:
            series = self.assembler.open_series(exam, event)
        except TRANSIENT:
            raise
        except Exception as e:
            log.debug("series start", exc_info=True)  # the text may quote a patient's data
            self._hold(event, f"series start could not be filed ({describe(e)})")
            return
        self._open.open(series)  # durable before any of its slices is released
        self.counts.series_started += 1
        self._notify("series.started", _series_info(series))

    def _hold(self, event: SeriesStart, reason: str) -> None:
        held = self.holding.hold_start(event, reason)
        self.counts.series_started += 1
        if reason != UNKNOWN_TOKEN:
            self.counts.bad_events += 1
        log.warning("series %s held: %s", held.series_instance_uid, reason)
        self._notify(
            "series.unassigned",
            {"series_instance_uid": held.series_instance_uid, "token": event.token},
        )
        self._alarm_held(held)

    def _slice(self, event: SliceReady) -> None:
        series = self._series_for(event)
        if series is None:
            return
        try:
            spooled = self.accept(series, event)
        except TRANSIENT:
            raise
        except Exception as e:
            self._refuse(event, series, e)
            return
        self.driver.release(event)
        if self.on_accepted is not None:
            self._callback(self.on_accepted, spooled, series.exam)

    def _series_for(self, event: SliceReady) -> Series | None:
        """The open series of a slice; None when the slice was handled here: held, its series
        start never seen, or already in the spool (released again)."""
        key = event.series_key
        series = self._open.get(key)
        if series is None:
            if self.holding.holds(key):
                self.holding.hold_slice(event)
                self.driver.release(event)
                self.counts.slices_held += 1
                self._notify("slice.held", {"index": event.index})
            else:
                self._quarantine(event, None, START_NOT_SEEN)
            return None
        if event.index in self._open.received(key):
            log.warning("slice %d of series %s came again; kept once", event.index, key)
            self.driver.release(event)
            return None
        return series

    def _refuse(self, event: SliceReady, series: Series, error: Exception) -> None:
        log.debug("slice", exc_info=error)  # the text may quote a patient's data
        self._quarantine(event, series.start, f"slice could not be filed ({describe(error)})")

    def _quarantine(self, event: SliceReady, start: SeriesStart | None, reason: str) -> None:
        held = self.holding.quarantine(event, reason, start)
        self.driver.release(event)
        self.counts.slices_held += 1
        self.counts.bad_events += 1
        what = f"slice {event.index} of series {event.series_key}"
        log.error("%s held in %s: %s", what, held.series_instance_uid, reason)
        self._notify("slice.held", {"index": event.index})
        self._alarm_held(held)

    def accept(self, series: Series, slice_: SliceReady) -> SpooledInstance:
        """Assemble one slice and make it durable in the spool, routed by `route`."""
        image = self.assembler.file(series, slice_)
        routing = self.route(series.exam)
        spooled = self.spool.accept(image.record, image.parts, routing.now, routing.deferred)
        self._book(series, slice_.index, spooled)
        self._recheck_deferred(series.exam, routing)
        return spooled

    def _book(self, series: Series, index: int, spooled: SpooledInstance) -> None:
        """Slice `index` of `series` is durable in the spool as `spooled`."""
        with self._lock:
            self.counts.slices_accepted += 1
            self._open.mark(series, index)
        record = spooled.record
        self._notify(
            "slice.accepted",
            {
                "study_instance_uid": record.study_instance_uid,
                "series_instance_uid": record.series_instance_uid,
                "instance_number": record.instance_number,
            },
        )

    def _recheck_deferred(self, exam: Exam, routing: Routing) -> None:
        if routing.deferred and self.route(exam).deferred != routing.deferred:
            # the exam ended while this slice was being accepted: release what it deferred
            self.spool.release_deferred(exam.token)

    def file_held(self, held: HeldSeries, series: Series) -> None:
        """`exam assign`: file the held series' slices as `series` (of the target exam). One
        still being acquired becomes an open series first, so that its next slices go there.
        Slices already in the spool are skipped: an interrupted call is simply repeated."""
        self._accept_held(held, series)
        with self._lock:  # no slice of it is held, and its end is not seen, meanwhile
            now = self.holding.held(held.series_key)
            if now is not None and not now.complete and self._open.get(held.series_key) is None:
                self._open.open(series)
            self._accept_held(held, series)  # those held while the first pass ran

    def _accept_held(self, held: HeldSeries, series: Series) -> None:
        done = self._open.in_spool(series)
        for slice_ in self.holding.slices(held):
            if slice_.index not in done:
                self.accept(series, slice_)

    def _end(self, event: SeriesEnd) -> None:
        key = event.series_key
        series = self._open.get(key)
        held = self.holding.held(key)
        if held is not None:
            if series is None:
                self._check_gaps(held.series_instance_uid, held.indices, event.slices)
            self.holding.hold_end(key, event.slices)
        if series is not None:
            self._check_gaps(series.series_instance_uid, self._open.received(key), event.slices)
            self._open.close(key)
            self._notify("series.ended", {**_series_info(series), "slices": event.slices})
        if series is None and held is None:
            log.warning("end of series %s, which was never started here", key)
            self.counts.bad_events += 1
        self.counts.series_ended += 1
        self.driver.acknowledge(event)  # its outcome (gaps, end marker) is durable now

    def _check_gaps(self, series_uid: str, received: Collection[int], slices: int) -> None:
        missing = gaps(received, slices)
        if missing:
            message = (
                f"series {series_uid} ended with {slices - len(missing)} of {slices} slices;"
                f" missing indices {ranges(missing)}"
            )
            log.error("%s", message)
            self.alarms.raise_("series_gap", message, series_uid)

    def _alarm_held(self, held: HeldSeries) -> None:
        self.alarms.raise_("unassigned_series", held.alarm_message, held.series_instance_uid)

    def _notify(self, event: str, data: dict[str, Any]) -> None:
        self._callback(self.notify, event, data)

    def _callback(self, fn: Callable[..., None], *args: Any) -> None:
        """A notification: its failure is logged, never undoes what was made durable."""
        try:
            fn(*args)
        except Exception as e:
            log.error("notification failed: %s", describe(e))


def _what(event: Event) -> str:
    if isinstance(event, SliceReady):
        return f"slice {event.index} of series {event.series_key}"
    if isinstance(event, SeriesStart | SeriesEnd):
        return f"{type(event).__name__} of series {event.series_key}"
    return type(event).__name__


def _series_info(series: Series) -> dict[str, Any]:
    return {
        "study_instance_uid": series.exam.study_instance_uid,
        "series_instance_uid": series.series_instance_uid,
        "series_number": series.series_number,
        "description": series.start.description,
    }
