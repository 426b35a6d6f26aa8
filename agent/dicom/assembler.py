"""Exam + series start + slice -> a complete CT Image Storage instance (no I/O).

`Assembler.image` builds the instance as a Dataset from the IOD modules; `Assembler.file`
gives the same instance as Part 10 bytes, encoding per slice only what changes (see there).

Every date and time of a series' instances is written in one fixed UTC offset, the console's
own at the start of the exam (or that of the `tz` given), and Timezone Offset From UTC says
which: an exam that spans a daylight-saving change stays consistent.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone, tzinfo

import numpy as np
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from agent.config.model import Equipment
from agent.dicom import files, modules
from agent.dicom.template import FileTemplate, Value
from agent.dicom.uids import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    UUID_ROOT,
    UidFactory,
    is_valid_uid,
)
from agent.exam import Exam
from agent.spool import InstanceRecord
from hardware.base import SeriesStart, SliceReady

__all__ = [
    "IMPLEMENTATION_VERSION_NAME",
    "PER_SLICE",
    "Assembler",
    "ImageFile",
    "Series",
    "TokenMismatch",
]

log = logging.getLogger(__name__)


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return tag


_ACQUISITION_DATE = _tag("AcquisitionDate")
_ACQUISITION_TIME = _tag("AcquisitionTime")
_ACQUISITION_DATETIME = _tag("AcquisitionDateTime")
_CONTENT_DATE = _tag("ContentDate")
_CONTENT_TIME = _tag("ContentTime")
_CREATION_DATE = _tag("InstanceCreationDate")
_CREATION_TIME = _tag("InstanceCreationTime")
_SOP_INSTANCE_UID = _tag("SOPInstanceUID")
_MEDIA_SOP_INSTANCE_UID = _tag("MediaStorageSOPInstanceUID")
_INSTANCE_NUMBER = _tag("InstanceNumber")
_IMAGE_POSITION = _tag("ImagePositionPatient")
_SLICE_LOCATION = _tag("SliceLocation")
_PIXEL_DATA = _tag("PixelData")

# What differs from one slice of a series to the next (all else is the series' own): what the
# modules make of a slice's index, position, acquisition time and pixels, its SOP Instance UID
# and the time it is made. Checked for each series against the full path (Assembler._verify).
PER_SLICE = frozenset(
    {
        _ACQUISITION_DATE,
        _ACQUISITION_TIME,
        _ACQUISITION_DATETIME,
        _CONTENT_DATE,
        _CONTENT_TIME,
        _CREATION_DATE,
        _CREATION_TIME,
        _SOP_INSTANCE_UID,
        _MEDIA_SOP_INSTANCE_UID,
        _INSTANCE_NUMBER,
        _IMAGE_POSITION,
        _SLICE_LOCATION,
        _PIXEL_DATA,
    }
)
_VRS = {tag: dictionary_VR(tag) for tag in PER_SLICE}
_TEMPLATES_KEPT = 8  # series whose template is kept (series interleave rarely beyond 2)


class TokenMismatch(ValueError):
    """A series acquired under another exam's token was about to be filed under this exam."""


@dataclass(frozen=True)
class ImageFile:
    """One instance as a Part 10 file, and what the spool indexes of it."""

    parts: tuple[bytes | memoryview, ...] = field(repr=False)  # the file's bytes, in pieces
    record: InstanceRecord  # its SOP Instance UID and the rest, with the series' exam token

    @property
    def data(self) -> bytes:
        """The file in one piece (a copy: the spool writes `parts` as they are)."""
        return b"".join(self.parts)


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
        # series UID -> (the series, its template; None: the full path for that series)
        self._templates: OrderedDict[str, tuple[Series, FileTemplate | None]] = OrderedDict()
        self._templates_lock = threading.Lock()

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
        _check_slice(series, slice_)
        return self._dataset(series, slice_, self.uids.new(), self._created(series))

    def file(self, series: Series, slice_: SliceReady) -> ImageFile:
        """The instance of one slice as a Part 10 file: the bytes `files.encode` writes for
        `image(series, slice_)`, validated the same way, but quicker.

        The first slice of a series (in this process) is assembled and encoded in full; its
        file becomes the series' template, checked against the full path on a made-up second
        slice. Each later slice encodes and validates only what changes from slice to slice
        (`PER_SLICE`). A slice the quick path cannot take (e.g. pixels that do not fit the
        series) goes the full way, which raises what the full path raises.
        """
        _check_slice(series, slice_)
        known, template = self._template(series)
        if template is not None:
            uid, created = self.uids.new(), self._created(series)
            try:
                values = self._values(template, series, slice_, uid, created)
            except ValueError:  # not an ordinary slice: the full path says what is wrong
                pass
            else:
                record = InstanceRecord(
                    sop_instance_uid=uid,
                    sop_class_uid=CTImageStorage,
                    study_instance_uid=series.exam.study_instance_uid,
                    series_instance_uid=series.series_instance_uid,
                    transfer_syntax_uid=template.transfer_syntax_uid,
                    instance_number=slice_.index + 1,
                    exam_token=series.exam.token,
                )
                return ImageFile(tuple(template.parts(values)), record)
        ds = self.image(series, slice_)
        data = files.encode(ds)
        if not known:
            self._learn(series, slice_, ds, data)
        return ImageFile((data,), files.instance_record(ds, series.exam.token))

    # -- the full path -------------------------------------------------------------------------

    def _created(self, series: Series) -> datetime:
        """Instance Creation Date/Time: now, in the series' zone."""
        return _aware(self._clock(), "the clock").astimezone(series.tz)

    def _dataset(
        self, series: Series, slice_: SliceReady, sop_instance_uid: str, created: datetime
    ) -> Dataset:
        start, exam = series.start, series.exam
        tz = series.tz
        acquired = _aware(slice_.acquisition_time, "SliceReady.acquisition_time").astimezone(tz)
        study_started = exam.started.astimezone(tz)

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
        modules.sop_common(ds, sop_instance_uid=sop_instance_uid, created=created)

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
        meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
        ds.file_meta = meta
        return ds

    # -- the quick path ------------------------------------------------------------------------

    def _values(
        self,
        template: FileTemplate,
        series: Series,
        slice_: SliceReady,
        uid: str,
        created: datetime,
    ) -> dict[int, Value]:
        """The values of the template's open elements, as `_dataset` makes them (modules' own
        formatting), each checked against its VR. ValueError when the slice is not an
        ordinary one."""
        start = series.start
        pixels = slice_.pixels
        if pixels.shape != (start.rows, start.columns) or pixels.dtype != np.uint16:
            raise ValueError("pixels that do not fit the series")  # image_pixel says how
        acquired = _aware(slice_.acquisition_time, "SliceReady.acquisition_time")
        acquired = acquired.astimezone(series.tz)
        position = slice_.image_position
        along = modules.normal(start.image_orientation)
        location = sum(p * n for p, n in zip(position, along, strict=True))  # as image_plane
        text: dict[int, str | list[str]] = {
            _ACQUISITION_DATE: modules.da(acquired),
            _ACQUISITION_TIME: modules.tm(acquired),
            _ACQUISITION_DATETIME: modules.dt(acquired),
            _CONTENT_DATE: modules.da(acquired),
            _CONTENT_TIME: modules.tm(acquired),
            _CREATION_DATE: modules.da(created),
            _CREATION_TIME: modules.tm(created),
            _SOP_INSTANCE_UID: uid,
            _MEDIA_SOP_INSTANCE_UID: uid,
            _INSTANCE_NUMBER: str(slice_.index + 1),
            _IMAGE_POSITION: [str(modules.ds_value(v)) for v in position],
            _SLICE_LOCATION: str(modules.ds_value(location)),
        }
        values: dict[int, Value] = {}
        for tag in template.tags:
            if tag == _PIXEL_DATA:
                values[tag] = np.ascontiguousarray(pixels, dtype="<u2").data.cast("B")
            else:
                files.check_values(tag, _VRS[tag], text[tag])
                values[tag] = text[tag]
        return values

    def _template(self, series: Series) -> tuple[bool, FileTemplate | None]:
        """(whether `series` was seen, its template: None for the full path)."""
        with self._templates_lock:
            found = self._templates.get(series.series_instance_uid)
        if found is None or (found[0] is not series and found[0] != series):
            return False, None
        return True, found[1]

    def _learn(self, series: Series, slice_: SliceReady, ds: Dataset, data: bytes) -> None:
        """Make `data` (the file of `ds`, of `slice_`) the template of `series`, once it gives
        the same bytes as the full path for a made-up next slice that differs in every input
        a slice has; a series whose files it cannot give keeps the full path."""
        template: FileTemplate | None = None
        try:
            template = FileTemplate(ds, data, PER_SLICE)
            self._verify(template, series, slice_)
        except (ValueError, TypeError) as e:  # TemplateUnsupported is a ValueError
            log.warning(
                "series %s is encoded in full, slice by slice: %s",
                series.series_instance_uid,
                type(e).__name__ if not isinstance(e, TemplateMismatch) else e,
            )
            template = None
        with self._templates_lock:
            self._templates[series.series_instance_uid] = (series, template)
            while len(self._templates) > _TEMPLATES_KEPT:
                self._templates.pop(next(iter(self._templates)))

    def _verify(self, template: FileTemplate, series: Series, slice_: SliceReady) -> None:
        shift = timedelta(seconds=1.25)
        probe = replace(
            slice_,
            index=slice_.index + 1,
            image_position=(
                slice_.image_position[0] + 0.5,
                slice_.image_position[1] - 0.25,
                slice_.image_position[2] + 1.125,
            ),
            table_position_mm=slice_.table_position_mm + 1.0,
            acquisition_time=slice_.acquisition_time + shift,
            pixels=np.bitwise_xor(slice_.pixels, np.uint16(1)),
        )
        uid, created = self.uids.new(), self._created(series) + shift
        expected = files.encode(self._dataset(series, probe, uid, created))
        got = template.fill(self._values(template, series, probe, uid, created))
        if got != expected:
            at = next(
                (i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b),
                min(len(got), len(expected)),
            )
            raise TemplateMismatch(
                f"its per-slice bytes differ from the full encoding at offset {at}"
                f" ({len(got)} vs {len(expected)} bytes): see PER_SLICE"
            )


class TemplateMismatch(ValueError):
    """The quick path would not give the full path's bytes for a series."""


def _check_slice(series: Series, slice_: SliceReady) -> None:
    start = series.start
    if slice_.series_key != start.series_key:
        raise ValueError(
            f"slice of series {slice_.series_key!r} given to series {start.series_key!r}"
        )
    if slice_.index < 0:
        raise ValueError(f"slice index must be >= 0, got {slice_.index}")
