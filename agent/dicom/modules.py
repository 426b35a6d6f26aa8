"""The modules of the CT Image IOD (PS3.3 §A.3), one function each: typed inputs in, a Dataset
filled. Pure (no I/O, no clock): every date and time is passed in, already in the time zone
that the instance's Timezone Offset From UTC states.

Identifiers (patient ID, accession number, UIDs) are copied as given, never shortened: a value
too long for its VR is refused when the instance is encoded. Descriptive text is cut to fit.

An exam started from a worklist item carries the item's values as encoded (`Encoded`): they are
written byte for byte, under the item's Specific Character Set, and our own text (equipment,
operator, series description) is fitted into that set (docs/worklist.md, "Character sets").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date, datetime

import numpy as np
import numpy.typing as npt
from pydicom.charset import convert_encodings
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import CTImageStorage
from pydicom.valuerep import DSfloat, PersonName

from agent.config.model import Equipment
from agent.exam import Encoded, Exam, Patient
from agent.worklist import charset
from hardware.base import Orientation, SeriesStart, Vector3

MPPS_SOP_CLASS_UID = "1.2.840.10008.3.1.2.3.3"
SIMULATED = "SIMULATED"
SIMULATED_COMMENT = "SIMULATED image from simulated acquisition hardware: not a patient image"

# (center, width, explanation) per kind of reconstruction kernel
WINDOW_SOFT_TISSUE = (40.0, 400.0, "SOFT TISSUE")
WINDOW_LUNG = (-600.0, 1500.0, "LUNG")
WINDOW_BONE = (400.0, 1800.0, "BONE")

# canonical axial row and column directions for each Patient Position (PS3.3 §C.7.6.2.1.1)
_AXIAL_ROW_COL: dict[str, tuple[Vector3, Vector3]] = {
    "HFS": ((1, 0, 0), (0, 1, 0)),
    "HFP": ((-1, 0, 0), (0, -1, 0)),
    "FFS": ((-1, 0, 0), (0, 1, 0)),
    "FFP": ((1, 0, 0), (0, -1, 0)),
    "HFDR": ((0, 1, 0), (-1, 0, 0)),
    "HFDL": ((0, -1, 0), (1, 0, 0)),
    "FFDR": ((0, -1, 0), (-1, 0, 0)),
    "FFDL": ((0, 1, 0), (1, 0, 0)),
}
_TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"}
_CHARSET_VRS = {"LO", "LT", "PN", "SH", "ST", "UC", "UT"}  # those that use the character set
UNSCHEDULED_COMMENT = "UNSCHEDULED: patient registered by hand, no worklist item"
UNIDENTIFIED_COMMENT = "UNSCHEDULED: unidentified emergency patient, generated identifiers"


# -- value helpers -------------------------------------------------------------------------------


def ds_value(x: float) -> DSfloat:
    """A Decimal String that fits in 16 characters."""
    return DSfloat(x, auto_format=True)


def da(d: date | datetime) -> str:
    return d.strftime("%Y%m%d")


def tm(t: datetime) -> str:
    return t.strftime("%H%M%S.%f")


def utc_offset(t: datetime) -> str:
    """Timezone Offset From UTC of an aware datetime, "+HHMM" or "-HHMM"."""
    offset = t.utcoffset()
    if offset is None:
        raise ValueError(f"a timezone-aware datetime is needed, got {t!r}")
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


def dt(t: datetime) -> str:
    return t.strftime("%Y%m%d%H%M%S.%f") + utc_offset(t)


def _text(s: str, limit: int = 64) -> str:
    return s[:limit].rstrip()


def age(birth: date, on: date) -> str:
    """Patient's Age (AS) on a given day: nnnY, or nnnM / nnnW / nnnD for the very young."""
    months = (on.year - birth.year) * 12 + on.month - birth.month - (on.day < birth.day)
    if months >= 24:
        return f"{min(months // 12, 999):03d}Y"
    if months >= 1:
        return f"{months:03d}M"
    days = (on - birth).days
    return f"{days // 7:03d}W" if days >= 28 else f"{days:03d}D"


def window_for_kernel(kernel: str) -> tuple[float, float, str]:
    """The window (center, width, explanation) that suits a reconstruction kernel."""
    k = kernel.upper()
    if "LUNG" in k:
        return WINDOW_LUNG
    if any(word in k for word in ("BONE", "EDGE", "SHARP")):
        return WINDOW_BONE
    return WINDOW_SOFT_TISSUE  # STANDARD, SOFT, DETAIL and anything not known


def normal(orientation: Orientation) -> Vector3:
    """The slice normal: row direction x column direction."""
    r, c = orientation[:3], orientation[3:]
    return (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def orientation_problem(patient_position: str, orientation: Orientation) -> str | None:
    """Why `orientation` does not fit `patient_position`, or None when it does.

    The direction cosines must be unit and orthogonal; for a known position the row and column
    directions must be within 45 degrees of the canonical axial ones (tilt and oblique
    reconstructions pass; a left-right or front-back flip does not).
    """
    r, c = orientation[:3], orientation[3:]
    if abs(_dot(r, r) - 1) > 1e-3 or abs(_dot(c, c) - 1) > 1e-3 or abs(_dot(r, c)) > 1e-3:
        return f"Image Orientation {orientation} is not two orthogonal unit vectors"
    canonical = _AXIAL_ROW_COL.get(patient_position)
    if canonical is None:
        return None
    limit = math.cos(math.radians(45))
    if _dot(r, canonical[0]) < limit or _dot(c, canonical[1]) < limit:
        return (
            f"Image Orientation {orientation} does not fit Patient Position {patient_position} "
            f"(expected rows along {canonical[0]} and columns along {canonical[1]})"
        )
    return None


def put_encoded(ds: Dataset, e: Encoded, terms: Sequence[str]) -> None:
    """One worklist value into `ds` as encoded: text in the character set byte for byte (a
    Person Name keeps its original bytes), other VRs (dates, codes, numbers) as their text."""
    if e.vr == "PN":
        ds[e.tag] = DataElement(e.tag, "PN", PersonName(e.value, convert_encodings(list(terms))))
    elif e.vr in _CHARSET_VRS:
        ds[e.tag] = DataElement(e.tag, e.vr, _split(e.value, terms))
    elif e.vr == "US":
        ds[e.tag] = DataElement(e.tag, "US", int.from_bytes(e.value[:2], "little"))
    else:
        ds[e.tag] = DataElement(e.tag, e.vr, e.value.decode("ascii").strip(" \x00"))


def _split(value: bytes, terms: Sequence[str]) -> bytes | list[bytes]:
    """Several values as a list, so that each is checked against its VR; not in character
    sets whose multi-byte characters may hold the backslash byte (kept whole there)."""
    if b"\\" not in value or any(t not in charset.SPLIT_SAFE for t in terms):
        return value
    return value.split(b"\\")


def fit_text(ds: Dataset, terms: Sequence[str]) -> list[str]:
    """Our own text values (not those copied as encoded) with each character `terms` cannot
    hold replaced by "?"; the keywords of the values that changed."""
    changed = []
    for elem in ds.iterall():
        if elem.VR not in _CHARSET_VRS:
            continue
        values = list(elem.value) if isinstance(elem.value, MultiValue) else [elem.value]
        fitted = [_fit(v, terms) for v in values]
        if fitted != values:
            elem.value = fitted if isinstance(elem.value, MultiValue) else fitted[0]
            changed.append(elem.keyword or str(elem.tag))
    return changed


def _fit(value: object, terms: Sequence[str]) -> object:
    if isinstance(value, PersonName) and value.original_string is None:
        text = str(value)
        return value if charset.fit(text, terms) == text else charset.fit(text, terms)
    if isinstance(value, str):
        return charset.fit(value, terms)
    return value  # bytes, or a name with its original bytes: copied as encoded


# -- the modules ---------------------------------------------------------------------------------


def patient(ds: Dataset, p: Patient) -> None:
    ds.PatientName = p.name
    ds.PatientID = p.id
    if p.issuer_of_id:
        ds.IssuerOfPatientID = p.issuer_of_id
    ds.PatientBirthDate = da(p.birth_date) if p.birth_date else ""
    ds.PatientSex = p.sex if p.sex in ("M", "F", "O") else ""  # the defined terms; else unknown


def general_study(ds: Dataset, exam: Exam, started: datetime) -> None:
    """Also, for an exam from the worklist: the item's Specific Character Set, and its patient
    and study values as encoded, in place of the decoded ones (call after `patient`)."""
    proc = exam.procedure
    ds.StudyInstanceUID = exam.study_instance_uid
    ds.StudyDate = da(started)
    ds.StudyTime = tm(started)
    ds.ReferringPhysicianName = proc.referring_physician
    ds.StudyID = exam.study_id
    ds.AccessionNumber = proc.accession_number
    if proc.requested_procedure_description:
        ds.StudyDescription = _text(proc.requested_procedure_description)
    if proc.scheduled is not None:
        terms = proc.scheduled.character_set
        if terms:
            ds.SpecificCharacterSet = list(terms) if len(terms) > 1 else terms[0]
        for e in (*exam.patient.encoded, *proc.scheduled.study):
            put_encoded(ds, e, terms)
        if proc.scheduled.diagnosis_codes:  # Patient Study, with its description above
            ds.AdmittingDiagnosesCodeSequence = code_items(proc.scheduled.diagnosis_codes, terms)


def patient_study(ds: Dataset, p: Patient, study_date: date) -> None:
    if p.birth_date and p.birth_date <= study_date:
        ds.PatientAge = age(p.birth_date, study_date)
    if p.size_m:
        ds.PatientSize = p.size_m
    if p.weight_kg:
        ds.PatientWeight = p.weight_kg


def code_items(codes: Sequence[Sequence[Encoded]], terms: Sequence[str]) -> list[Dataset]:
    """Code Sequence items from a worklist item's codes, as encoded."""
    items = []
    for code in codes:
        item = Dataset()
        for e in code:
            put_encoded(item, e, terms)
        items.append(item)
    return items


def procedure_codes(exam: Exam) -> list[Dataset]:
    """What was performed is what was requested: the worklist item's Requested Procedure
    Code Sequence (the dose report's Performed Procedure Code Sequence, the MPPS's Procedure
    Code Sequence); none for an exam registered by hand."""
    scheduled = exam.procedure.scheduled
    if scheduled is None:
        return []
    return code_items(scheduled.procedure_codes, scheduled.character_set)


def general_series(
    ds: Dataset,
    start: SeriesStart,
    exam: Exam,
    *,
    series_instance_uid: str,
    series_number: int,
    started: datetime,
    performed_procedure_step_uid: str | None = None,
) -> None:
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = series_number
    ds.SeriesDate = da(started)
    ds.SeriesTime = tm(started)
    description = start.description
    if start.simulated and SIMULATED not in description.upper():
        description = f"{SIMULATED} {description}".rstrip()
    ds.SeriesDescription = _text(description)
    if start.protocol_name:
        ds.ProtocolName = _text(start.protocol_name)
    if exam.operator:
        ds.OperatorsName = exam.operator
    if start.body_part:
        ds.BodyPartExamined = start.body_part
    ds.PatientPosition = start.patient_position
    proc = exam.procedure
    if not proc.unscheduled:
        ds.RequestAttributesSequence = [request_attributes(exam)]
    else:  # IHE SWF: unscheduled images say so, and have no request
        ds.CommentsOnThePerformedProcedureStep = (
            UNIDENTIFIED_COMMENT if proc.unidentified else UNSCHEDULED_COMMENT
        )
    if performed_procedure_step_uid:
        ref = Dataset()
        ref.ReferencedSOPClassUID = MPPS_SOP_CLASS_UID
        ref.ReferencedSOPInstanceUID = performed_procedure_step_uid
        ds.ReferencedPerformedProcedureStepSequence = [ref]


def request_attributes(exam: Exam) -> Dataset:
    """The Request Attributes Sequence item: only what the worklist gave, as encoded (or, for
    a scheduled procedure given without its encoded values, as decoded)."""
    proc = exam.procedure
    item = Dataset()
    if proc.scheduled is None:
        for keyword, value in (
            ("RequestedProcedureID", proc.requested_procedure_id),
            ("AccessionNumber", proc.accession_number),
            ("RequestedProcedureDescription", _text(proc.requested_procedure_description)),
            ("ScheduledProcedureStepID", proc.scheduled_procedure_step_id),
        ):
            if value:
                setattr(item, keyword, value)
        return item
    terms = proc.scheduled.character_set
    for e in proc.scheduled.request:
        put_encoded(item, e, terms)
    if proc.study_instance_uid:
        item.StudyInstanceUID = proc.study_instance_uid
    codes = code_items(proc.scheduled.protocol_codes, terms)
    if codes:
        item.ScheduledProtocolCodeSequence = codes
    reasons = code_items(proc.scheduled.reason_codes, terms)
    if reasons:
        item.ReasonForRequestedProcedureCodeSequence = reasons
    return item


def frame_of_reference(ds: Dataset, frame_of_reference_uid: str) -> None:
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.PositionReferenceIndicator = ""


def general_equipment(ds: Dataset, eq: Equipment) -> None:
    ds.Manufacturer = eq.manufacturer
    ds.InstitutionName = eq.institution_name
    if eq.institution_address:
        ds.InstitutionAddress = eq.institution_address
    ds.StationName = eq.station_name
    if eq.department_name:
        ds.InstitutionalDepartmentName = eq.department_name
    ds.ManufacturerModelName = eq.model_name
    ds.DeviceSerialNumber = eq.device_serial_number
    ds.SoftwareVersions = eq.software_versions


def general_acquisition(ds: Dataset, acquired: datetime, acquisition_number: int = 1) -> None:
    ds.AcquisitionNumber = acquisition_number
    ds.AcquisitionDate = da(acquired)
    ds.AcquisitionTime = tm(acquired)
    ds.AcquisitionDateTime = dt(acquired)


def general_image(ds: Dataset, *, instance_number: int, content: datetime, simulated: bool) -> None:
    ds.InstanceNumber = instance_number
    ds.ContentDate = da(content)
    ds.ContentTime = tm(content)
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    if simulated:
        ds.ImageComments = SIMULATED_COMMENT


def image_plane(ds: Dataset, start: SeriesStart, position: Vector3) -> None:
    ds.PixelSpacing = [ds_value(v) for v in start.pixel_spacing_mm]
    ds.ImageOrientationPatient = [ds_value(v) for v in start.image_orientation]
    ds.ImagePositionPatient = [ds_value(v) for v in position]
    ds.SliceThickness = ds_value(start.slice_thickness_mm)
    ds.SliceLocation = ds_value(_dot(position, normal(start.image_orientation)))


def image_pixel(ds: Dataset, start: SeriesStart, pixels: npt.NDArray[np.uint16]) -> None:
    """Unsigned 16-bit stored values, little endian, as the hardware gave them."""
    if pixels.shape != (start.rows, start.columns):
        raise ValueError(
            f"slice pixels are {pixels.shape}, the series start says {start.rows} x {start.columns}"
        )
    if pixels.dtype != np.uint16:
        raise ValueError(f"slice pixels must be unsigned 16-bit stored values, got {pixels.dtype}")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = start.rows
    ds.Columns = start.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.add_new(0x7FE00010, "OW", np.ascontiguousarray(pixels, dtype="<u2").tobytes())


def contrast_bolus(ds: Dataset, agent: str) -> None:
    """Only for series acquired with contrast."""
    ds.ContrastBolusAgent = _text(agent)


def ct_image(ds: Dataset, start: SeriesStart) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.RescaleIntercept = ds_value(start.rescale_intercept)
    ds.RescaleSlope = ds_value(start.rescale_slope)
    ds.RescaleType = "HU"
    ds.KVP = ds_value(start.kvp)
    ds.ScanOptions = start.scan_options
    ds.DataCollectionDiameter = ds_value(start.data_collection_diameter_mm)
    ds.ReconstructionDiameter = ds_value(start.reconstruction_diameter_mm)
    ds.GantryDetectorTilt = ds_value(start.gantry_tilt_deg)
    ds.TableHeight = ds_value(start.table_height_mm)
    ds.ExposureTime = round(start.exposure_time_ms)
    ds.XRayTubeCurrent = round(start.tube_current_ma)
    ds.Exposure = round(start.exposure_mas)
    ds.ExposureInuAs = round(start.exposure_mas * 1000)
    if start.irradiation_event_uid:  # the acquisition's record in the dose report
        ds.IrradiationEventUID = start.irradiation_event_uid
    ds.ConvolutionKernel = start.kernel
    ds.RevolutionTime = start.revolution_time_s
    ds.SingleCollimationWidth = start.single_collimation_mm
    ds.TotalCollimationWidth = start.total_collimation_mm
    if start.spiral_pitch_factor is not None:
        feed = start.spiral_pitch_factor * start.total_collimation_mm
        ds.SpiralPitchFactor = start.spiral_pitch_factor
        ds.TableFeedPerRotation = round(feed, 6)
        if start.revolution_time_s > 0:
            ds.TableSpeed = round(feed / start.revolution_time_s, 6)


def voi_lut(ds: Dataset, kernel: str) -> None:
    center, width, explanation = window_for_kernel(kernel)
    ds.WindowCenter = ds_value(center)
    ds.WindowWidth = ds_value(width)
    ds.WindowCenterWidthExplanation = explanation


def sop_common(ds: Dataset, *, sop_instance_uid: str, created: datetime) -> None:
    """Call last: Specific Character Set depends on every text value already in `ds`."""
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate = da(created)
    ds.InstanceCreationTime = tm(created)
    ds.TimezoneOffsetFromUTC = utc_offset(created)
    settle_character_set(ds)


def settle_character_set(ds: Dataset) -> None:
    """Call once every text value is in `ds` (an image, an MPPS message): the worklist's
    Specific Character Set, our own text fitted into it; without one, UTF-8 when any text is
    not ASCII (any name survives, and ASCII is UTF-8)."""
    if "SpecificCharacterSet" in ds:
        fit_text(ds, character_set(ds))
    elif any(
        e.VR in _TEXT_VRS and not all(str(v).isascii() for v in _values(e.value))
        for e in ds.iterall()
    ):
        ds.SpecificCharacterSet = "ISO_IR 192"


def character_set(ds: Dataset) -> tuple[str, ...]:
    value = ds.get("SpecificCharacterSet")
    return tuple(str(v) for v in _values(value)) if value else ()


def exam_preview(exam: Exam, equipment: Equipment) -> Dataset:
    """The attributes every image of `exam` shares, as the images will hold them: to check
    an exam's values when it starts rather than at each slice."""
    ds = Dataset()
    patient(ds, exam.patient)
    general_study(ds, exam, exam.started)
    general_equipment(ds, equipment)
    if exam.operator:
        ds.OperatorsName = exam.operator
    if not exam.procedure.unscheduled:
        ds.RequestAttributesSequence = [request_attributes(exam)]
    return ds


def _values(value: object) -> Sequence[object]:
    return value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
