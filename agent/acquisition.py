"""Driver events -> CT Image instances -> spool. A slice is released to the hardware only once
it is durable (in the spool, or held when its series belongs to no known exam), so a slow
agent makes the hardware wait instead of losing data."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from agent.alarms import Alarms
from agent.dicom import files
from agent.dicom.assembler import Assembler, Series
from agent.exam import Exam
from agent.holding import Holding
from agent.spool import InstanceRecord, Spool, SpooledInstance
from hardware.base import Driver, Event, HardwareError, SeriesEnd, SeriesStart, SliceReady

log = logging.getLogger(__name__)


def instance_record(ds: Dataset, exam_token: str | None = None) -> InstanceRecord:
    """What the spool indexes of an instance."""
    return InstanceRecord(
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        instance_number=int(ds.InstanceNumber),
        exam_token=exam_token,
    )


@dataclass
class AcquisitionCounts:
    series_started: int = 0
    series_ended: int = 0
    slices_accepted: int = 0  # into the spool
    slices_held: int = 0  # held as unassigned
    bad_events: int = 0
    hardware_errors: list[str] = field(default_factory=list)


Notify = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Routing:
    """Where an exam's images go now, and where only once the exam has ended."""

    now: tuple[str, ...]
    deferred: tuple[str, ...] = ()


def _send_everywhere_now(exam: Exam) -> Routing:
    return Routing(exam.destinations)


class Acquisition:
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
    ) -> None:
        self.driver = driver
        self.assembler = assembler
        self.spool = spool
        self.exam_for_token = exam_for_token
        self.route = route
        self.holding = holding
        self.on_accepted = on_accepted
        self.notify: Notify = notify or (lambda event, data: None)
        self.alarms = alarms
        self.counts = AcquisitionCounts()
        self._series: dict[str, Series] = {}

    def poll(self, timeout: float) -> Event | None:
        """Handle the next driver event, if one arrives within `timeout` seconds."""
        event = self.driver.read_event(timeout)
        if event is not None:
            self.handle(event)
        return event

    def handle(self, event: Event) -> None:
        if isinstance(event, SeriesStart):
            self._start(event)
        elif isinstance(event, SliceReady):
            self._slice(event)
        elif isinstance(event, SeriesEnd):
            self._end(event)
        elif isinstance(event, HardwareError):
            self.counts.hardware_errors.append(f"{event.code}: {event.message}")
            log.error("hardware error %s: %s", event.code, event.message)
            if self.alarms is not None:
                self.alarms.raise_("hardware_error", f"{event.code}: {event.message}")

    def _start(self, event: SeriesStart) -> None:
        exam = self.exam_for_token(event.token)
        if exam is None:
            self._hold(event)
            return
        series = self.assembler.open_series(exam, event)
        self._series[event.series_key] = series
        self.counts.series_started += 1
        self.notify("series.started", _series_info(series))

    def _hold(self, event: SeriesStart) -> None:
        if self.holding is None:
            self.counts.bad_events += 1
            log.error("series %s carries an unknown exam token; not filed", event.series_key)
            return
        held = self.holding.hold_start(event)
        self.counts.series_started += 1
        log.warning("series %s held: unknown exam token", held.series_instance_uid)
        self.notify(
            "series.unassigned",
            {"series_instance_uid": held.series_instance_uid, "token": event.token},
        )
        if self.alarms is not None:
            self.alarms.raise_(
                "unassigned_series",
                f"series {held.series_instance_uid} ({event.description}) was acquired under "
                "an unknown exam token; held until assigned (exam assign)",
                held.series_instance_uid,
            )

    def _slice(self, event: SliceReady) -> None:
        series = self._series.get(event.series_key)
        if series is None:
            if self.holding is not None and self.holding.holds(event.series_key):
                self.holding.hold_slice(event)
                self.driver.release(event)
                self.counts.slices_held += 1
                self.notify("slice.held", {"index": event.index})
                return
            self.counts.bad_events += 1
            log.error("slice %d of unknown series %s ignored", event.index, event.series_key)
            return
        spooled = self.accept(series, event)
        self.driver.release(event)
        if self.on_accepted is not None:
            self.on_accepted(spooled, series.exam)

    def accept(self, series: Series, slice_: SliceReady) -> SpooledInstance:
        """Assemble one slice and make it durable in the spool, routed by `route`."""
        ds = self.assembler.image(series, slice_)
        record = instance_record(ds, series.exam.token)
        routing = self.route(series.exam)
        spooled = self.spool.accept(record, files.encode(ds), routing.now, routing.deferred)
        if routing.deferred and self.route(series.exam).deferred != routing.deferred:
            # the exam ended while this slice was being accepted: release what it deferred
            self.spool.release_deferred(series.exam.token)
        self.counts.slices_accepted += 1
        self.notify(
            "slice.accepted",
            {
                "study_instance_uid": record.study_instance_uid,
                "series_instance_uid": record.series_instance_uid,
                "instance_number": record.instance_number,
            },
        )
        return spooled

    def _end(self, event: SeriesEnd) -> None:
        series = self._series.pop(event.series_key, None)
        self.counts.series_ended += 1
        if series is None and self.holding is not None and self.holding.holds(event.series_key):
            self.holding.hold_end(event.series_key)
        if series is not None:
            self.notify("series.ended", {**_series_info(series), "slices": event.slices})


def _series_info(series: Series) -> dict[str, Any]:
    return {
        "study_instance_uid": series.exam.study_instance_uid,
        "series_instance_uid": series.series_instance_uid,
        "series_number": series.series_number,
        "description": series.start.description,
    }
