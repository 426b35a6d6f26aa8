"""Exam + series start + slice -> a complete CT Image Storage instance (no I/O).

Every date and time of a series' instances is written in one fixed UTC offset, the console's
own at the start of the exam (or that of the `tz` given), and Timezone Offset From UTC says
which: an exam that spans a daylight-saving change stays consistent.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timezone, tzinfo

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from agent.config.model import Equipment
from agent.dicom import modules
from agent.dicom.uids import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    UUID_ROOT,
    UidFactory,
    is_valid_uid,
)
from agent.exam import Exam
from hardware.base import SeriesStart, SliceReady

__all__ = ["IMPLEMENTATION_VERSION_NAME", "Assembler", "Series", "TokenMismatch"]


class TokenMismatch(ValueError):
    """A series acquired under another exam's token was about to be filed under this exam."""


@dataclass(frozen=True)
class Series:
    """An open series of an exam: what every one of its instances shares."""

    series_instance_uid: str
    series_number: int
    exam: Exam
    start: SeriesStart
    started: datetime  # Series Date/Time, in `tz`
    tz: timezone  # the fixed UTC offset all dates and times of the series are written in
    performed_procedure_step_uid: str | None = None

    @property
    def series_key(self) -> str:
        return self.start.series_key


def _aware(t: datetime, what: str) -> datetime:
    if t.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {t!r}")
    return t


def frame_of_reference_uid(exam: Exam, start: SeriesStart) -> str:
    """One Frame of Reference per exam, and a new one each time the hardware says the patient
    moved (its frame_of_reference_id changed): derived, so every series of the same position
    gets the same UID, across restarts, with nothing to store."""
    if start.frame_of_reference_id == 0:
        return exam.frame_of_reference_uid
    name = f"{exam.frame_of_reference_uid}/{start.frame_of_reference_id}"
    return f"{UUID_ROOT}.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


class Assembler:
    """Builds CT Image instances. `tz`: the zone to write times in (default: the console's)."""

    def __init__(
        self,
        equipment: Equipment,
        uids: UidFactory,
        *,
        tz: tzinfo | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.equipment = equipment
        self.uids = uids
        self._tz = tz
        self._clock = clock or (lambda: datetime.now(UTC))

    def open_series(
        self,
        exam: Exam,
        start: SeriesStart,
        *,
        series_number: int | None = None,
        performed_procedure_step_uid: str | None = None,
        reassigned: bool = False,
        series_instance_uid: str | None = None,
    ) -> Series:
        """A new series of `exam`, with its own Series Instance UID.

        `series_number` overrides the hardware's (e.g. to keep numbers unique in the exam);
        `performed_procedure_step_uid` (the MPPS SOP Instance UID; default the exam's) is
        referenced from every image.
        A series whose token is not the exam's raises `TokenMismatch`, unless a person assigned
        it (`reassigned=True`, SPEC §3); a held series keeps the `series_instance_uid` it was
        shown under. Inconsistent geometry or invalid UIDs raise ValueError.
        """
        # the exam's step by default: every image names the MPPS that reports it (IHE SWF)
        performed_procedure_step_uid = (
            performed_procedure_step_uid or exam.performed_procedure_step_uid or None
        )
        if start.token != exam.token and not reassigned:
            raise TokenMismatch(
                f"series {start.series_key!r} was acquired under token {start.token!r}, "
                f"not under this exam's {exam.token!r}: it is not filed here"
            )
        for name, uid in (
            ("Study Instance UID", exam.study_instance_uid),
            ("Frame of Reference UID", exam.frame_of_reference_uid),
            ("Performed Procedure Step UID", performed_procedure_step_uid),
        ):
            if uid is not None and not is_valid_uid(uid):
                raise ValueError(f"the exam's {name} {uid!r} is not a valid UID")
        problem = modules.orientation_problem(start.patient_position, start.image_orientation)
        if problem:
            raise ValueError(f"series {start.series_key!r}: {problem}")
        local = _aware(exam.started, "Exam.started")
        local = local.astimezone(self._tz) if self._tz else local.astimezone()
        offset = local.utcoffset()
        assert offset is not None  # aware, checked above
        tz = timezone(offset)
        return Series(
            series_instance_uid=series_instance_uid or self.uids.new(),
            series_number=start.series_number if series_number is None else series_number,
            exam=exam,
            start=start,
            started=_aware(self._clock(), "the clock").astimezone(tz),
            tz=tz,
            performed_procedure_step_uid=performed_procedure_step_uid,
        )

    def image(self, series: Series, slice_: SliceReady) -> Dataset:
        """The CT Image Storage instance of one slice, with its File Meta Information."""
        start, exam = series.start, series.exam
        if slice_.series_key != start.series_key:
            raise ValueError(
                f"slice of series {slice_.series_key!r} given to series {start.series_key!r}"
            )
        if slice_.index < 0:
            raise ValueError(f"slice index must be >= 0, got {slice_.index}")
        tz = series.tz
        acquired = _aware(slice_.acquisition_time, "SliceReady.acquisition_time").astimezone(tz)
        study_started = exam.started.astimezone(tz)
        sop_instance_uid = self.uids.new()

        ds = Dataset()
        modules.patient(ds, exam.patient)
        modules.general_study(ds, exam, study_started)
        modules.patient_study(ds, exam.patient, study_started.date())
        modules.general_series(
            ds,
            start,
            exam,
            series_instance_uid=series.series_instance_uid,
            series_number=series.series_number,
            started=series.started,
            performed_procedure_step_uid=series.performed_procedure_step_uid,
        )
        modules.frame_of_reference(ds, frame_of_reference_uid(exam, start))
        modules.general_equipment(ds, self.equipment)
        modules.general_acquisition(ds, acquired)
        modules.general_image(
            ds, instance_number=slice_.index + 1, content=acquired, simulated=start.simulated
        )
        modules.image_plane(ds, start, slice_.image_position)
        modules.image_pixel(ds, start, slice_.pixels)
        if start.contrast_agent:
            modules.contrast_bolus(ds, start.contrast_agent)
        modules.ct_image(ds, start)
        modules.voi_lut(ds, start.kernel)
        modules.sop_common(
            ds,
            sop_instance_uid=sop_instance_uid,
            created=_aware(self._clock(), "the clock").astimezone(tz),
        )

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        ds.file_meta = meta
        return ds
