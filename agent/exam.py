"""The exam: who is scanned, for which procedure, under which token, sent where."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import date, datetime

from agent.dicom.uids import UidFactory


@dataclass(frozen=True)
class Encoded:
    """One attribute exactly as the worklist encoded it: its tag, VR and value bytes. The
    images get these bytes, never a decoded and re-encoded copy (SPEC §4)."""

    tag: int
    vr: str
    value: bytes


@dataclass(frozen=True)
class Scheduled:
    """What the images copy, as encoded, from the worklist item the exam was started from."""

    character_set: tuple[str, ...]  # the images' Specific Character Set; () the default
    study: tuple[Encoded, ...] = ()  # General Study: accession, referring physician, ...
    request: tuple[Encoded, ...] = ()  # one Request Attributes Sequence item
    protocol_codes: tuple[tuple[Encoded, ...], ...] = ()  # Scheduled Protocol Code Sequence
    # Requested Procedure Code Sequence: what the dose report and the MPPS say was performed
    procedure_codes: tuple[tuple[Encoded, ...], ...] = ()
    diagnosis_codes: tuple[tuple[Encoded, ...], ...] = ()  # Admitting Diagnoses Code Sequence
    reason_codes: tuple[tuple[Encoded, ...], ...] = ()  # Reason for Requested Procedure Code


@dataclass(frozen=True)
class Patient:
    name: str  # DICOM PN, e.g. "DOE^JANE"
    id: str
    birth_date: date | None = None
    sex: str = ""  # "M", "F", "O" or "" (unknown)
    issuer_of_id: str = ""
    weight_kg: str = ""  # Patient's Weight and Size (DS), "" when not known
    size_m: str = ""
    # from a worklist item: the Patient and Patient Study attributes as encoded, which the
    # images carry instead of the decoded values above
    encoded: tuple[Encoded, ...] = ()


@dataclass(frozen=True)
class Procedure:
    """The requested procedure, from the worklist item or entered by hand."""

    accession_number: str = ""
    requested_procedure_id: str = ""
    requested_procedure_description: str = ""
    scheduled_procedure_step_id: str = ""
    referring_physician: str = ""
    study_instance_uid: str | None = None  # the worklist's, when it gives one
    unscheduled: bool = True
    scheduled_procedure_step_description: str = ""
    unidentified: bool = False  # an emergency patient with generated identifiers
    scheduled: Scheduled | None = None  # the worklist item's encoded values, when scheduled


@dataclass(frozen=True)
class Exam:
    """One open procedure. All its series share `study_instance_uid`."""

    token: str  # handed to the hardware; every series start carries it back
    patient: Patient
    procedure: Procedure
    study_instance_uid: str
    study_id: str  # Study ID (SH, at most 16 characters)
    started: datetime  # timezone-aware; Study Date/Time
    frame_of_reference_uid: str  # one per exam unless the patient moved
    operator: str = ""
    destinations: tuple[str, ...] = field(default_factory=tuple)
    # the MPPS SOP Instance UID (IHE SWF): reported to the RIS, referenced by every image
    performed_procedure_step_uid: str = ""


def open_exam(
    patient: Patient,
    procedure: Procedure,
    uids: UidFactory,
    *,
    operator: str = "",
    destinations: tuple[str, ...] = (),
    now: datetime | None = None,
) -> Exam:
    """A new exam: a fresh token, the worklist's Study Instance UID or a new one."""
    started = now or datetime.now().astimezone()
    return Exam(
        token=secrets.token_hex(8),
        patient=patient,
        procedure=procedure,
        study_instance_uid=procedure.study_instance_uid or uids.new(),
        study_id=started.strftime("%y%m%d%H%M%S"),  # SH: at most 16 characters
        started=started,
        frame_of_reference_uid=uids.new(),
        operator=operator,
        destinations=destinations,
        performed_procedure_step_uid=uids.new(),
    )
