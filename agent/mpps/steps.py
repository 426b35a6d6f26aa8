"""The MPPS messages of an exam (PS3.4 F.7.2; IHE SWF RAD-6 and RAD-7), built from the exam
and what the spool holds of it. Pure: data in, data sets out.

- `in_progress`: the N-CREATE, sent when the exam's first image is accepted (or, for an exam
  ended before any image, just before its DISCONTINUED). A scheduled exam copies the worklist
  item's values as encoded into the Scheduled Step Attributes Sequence and the patient
  attributes; an unscheduled one (IHE SWF "unscheduled case") has one item with the Study
  Instance UID the images carry and the rest empty.
- `final`: the N-SET to COMPLETED, or to DISCONTINUED with a reason code (CID 9300), carrying
  the Performed Series Sequence of every series and image sent under the step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.uid import XRayRadiationDoseSRStorage

from agent.config.model import Equipment
from agent.dicom import modules
from agent.exam import Exam

MODALITY = "CT"
NON_IMAGE_SOP_CLASSES = {XRayRadiationDoseSRStorage}  # the CT Radiation Dose SR

# CID 9300 Procedure Discontinuation Reasons (DCM): a reason given in words is matched to its
# code by meaning; any other reason is "unspecified", its words kept in the step's comments
DISCONTINUATION_REASONS = {
    "doctor canceled procedure": "110500",
    "equipment failure": "110501",
    "incorrect procedure ordered": "110502",
    "patient allergic to media/contrast": "110503",
    "patient died": "110504",
    "patient refused to continue procedure": "110505",
    "patient taken for treatment or surgery": "110506",
    "patient did not arrive": "110507",
    "patient pregnant": "110508",
    "change of procedure for correct charging": "110509",
    "duplicate order": "110510",
    "nursing unit cancel": "110511",
    "incorrect side ordered": "110512",
    "discontinued for unspecified reason": "110513",
    "incorrect worklist entry selected": "110514",
    "patient condition prevented continuing": "110515",
    "equipment change": "110516",
}
UNSPECIFIED = "discontinued for unspecified reason"

# what the N-CREATE may carry of the worklist item (PS3.4 Table F.7.2-1, PS3.3 C.4.13): a
# strict RIS answers another attribute with 0105 (no such attribute), a permanent refusal
SCHEDULED_STEP_KEYS = (
    "StudyInstanceUID",
    "ReferencedStudySequence",
    "AccessionNumber",
    "PlacerOrderNumberImagingServiceRequest",
    "FillerOrderNumberImagingServiceRequest",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "ScheduledProcedureStepID",
    "ScheduledProcedureStepDescription",
    "ScheduledProtocolCodeSequence",
)
PATIENT_KEYS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "ReferencedPatientSequence",
)


@dataclass(frozen=True)
class PerformedSeries:
    """One series sent under the step, as the Performed Series Sequence lists it."""

    series_instance_uid: str
    description: str
    protocol_name: str
    images: tuple[tuple[str, str], ...]  # (SOP Class UID, SOP Instance UID)


def step_id(exam: Exam) -> str:
    """Performed Procedure Step ID (SH): the exam's Study ID, unique per console."""
    return exam.study_id


def in_progress(exam: Exam, ae_title: str, equipment: Equipment) -> Dataset:
    ds = Dataset()
    _patient(ds, exam)
    scheduled = Dataset()
    _scheduled_step(scheduled, exam)
    ds.ScheduledStepAttributesSequence = [scheduled]
    ds.PerformedProcedureStepID = step_id(exam)
    ds.PerformedStationAETitle = ae_title
    ds.PerformedStationName = equipment.station_name
    ds.PerformedLocation = ""
    ds.PerformedProcedureStepStartDate = modules.da(exam.started)
    ds.PerformedProcedureStepStartTime = modules.tm(exam.started)
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = _description(exam)
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = modules.procedure_codes(exam)
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = MODALITY
    ds.StudyID = exam.study_id
    ds.PerformedProtocolCodeSequence = _protocol_codes(exam)
    ds.PerformedSeriesSequence = []
    modules.settle_character_set(ds)
    return ds


def final(
    exam: Exam,
    ended: datetime,
    series: Sequence[PerformedSeries],
    discontinue_reason: str | None = None,
) -> Dataset:
    """The N-SET that closes the step: COMPLETED, or DISCONTINUED when a reason is given."""
    ds = Dataset()
    if exam.procedure.scheduled is not None and exam.procedure.scheduled.character_set:
        terms = exam.procedure.scheduled.character_set
        ds.SpecificCharacterSet = list(terms) if len(terms) > 1 else terms[0]
    ds.PerformedProcedureStepStatus = "COMPLETED" if discontinue_reason is None else "DISCONTINUED"
    ds.PerformedProcedureStepEndDate = modules.da(ended)
    ds.PerformedProcedureStepEndTime = modules.tm(ended)
    ds.PerformedSeriesSequence = [_series_item(s, exam) for s in series]
    if discontinue_reason is not None:
        meaning = discontinue_reason.strip().lower()
        code = DISCONTINUATION_REASONS.get(meaning)
        if code is None:
            code, meaning = DISCONTINUATION_REASONS[UNSPECIFIED], UNSPECIFIED
            ds.CommentsOnThePerformedProcedureStep = discontinue_reason.strip()[:10240]
        item = Dataset()
        item.CodeValue = code
        item.CodingSchemeDesignator = "DCM"
        item.CodeMeaning = _meaning(meaning)
        ds.PerformedProcedureStepDiscontinuationReasonCodeSequence = [item]
    modules.settle_character_set(ds)
    return ds


def _patient(ds: Dataset, exam: Exam) -> None:
    """The patient as the images have it: the worklist's values as encoded, or the ones
    registered by hand."""
    modules.patient(ds, exam.patient)
    ds.ReferencedPatientSequence = []
    scheduled = exam.procedure.scheduled
    if scheduled is None:
        return
    terms = scheduled.character_set
    if terms:
        ds.SpecificCharacterSet = list(terms) if len(terms) > 1 else terms[0]
    for e in exam.patient.encoded:
        if keyword_for_tag(e.tag) in PATIENT_KEYS:
            modules.put_encoded(ds, e, terms)


def _scheduled_step(item: Dataset, exam: Exam) -> None:
    proc = exam.procedure
    item.StudyInstanceUID = exam.study_instance_uid
    item.ReferencedStudySequence = []
    item.AccessionNumber = proc.accession_number
    item.RequestedProcedureID = proc.requested_procedure_id
    item.RequestedProcedureDescription = proc.requested_procedure_description[:64]
    item.ScheduledProcedureStepID = proc.scheduled_procedure_step_id
    item.ScheduledProcedureStepDescription = proc.scheduled_procedure_step_description[:64]
    item.ScheduledProtocolCodeSequence = []
    if proc.scheduled is None:
        return  # unscheduled (IHE SWF): the values above are empty but for the study
    request = modules.request_attributes(exam)  # the item's values as encoded
    for element in request:
        # Study Instance UID: the images' own, the exam's (the worklist's when it gave one)
        if element.keyword in SCHEDULED_STEP_KEYS and element.keyword != "StudyInstanceUID":
            item[element.tag] = element
    for e in proc.scheduled.study:
        if e.tag == 0x00080050:  # Accession Number, as encoded
            modules.put_encoded(item, e, proc.scheduled.character_set)


def _protocol_codes(exam: Exam) -> list[Dataset]:
    """What was performed is what was scheduled: the protocol codes of the item, if any."""
    if exam.procedure.scheduled is None:
        return []
    request = modules.request_attributes(exam)
    return list(request.get("ScheduledProtocolCodeSequence", []))


def _description(exam: Exam) -> str:
    proc = exam.procedure
    text = proc.requested_procedure_description or proc.scheduled_procedure_step_description
    return text[:64]


def _series_item(s: PerformedSeries, exam: Exam) -> Dataset:
    item = Dataset()
    item.PerformingPhysicianName = ""
    item.ProtocolName = s.protocol_name or s.description or "UNKNOWN"  # type 1
    item.OperatorsName = exam.operator
    item.SeriesInstanceUID = s.series_instance_uid
    item.SeriesDescription = s.description[:64]
    item.RetrieveAETitle = ""
    images: list[Dataset] = []
    others: list[Dataset] = []
    for sop_class, sop_instance in s.images:
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class
        ref.ReferencedSOPInstanceUID = sop_instance
        # the dose report (its own series) is no image: PS3.4 F.7.2.2 lists it apart
        (others if sop_class in NON_IMAGE_SOP_CLASSES else images).append(ref)
    item.ReferencedImageSequence = images
    item.ReferencedNonImageCompositeSOPInstanceSequence = others
    return item


def _meaning(lowercase: str) -> str:
    """The code meaning as PS3.16 spells it."""
    return lowercase[0].upper() + lowercase[1:]
