"""A worklist item (pure): one C-FIND response identifier, read once from its encoded bytes.

The item keeps the bytes it was read from (for the kept list), the values decoded for people
(the CLI, the TUI, the exam's JSON), and the values the images copy exactly as encoded
(`Scheduled`). Nothing in a response can make reading fail: an unreadable identifier raises
`BadItem`; a bad value is dropped with a note; an item whose values cannot go into a valid
image says why in `problems` and cannot start an exam.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset

from agent.dicom import files
from agent.dicom.uids import is_valid_uid
from agent.exam import Encoded, Patient, Procedure, Scheduled
from agent.worklist import charset

TEXT_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"}
_DS = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
PREGNANCY = {1: "not pregnant", 2: "possibly pregnant", 3: "definitely pregnant", 4: "unknown"}


class BadItem(ValueError):
    """A response identifier that cannot be read at all."""


@dataclass(frozen=True)
class WorklistItem:
    patient_name: str
    patient_id: str
    birth_date: date | None
    sex: str
    accession_number: str
    study_instance_uid: str
    requested_procedure_id: str
    requested_procedure_description: str
    referring_physician: str
    scheduled_procedure_step_id: str
    scheduled_procedure_step_description: str
    scheduled_date: date | None
    scheduled_time: str
    modality: str
    station_ae_title: str
    weight_kg: str
    size_m: str
    allergies: tuple[str, ...]
    medical_alerts: tuple[str, ...]
    pregnancy_status: str  # "" when not given
    protocol_codes: tuple[tuple[str, str, str], ...]  # (value, scheme, meaning)
    procedure_codes: tuple[tuple[str, str, str], ...]  # Requested Procedure Code Sequence
    admitting_diagnoses: str  # Admitting Diagnoses Description
    character_set: tuple[str, ...]  # what the values are read in and the images declare
    patient_encoded: tuple[Encoded, ...]  # Patient and Patient Study values, as encoded
    scheduled: Scheduled
    encoded: bytes  # the identifier as received, in `implicit` VR little endian
    implicit: bool
    details: dict[str, str] = field(default_factory=dict)  # the other return keys, decoded
    notes: tuple[str, ...] = ()  # what was wrong and how it was handled
    problems: tuple[str, ...] = ()  # why it cannot start an exam

    @property
    def usable(self) -> bool:
        return not self.problems

    def exam_parts(self) -> tuple[Patient, Procedure]:
        patient = Patient(
            name=self.patient_name,
            id=self.patient_id,
            birth_date=self.birth_date,
            sex=self.sex,
            issuer_of_id=self.details.get("IssuerOfPatientID", ""),
            weight_kg=self.weight_kg,
            size_m=self.size_m,
            encoded=self.patient_encoded,
        )
        procedure = Procedure(
            accession_number=self.accession_number,
            requested_procedure_id=self.requested_procedure_id,
            requested_procedure_description=self.requested_procedure_description,
            scheduled_procedure_step_id=self.scheduled_procedure_step_id,
            scheduled_procedure_step_description=self.scheduled_procedure_step_description,
            referring_physician=self.referring_physician,
            study_instance_uid=self.study_instance_uid or None,
            unscheduled=False,
            scheduled=self.scheduled,
        )
        return patient, procedure

    def to_json(self) -> dict[str, Any]:
        """The documented shape (docs/worklist.md)."""
        return {
            "accession_number": self.accession_number,
            "scheduled_procedure_step_id": self.scheduled_procedure_step_id,
            "scheduled_procedure_step_description": self.scheduled_procedure_step_description,
            "scheduled_date": self.scheduled_date.isoformat() if self.scheduled_date else None,
            "scheduled_time": self.scheduled_time,
            "modality": self.modality,
            "station_ae_title": self.station_ae_title,
            "requested_procedure_id": self.requested_procedure_id,
            "requested_procedure_description": self.requested_procedure_description,
            "study_instance_uid": self.study_instance_uid or None,
            "referring_physician": self.referring_physician,
            "patient_name": self.patient_name,
            "patient_id": self.patient_id,
            "birth_date": self.birth_date.isoformat() if self.birth_date else None,
            "sex": self.sex,
            "weight_kg": self.weight_kg or None,
            "size_m": self.size_m or None,
            "allergies": list(self.allergies),
            "medical_alerts": list(self.medical_alerts),
            "pregnancy_status": self.pregnancy_status or None,
            "protocol_codes": [
                {"value": v, "scheme": s, "meaning": m} for v, s, m in self.protocol_codes
            ],
            "procedure_codes": [
                {"value": v, "scheme": s, "meaning": m} for v, s, m in self.procedure_codes
            ],
            "admitting_diagnoses": self.admitting_diagnoses or None,
            "details": self.details,
            "specific_character_set": list(self.character_set),
            "notes": list(self.notes),
            "problems": list(self.problems),
            "usable": self.usable,
        }


# -- reading ------------------------------------------------------------------------------------

_PATIENT = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientWeight",
    "PatientSize",
    "MedicalAlerts",
    "Allergies",
    "PregnancyStatus",
    "AdmittingDiagnosesDescription",
)
_DETAILS = (
    "IssuerOfPatientID",
    "PatientState",
    "SpecialNeeds",
    "AdmissionID",
    "CurrentPatientLocation",
    "ConfidentialityConstraintOnPatientDataDescription",
    "RequestingPhysician",
    "RequestedProcedurePriority",
    "ScheduledPerformingPhysicianName",
    "ScheduledStationName",
    "ScheduledProcedureStepLocation",
    "PreMedication",
    "RequestedContrastAgent",
    "ScheduledProcedureStepStatus",
    "CommentsOnTheScheduledProcedureStep",
)
_REQUEST = (
    "RequestedProcedureID",
    "AccessionNumber",
    "RequestedProcedureDescription",
    "ScheduledProcedureStepID",
    "ScheduledProcedureStepDescription",
    "ReasonForTheRequestedProcedure",
)
_STUDY = ("StudyInstanceUID", "ReferringPhysicianName")
# optional values the images, the MPPS and the dose report carry when they fit their VR
_OPTIONAL = {
    "AdmittingDiagnosesDescription": "Admitting Diagnoses Description",
    "ReasonForTheRequestedProcedure": "Reason for the Requested Procedure",
}
_CODE = ("CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning")


def _leaf(ds: Dataset, keyword: str) -> Encoded | None:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    elem = ds.get_item(tag)
    if elem is None:
        return None
    value = elem.value if elem.is_raw else None
    if not isinstance(value, bytes):  # never converted by us; defensive
        return None
    return Encoded(tag, dictionary_VR(tag), value)


def _items(ds: Dataset, keyword: str) -> list[Dataset]:
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in ds:
        return []
    value = ds[tag].value
    return [i for i in value if isinstance(i, Dataset)] if value else []


def read(encoded: bytes, implicit: bool) -> Dataset:
    try:
        ds = read_dataset(io.BytesIO(encoded), implicit, True)
    except Exception as e:  # any byte string: pydicom's reader raises what it raises
        raise BadItem(f"unreadable identifier: {type(e).__name__}") from None
    return ds


def parse(encoded: bytes, implicit: bool) -> WorklistItem:
    """One item from its encoded identifier; `BadItem` when it cannot be read at all."""
    try:
        return _parse(read(encoded, implicit), encoded, implicit)
    except BadItem:
        raise
    except Exception as e:  # a malformed element is found only when it is read
        raise BadItem(f"unreadable identifier: {type(e).__name__}") from None


def _parse(ds: Dataset, encoded: bytes, implicit: bool) -> WorklistItem:
    steps = _items(ds, "ScheduledProcedureStepSequence")
    step = steps[0] if steps else Dataset()
    top = {k: e for k in (*_PATIENT, *_REQUEST, *_DETAILS, *_STUDY) if (e := _leaf(ds, k))}
    sps = {k: e for k in (*_DETAILS, *_REQUEST, *_STEP_ONLY) if (e := _leaf(step, k))}
    codes = _codes(step, "ScheduledProtocolCodeSequence")
    procedure_codes = _codes(ds, "RequestedProcedureCodeSequence")
    diagnosis_codes = _codes(ds, "AdmittingDiagnosesCodeSequence")
    reason_codes = _codes(ds, "ReasonForRequestedProcedureCodeSequence")
    texts = [
        (e.value, e.vr)
        for group in (top, sps, *codes, *procedure_codes, *diagnosis_codes, *reason_codes)
        for e in group.values()
        if e.vr in TEXT_VRS
    ]
    declared = charset.terms_of(e.value if (e := _leaf(ds, "SpecificCharacterSet")) else None)
    terms, note = charset.decide(declared, texts)
    notes: list[str] = [note] if note else []
    problems: list[str] = []
    for group in (top, sps):  # optional values: one that does not fit is left out, not the item
        for keyword, name in _OPTIONAL.items():
            if keyword in group and (misfit := _misfit((group[keyword],), terms)):
                del group[keyword]
                notes.append(f"{name} left out, {misfit}")

    def text(group: dict[str, Encoded], keyword: str) -> str:
        e = group.get(keyword)
        if e is None or not e.value:
            return ""
        decoded = charset.decode_text(e.value, terms, e.vr)
        return decoded if decoded is not None else e.value.decode("latin-1").rstrip(" \x00")

    def decoded(group: list[dict[str, Encoded]]) -> tuple[tuple[str, str, str], ...]:
        return tuple(
            (text(c, "CodeValue"), text(c, "CodingSchemeDesignator"), text(c, "CodeMeaning"))
            for c in group
        )

    def complete(group: list[dict[str, Encoded]], name: str) -> list[dict[str, Encoded]]:
        """Only whole codes (value, scheme and meaning: Type 1 where the report copies them)
        whose values fit their VRs: a code that does not is left out, not the item."""
        whole = [
            c for c in group if {"CodeValue", "CodingSchemeDesignator", "CodeMeaning"} <= set(c)
        ]
        if len(whole) < len(group):
            notes.append(f"{name}: {len(group) - len(whole)} incomplete code(s) left out")
        kept = []
        for c in whole:
            if misfit := _misfit(tuple(c.values()), terms):
                notes.append(f"{name}: a code left out, {misfit}")
            else:
                kept.append(c)
        return kept

    def many(keyword: str) -> tuple[str, ...]:
        return tuple(v for v in text(top, keyword).split("\\") if v.strip())

    birth = _date(text(top, "PatientBirthDate"))
    if text(top, "PatientBirthDate") and birth is None:
        notes.append("Patient's Birth Date is not a date: left empty")
    sex = text(top, "PatientSex").strip().upper()
    if sex not in ("", "M", "F", "O"):
        notes.append("Patient's Sex is not M, F or O: left empty")
        sex = ""
    weight, size = text(top, "PatientWeight").strip(), text(top, "PatientSize").strip()
    if weight and not _DS.fullmatch(weight):
        notes.append("Patient's Weight is not a number: left out")
        weight = ""
    if size and not _DS.fullmatch(size):
        notes.append("Patient's Size is not a number: left out")
        size = ""
    pregnancy = _pregnancy(top.get("PregnancyStatus"))
    if top.get("PregnancyStatus") and top["PregnancyStatus"].value and pregnancy is None:
        notes.append("Pregnancy Status is not 1 to 4: left out")
    study_uid = text(top, "StudyInstanceUID").strip()
    if study_uid and not is_valid_uid(study_uid):
        problems.append("its Study Instance UID is not a valid UID")
    patient_id = text(top, "PatientID").strip()
    if not patient_id:
        problems.append("it has no Patient ID")

    procedure_codes = complete(procedure_codes, "Requested Procedure Code Sequence")
    diagnosis_codes = complete(diagnosis_codes, "Admitting Diagnoses Code Sequence")
    reason_codes = complete(reason_codes, "Reason for Requested Procedure Code Sequence")
    request = {**{k: v for k, v in sps.items() if k in _REQUEST}, **_pick(top, _REQUEST)}
    patient_encoded = tuple(
        [e for e in _pick(top, _PATIENT_COPY).values() if e.value.strip(b" \x00")]
        + _checked("PatientBirthDate", birth.strftime("%Y%m%d") if birth else "")
        + _checked("PatientSex", sex)
        + _checked("PatientWeight", weight)
        + _checked("PatientSize", size)
        + ([_us("PregnancyStatus", pregnancy)] if pregnancy else [])
    )
    scheduled = Scheduled(
        character_set=terms,
        study=tuple(
            [e for e in _pick(top, ("AccessionNumber", "ReferringPhysicianName")).values()]
            + [
                Encoded(tag_for_keyword("StudyDescription") or 0, "LO", e.value)
                for k, e in top.items()
                if k == "RequestedProcedureDescription" and e.value
            ]
        ),
        request=tuple(e for e in request.values() if e.value.strip(b" \x00")),
        protocol_codes=tuple(tuple(c.values()) for c in codes if c),
        procedure_codes=tuple(tuple(c.values()) for c in procedure_codes),
        diagnosis_codes=tuple(tuple(c.values()) for c in diagnosis_codes),
        reason_codes=tuple(tuple(c.values()) for c in reason_codes),
    )
    problems += _image_problems(patient_encoded, scheduled)
    details = {k: v for k in _DETAILS if (v := text(top, k) or text(sps, k))}
    return WorklistItem(
        patient_name=text(top, "PatientName"),
        patient_id=patient_id,
        birth_date=birth,
        sex=sex,
        accession_number=text(top, "AccessionNumber").strip(),
        study_instance_uid=study_uid if is_valid_uid(study_uid) else "",
        requested_procedure_id=text(top, "RequestedProcedureID").strip(),
        requested_procedure_description=text(top, "RequestedProcedureDescription"),
        referring_physician=text(top, "ReferringPhysicianName"),
        scheduled_procedure_step_id=text(sps, "ScheduledProcedureStepID").strip(),
        scheduled_procedure_step_description=text(sps, "ScheduledProcedureStepDescription"),
        scheduled_date=_date(text(sps, "ScheduledProcedureStepStartDate")),
        scheduled_time=text(sps, "ScheduledProcedureStepStartTime").strip(),
        modality=text(sps, "Modality").strip(),
        station_ae_title=text(sps, "ScheduledStationAETitle").strip(),
        weight_kg=weight,
        size_m=size,
        allergies=many("Allergies"),
        medical_alerts=many("MedicalAlerts"),
        pregnancy_status=PREGNANCY.get(pregnancy or 0, ""),
        protocol_codes=decoded(codes),
        procedure_codes=decoded(procedure_codes),
        admitting_diagnoses=text(top, "AdmittingDiagnosesDescription"),
        character_set=terms,
        patient_encoded=patient_encoded,
        scheduled=scheduled,
        encoded=encoded,
        implicit=implicit,
        details=details,
        notes=tuple(notes),
        problems=tuple(problems),
    )


_STEP_ONLY = (
    "ScheduledStationAETitle",
    "ScheduledProcedureStepStartDate",
    "ScheduledProcedureStepStartTime",
    "Modality",
)
# copied as encoded into the Patient and Patient Study modules; dates, codes and numbers are
# copied once checked (`_checked`)
_PATIENT_COPY = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "MedicalAlerts",
    "Allergies",
    "AdmittingDiagnosesDescription",
)


def _codes(ds: Dataset, keyword: str) -> list[dict[str, Encoded]]:
    """The non-empty code items of a sequence, their values as encoded."""
    found = [
        {k: e for k in _CODE if (e := _leaf(item, k)) and e.value.strip(b" \x00")}
        for item in _items(ds, keyword)
    ]
    return [c for c in found if c]


def _pick(group: dict[str, Encoded], keywords: Sequence[str]) -> dict[str, Encoded]:
    return {k: group[k] for k in keywords if k in group}


def _checked(keyword: str, value: str) -> list[Encoded]:
    tag = tag_for_keyword(keyword)
    assert tag is not None
    return [Encoded(tag, dictionary_VR(tag), value.encode("ascii"))] if value else []


def _us(keyword: str, value: int) -> Encoded:
    tag = tag_for_keyword(keyword)
    assert tag is not None
    return Encoded(tag, "US", value.to_bytes(2, "little"))


def _date(text: str) -> date | None:
    t = text.strip()
    if not re.fullmatch(r"\d{8}", t):
        return None
    try:
        return date(int(t[:4]), int(t[4:6]), int(t[6:]))
    except ValueError:
        return None


def _pregnancy(e: Encoded | None) -> int | None:
    if e is None or len(e.value) != 2:
        return None
    value = int.from_bytes(e.value, "little")
    return value if value in PREGNANCY else None


def _image_problems(patient: tuple[Encoded, ...], scheduled: Scheduled) -> list[str]:
    """What would make an image with these values invalid, found now rather than at every
    slice (the images validate their values when they are encoded). The optional values and
    codes are checked on their own before (`_misfit`), and left out when they do not fit."""
    misfit = _misfit((*patient, *scheduled.study, *scheduled.request), scheduled.character_set)
    return [misfit] if misfit else []


def _misfit(elements: Sequence[Encoded], terms: Sequence[str]) -> str:
    """Why these values, as an image would carry them, do not fit their VRs; "" if they do."""
    from agent.dicom.modules import put_encoded

    ds = Dataset()
    try:
        for e in elements:
            put_encoded(ds, e, terms)
        files.validate(ds)
    except (files.InvalidDataset, ValueError) as e:
        return f"a value does not fit its DICOM type: {e}"
    return ""
