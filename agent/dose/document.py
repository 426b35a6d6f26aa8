"""The X-Ray Radiation Dose SR document (PS3.3 A.35.8) of an exam: the header from the exam
(patient, study, equipment: the same modules as its images, so the same values and character
set), its own series (modality SR), and the TID 10011 content. Pure: no I/O, no clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, XRayRadiationDoseSRStorage

from agent.config.model import Equipment
from agent.dicom import modules
from agent.dose import content
from agent.dose.content import DeviceObserver
from agent.exam import Exam
from hardware.dose import IrradiationEvent

SR_SERIES_NUMBER = 999  # apart from the image series, which count up from 1
SERIES_DESCRIPTION = "Radiation Dose Report"
_REFERENCED_REQUEST_KEYS = (  # what the Referenced Request Sequence takes of the request
    "AccessionNumber",
    "RequestedProcedureID",
    "RequestedProcedureDescription",
    "PlacerOrderNumberImagingServiceRequest",
    "FillerOrderNumberImagingServiceRequest",
    "ReasonForTheRequestedProcedure",
    "ReasonForRequestedProcedureCodeSequence",
)


def device_observer_uid(equipment: Equipment) -> str:
    """The console's Device Observer UID: the same in every report of this device, across
    restarts and re-sends (derived from manufacturer, model and serial number)."""
    name = "\x1f".join(
        (
            "urn:modality-agent:device",
            equipment.manufacturer,
            equipment.model_name,
            equipment.device_serial_number,
        )
    )
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name).int}"


def device_observer(equipment: Equipment) -> DeviceObserver:
    return DeviceObserver(
        uid=device_observer_uid(equipment),
        name=equipment.station_name,
        manufacturer=equipment.manufacturer,
        model_name=equipment.model_name,
        serial_number=equipment.device_serial_number,
    )


@dataclass(frozen=True)
class Evidence:
    """The exam's images, by series: (Series Instance UID, ((SOP Class, SOP Instance), ...))."""

    series: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    protocols: dict[str, str] = field(default_factory=dict)  # by Irradiation Event UID
    simulated: bool = False  # the images came from simulated hardware


def report(
    exam: Exam,
    events: Sequence[IrradiationEvent],
    equipment: Equipment,
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
    created: datetime,
    evidence: Evidence = Evidence(),
) -> Dataset:
    """The report as a Dataset with its File Meta Information, ready for `files.encode`.
    `created` is timezone-aware: Content, Series and Instance Creation Date/Time."""
    study_started = exam.started.astimezone(created.tzinfo)
    ds = Dataset()
    modules.patient(ds, exam.patient)
    modules.general_study(ds, exam, study_started)
    modules.patient_study(ds, exam.patient, study_started.date())
    _sr_series(ds, exam, series_instance_uid, created, evidence.simulated)
    modules.general_equipment(ds, equipment)
    _sr_document_general(ds, exam, created, evidence)
    ds.update(
        content.root(
            events,
            device_observer(equipment),
            exam.study_instance_uid,
            created.tzinfo or UTC,
            protocols=evidence.protocols,
            simulated=evidence.simulated,
        )
    )
    modules.sop_common(ds, sop_instance_uid=sop_instance_uid, created=created)
    ds.SOPClassUID = XRayRadiationDoseSRStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XRayRadiationDoseSRStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def _sr_series(
    ds: Dataset, exam: Exam, series_instance_uid: str, created: datetime, simulated: bool
) -> None:
    """SR Document Series module."""
    ds.Modality = "SR"
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = SR_SERIES_NUMBER
    ds.SeriesDate = modules.da(created)
    ds.SeriesTime = modules.tm(created)
    prefix = f"{modules.SIMULATED} " if simulated else ""
    ds.SeriesDescription = prefix + SERIES_DESCRIPTION
    refs = []
    if exam.performed_procedure_step_uid:
        ref = Dataset()
        ref.ReferencedSOPClassUID = modules.MPPS_SOP_CLASS_UID
        ref.ReferencedSOPInstanceUID = exam.performed_procedure_step_uid
        refs.append(ref)
    ds.ReferencedPerformedProcedureStepSequence = refs


def _sr_document_general(ds: Dataset, exam: Exam, created: datetime, evidence: Evidence) -> None:
    ds.InstanceNumber = 1
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ContentDate = modules.da(created)
    ds.ContentTime = modules.tm(created)
    ds.PerformedProcedureCodeSequence = modules.procedure_codes(exam)
    if not exam.procedure.unscheduled:
        request = modules.request_attributes(exam)
        item = Dataset()
        item.StudyInstanceUID = exam.study_instance_uid
        item.ReferencedStudySequence = []
        for keyword in _REFERENCED_REQUEST_KEYS:
            if keyword in request:
                item[keyword] = request[keyword]
        for keyword in (  # Type 2 in the SR Document General module's request item
            "AccessionNumber",
            "PlacerOrderNumberImagingServiceRequest",
            "FillerOrderNumberImagingServiceRequest",
            "RequestedProcedureID",
            "RequestedProcedureDescription",
        ):
            if keyword not in item:
                setattr(item, keyword, "")
        item.RequestedProcedureCodeSequence = modules.procedure_codes(exam)
        ds.ReferencedRequestSequence = [item]
    if evidence.series:
        ds.CurrentRequestedProcedureEvidenceSequence = [_evidence(exam, evidence)]


def _evidence(exam: Exam, evidence: Evidence) -> Dataset:
    """Hierarchical SOP Instance Reference of the exam's images."""
    study = Dataset()
    study.StudyInstanceUID = exam.study_instance_uid
    series_items = []
    for series_uid, instances in evidence.series:
        s = Dataset()
        s.SeriesInstanceUID = series_uid
        refs = []
        for sop_class, sop_instance in instances:
            r = Dataset()
            r.ReferencedSOPClassUID = sop_class
            r.ReferencedSOPInstanceUID = sop_instance
            refs.append(r)
        s.ReferencedSOPSequence = refs
        series_items.append(s)
    study.ReferencedSeriesSequence = series_items
    return study
