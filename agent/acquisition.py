"""Driver events -> CT Image instances -> spool. A slice is released to the hardware only once
it is durable in the spool, so a slow agent makes the hardware wait instead of losing data."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset

from agent.dicom import files
from agent.dicom.assembler import Assembler, Series
from agent.exam import Exam
from agent.spool import InstanceRecord, Spool, SpooledInstance
from hardware.base import Driver, Event, HardwareError, SeriesEnd, SeriesStart, SliceReady

log = logging.getLogger(__name__)


@dataclass
class AcquisitionCounts:
    series_started: int = 0
    series_ended: int = 0
    slices_accepted: int = 0
    bad_events: int = 0
    hardware_errors: list[str] = field(default_factory=list)


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


class Acquisition:
    def __init__(
        self,
        driver: Driver,
        assembler: Assembler,
        spool: Spool,
        exam_for_token: Callable[[str], Exam | None],
        on_accepted: Callable[[SpooledInstance, Exam], None] | None = None,
    ) -> None:
        self.driver = driver
        self.assembler = assembler
        self.spool = spool
        self.exam_for_token = exam_for_token
        self.on_accepted = on_accepted
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

    def _start(self, event: SeriesStart) -> None:
        exam = self.exam_for_token(event.token)
        if exam is None:
            # Never filed under another exam (SPEC §3); held series come with the daemon issue.
            self.counts.bad_events += 1
            log.error("series %s carries an unknown exam token; not filed", event.series_key)
            return
        self._series[event.series_key] = self.assembler.open_series(exam, event)
        self.counts.series_started += 1

    def _slice(self, event: SliceReady) -> None:
        series = self._series.get(event.series_key)
        if series is None:
            self.counts.bad_events += 1
            log.error("slice %d of unknown series %s ignored", event.index, event.series_key)
            return
        ds = self.assembler.image(series, event)
        record = instance_record(ds, series.exam.token)
        spooled = self.spool.accept(record, files.encode(ds), series.exam.destinations)
        self.driver.release(event)
        self.counts.slices_accepted += 1
        if self.on_accepted is not None:
            self.on_accepted(spooled, series.exam)

    def _end(self, event: SeriesEnd) -> None:
        series = self._series.pop(event.series_key, None)
        if series is None:
            self.counts.bad_events += 1
            return
        self.counts.series_ended += 1
