"""The Modality Worklist query (pure): matching keys from the config and the command line, the
return keys the images, the MPPS and the technologist need (IHE SWF RAD-5), and the same
matching applied locally to a kept list when the RIS does not answer.

The date is the console's local date at the moment of the query (not at start), so a daemon
that runs across midnight asks for the new day's list.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

from agent.config.model import WorklistSettings

if TYPE_CHECKING:
    from agent.worklist.item import WorklistItem

# Return keys, empty (universal matching): IHE RAD TF-2 Table 4.5-3 and the safety information
PATIENT_KEYS = (
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
    "PatientState",
    "SpecialNeeds",
    "AdmissionID",
    "CurrentPatientLocation",
    "ConfidentialityConstraintOnPatientDataDescription",
    "AdmittingDiagnosesDescription",  # with its code sequence: IHE REM wants them in the report
)
REQUEST_KEYS = (
    "StudyInstanceUID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "RequestingPhysician",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "RequestedProcedurePriority",
    "ReasonForTheRequestedProcedure",
)
STEP_KEYS = (
    "ScheduledProcedureStepStartTime",
    "ScheduledPerformingPhysicianName",
    "ScheduledProcedureStepDescription",
    "ScheduledStationName",
    "ScheduledProcedureStepLocation",
    "PreMedication",
    "RequestedContrastAgent",
    "ScheduledProcedureStepStatus",
    "CommentsOnTheScheduledProcedureStep",
)
CODE_KEYS = ("CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning")
# the code sequences asked for, each with one item of CODE_KEYS
PATIENT_CODE_SEQUENCES = ("AdmittingDiagnosesCodeSequence",)  # with its description: IHE REM
REQUEST_CODE_SEQUENCES = (
    "RequestedProcedureCodeSequence",
    "ReasonForRequestedProcedureCodeSequence",
)
STEP_CODE_SEQUENCES = ("ScheduledProtocolCodeSequence",)


@dataclass(frozen=True)
class Filter:
    """What one query asks for beyond the config: all optional."""

    dates: tuple[date, date] | None = None  # None: the config's range around today
    patient_name: str = ""  # PN with * and ? wildcards; "" the config's
    accession: str = ""
    sps_id: str = ""  # Scheduled Procedure Step ID

    @property
    def is_default(self) -> bool:
        return self == Filter()


def local_today(clock: Callable[[], datetime] | None = None, tz: tzinfo | None = None) -> date:
    """Today in the console's time zone (`tz`, default the system's), read now."""
    return (clock() if clock else datetime.now()).astimezone(tz).date()


def date_range(settings: WorklistSettings, f: Filter, today: date) -> tuple[date, date]:
    if f.dates is not None:
        return f.dates
    return today - timedelta(days=settings.days_before), today + timedelta(days=settings.days_after)


def parse_dates(text: str) -> tuple[date, date]:
    """YYYYMMDD or YYYYMMDD-YYYYMMDD; ValueError otherwise."""
    first, _, last = text.strip().partition("-")
    try:
        low = datetime.strptime(first, "%Y%m%d").date()
        high = datetime.strptime(last, "%Y%m%d").date() if last else low
    except ValueError:
        raise ValueError(f"expected YYYYMMDD or YYYYMMDD-YYYYMMDD, got {text!r}") from None
    if high < low:
        raise ValueError(f"the range {text!r} ends before it starts")
    return low, high


def _da_range(dates: tuple[date, date]) -> str:
    low, high = (d.strftime("%Y%m%d") for d in dates)
    return low if low == high else f"{low}-{high}"


def identifier(settings: WorklistSettings, f: Filter, today: date) -> Dataset:
    """The C-FIND request identifier."""
    ds = Dataset()
    name = f.patient_name or settings.patient_name
    if not name.isascii():
        ds.SpecificCharacterSet = "ISO_IR 192"  # our matching key needs it
    for keyword in PATIENT_KEYS + REQUEST_KEYS:
        setattr(ds, keyword, None)
    ds.PatientName = name
    ds.AccessionNumber = f.accession
    for keyword in PATIENT_CODE_SEQUENCES + REQUEST_CODE_SEQUENCES:
        setattr(ds, keyword, [_code()])
    step = Dataset()
    step.ScheduledStationAETitle = settings.station_ae_title
    step.ScheduledProcedureStepStartDate = _da_range(date_range(settings, f, today))
    step.Modality = settings.modality
    step.ScheduledProcedureStepID = f.sps_id
    for keyword in STEP_KEYS:
        setattr(step, keyword, None)
    for keyword in STEP_CODE_SEQUENCES:
        setattr(step, keyword, [_code()])
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def _code() -> Dataset:
    """A code item of empty return keys."""
    code = Dataset()
    for keyword in CODE_KEYS:
        setattr(code, keyword, None)
    return code


def matches(item: WorklistItem, settings: WorklistSettings, f: Filter, today: date) -> bool:
    """The query's matching applied to an item of a kept list (the RIS is not answering)."""
    low, high = date_range(settings, f, today)
    day = item.scheduled_date
    name = f.patient_name or settings.patient_name
    return (
        (not settings.modality or item.modality == settings.modality)
        and (not settings.station_ae_title or item.station_ae_title == settings.station_ae_title)
        and (day is None or low <= day <= high)
        and (not f.accession or item.accession_number == f.accession)
        and (not f.sps_id or item.scheduled_procedure_step_id == f.sps_id)
        and (not name or fnmatch.fnmatchcase(item.patient_name.upper(), name.upper()))
    )
