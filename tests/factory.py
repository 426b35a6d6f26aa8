"""Realistic test data made by the real pipeline: mock scanner -> assembler -> spool."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from pydicom.dataset import Dataset

from agent.config import Equipment
from agent.dicom import files
from agent.dicom.assembler import Assembler, Series
from agent.dicom.files import instance_record
from agent.dicom.uids import UidFactory
from agent.exam import Exam, Patient, Procedure, open_exam
from agent.spool import Spool, SpooledInstance
from hardware.base import ScanRequest, SeriesEnd, SeriesStart, SliceReady
from hardware.mock import MockDriver

EQUIPMENT = Equipment(
    manufacturer="Example Medical",
    model_name="CT-1",
    device_serial_number="SN0001",
    station_name="CT1",
    institution_name="General Hospital",
    software_versions="1.0",
)
UIDS = UidFactory("1.2.826.0.1.3680043.10.999")


def exam(destinations: Sequence[str] = ("PACS",)) -> Exam:
    return open_exam(
        Patient(name="DOE^JANE", id="PID-1", birth_date=date(1980, 1, 2), sex="F"),
        Procedure(accession_number="ACC-1", requested_procedure_description="CT CHEST"),
        UIDS,
        operator="SMITH^ANN",
        destinations=tuple(destinations),
        now=datetime.now(UTC).astimezone(),
    )


@dataclass
class Acquired:
    exam: Exam
    series: list[Series]
    slices: list[SliceReady]
    datasets: list[Dataset]


def acquire(
    assembler: Assembler,
    the_exam: Exam,
    *,
    series: int = 2,
    slices: int = 6,
    contrast_agent: str | None = None,
) -> Acquired:
    """Run the mock scanner for `series` x `slices` and assemble every slice."""
    driver = MockDriver(contrast_agent=contrast_agent)
    driver.open()
    try:
        driver.request_scan(ScanRequest(the_exam.token, series, slices))
        out = Acquired(the_exam, [], [], [])
        by_key: dict[str, Series] = {}
        ended = 0
        while ended < series:
            event = driver.read_event(10.0)
            assert event is not None, "the mock scanner stalled"
            if isinstance(event, SeriesStart):
                by_key[event.series_key] = assembler.open_series(the_exam, event)
                out.series.append(by_key[event.series_key])
            elif isinstance(event, SliceReady):
                out.slices.append(event)
                out.datasets.append(assembler.image(by_key[event.series_key], event))
                driver.release(event)
            elif isinstance(event, SeriesEnd):
                ended += 1
        return out
    finally:
        driver.close()


def ct_images(count: int, the_exam: Exam | None = None) -> list[Dataset]:
    """`count` CT Image instances of one series from the mock scanner."""
    assembler = Assembler(EQUIPMENT, UIDS)
    return acquire(assembler, the_exam or exam(), series=1, slices=count).datasets


def spooled(
    root: Path, datasets: Sequence[Dataset], destinations: Sequence[str] = ("PACS",)
) -> tuple[Spool, list[SpooledInstance]]:
    spool = Spool(root)
    return spool, [
        spool.accept(instance_record(ds), files.encode(ds), destinations) for ds in datasets
    ]
