"""After the spool's index was found damaged and rebuilt (Spool.rebuilt): every file the spool
held is an orphan; each one that reads as a DICOM instance is accepted again, under the exam
whose study it belongs to when the exam book knows it (its destinations, its token), else for
the default destinations. Its deliveries start afresh: an archive may get some images twice,
which it keeps once; nothing accepted is lost. A file that cannot be read stays in orphans/
with its alarm (quarantined)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from agent.config import Config
from agent.exam import Exam
from agent.exam_book import ExamBook
from agent.spool import InstanceRecord, Spool

log = logging.getLogger(__name__)


def adopt_orphans(spool: Spool, book: ExamBook, cfg: Config) -> tuple[int, int]:
    """(adopted, left) of the orphans the rebuild made."""
    by_study = {e.exam.study_instance_uid: e.exam for e in book.entries()}
    defaults = [d.name for d in cfg.default_destinations]
    adopted = left = 0
    for orphan in spool.recovery.orphans_moved:
        record = _record(orphan, by_study)
        if record is None:
            left += 1
            continue
        exam = by_study.get(record.study_instance_uid)
        spool.adopt(orphan, record, list(exam.destinations) if exam else defaults)
        adopted += 1
    log.error("spool rebuilt: %d instance(s) accepted again, %d left in orphans", adopted, left)
    return adopted, left


def _record(path: Path, by_study: Mapping[str, Exam]) -> InstanceRecord | None:
    try:
        ds = dcmread(path)
        _check_pixels(ds)  # a file cut short (no index says its size any more) is not taken
        study = str(ds.StudyInstanceUID)
        exam = by_study.get(study)
        return InstanceRecord(
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            study_instance_uid=study,
            series_instance_uid=str(ds.SeriesInstanceUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            instance_number=int(ds.get("InstanceNumber", 0) or 0),
            exam_token=exam.token if exam else None,
        )
    except Exception as e:  # not a readable instance: it stays quarantined
        log.error("spool rebuild: %s cannot be read (%s): left in orphans", path.name, e)
        return None


def _check_pixels(ds: Dataset) -> None:
    """ValueError when the pixel data is shorter than the image it describes."""
    if "PixelData" not in ds:
        return
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        ds.pixel_array  # decodes every frame, or raises  # noqa: B018
        return
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    expected = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8 * frames
    if len(ds.PixelData) < expected:
        raise ValueError(f"pixel data {len(ds.PixelData)} bytes, the image needs {expected}")
