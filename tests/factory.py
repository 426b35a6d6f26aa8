"""Realistic test data made by the real pipeline: mock scanner -> assembler -> spool."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path

from pydicom.dataset import Dataset

from agent.config import Equipment
from agent.dicom import files
from agent.dicom.assembler import Assembler
from agent.dicom.uids import UidFactory
from agent.exam import Exam, Patient, Procedure, open_exam
from agent.spool import InstanceRecord, Spool, SpooledInstance
from hardware.base import ScanRequest, SeriesStart, SliceReady
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


def ct_images(count: int, the_exam: Exam | None = None) -> list[Dataset]:
    """`count` CT Image instances of one series from the mock scanner."""
    the_exam = the_exam or exam()
    driver = MockDriver()
    driver.open()
    try:
        driver.request_scan(ScanRequest(the_exam.token, 1, count))
        assembler = Assembler(EQUIPMENT, UIDS)
        out: list[Dataset] = []
        series = None
        while len(out) < count:
            event = driver.read_event(10)
            assert event is not None, "the mock scanner stalled"
            if isinstance(event, SeriesStart):
                series = assembler.open_series(the_exam, event)
            elif isinstance(event, SliceReady):
                assert series is not None
                out.append(assembler.image(series, event))
        return out
    finally:
        driver.close()


def record(ds: Dataset, token: str | None = None) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        instance_number=int(ds.InstanceNumber),
        exam_token=token,
    )


def spooled(
    root: Path, datasets: Sequence[Dataset], destinations: Sequence[str] = ("PACS",)
) -> tuple[Spool, list[SpooledInstance]]:
    spool = Spool(root)
    return spool, [spool.accept(record(ds), files.encode(ds), destinations) for ds in datasets]
