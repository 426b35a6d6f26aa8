"""The TID 10011 "CT Radiation Dose" content tree, built from the hardware's irradiation
records alone (SPEC §3: never from guesses). Pure: records in, SR content items out.

Numbers are written as Decimal Strings; the DLP total is the exact decimal sum of the DLP
values as written, so that a reader summing the events finds the total to the last digit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from decimal import Decimal

from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as sr_codes
from pydicom.valuerep import DSfloat

from agent.dicom import modules
from agent.dose import codes as c
from agent.dose.codes import Code
from hardware.dose import AcquisitionType, AlertKind, AlertQuantity, DoseAlert, IrradiationEvent

CONTAINS, OBS_CONTEXT = "CONTAINS", "HAS OBS CONTEXT"
CONCEPT_MOD, PROPERTIES = "HAS CONCEPT MOD", "HAS PROPERTIES"
TEMPLATE = "10011"
MAPPING_RESOURCE = "DCMR"
SIMULATED_COMMENT = (
    "SIMULATED: dose values reported by simulated acquisition hardware, not a patient exposure"
)


class ContentError(ValueError):
    """A record cannot be expressed in the template (e.g. a target region with no code)."""


@dataclass(frozen=True)
class DeviceObserver:
    """TID 1004: the console that observed (and delivered) the irradiation."""

    uid: str
    name: str
    manufacturer: str
    model_name: str
    serial_number: str


def target_region(text: str) -> Code:
    """CID 4030 code of a hardware target region such as "CHEST" (matched by meaning)."""
    wanted = " ".join(text.replace("_", " ").split()).casefold()
    cid = sr_codes.cid4030
    for name in cid.dir():
        code = getattr(cid, name)
        if str(code.meaning).casefold() == wanted:
            return Code(str(code.value), str(code.scheme_designator), str(code.meaning))
    raise ContentError(f"target region {text!r} has no code in CID 4030")


def number(value: float) -> DSfloat:
    return modules.ds_value(value)


def dlp_total(events: Sequence[IrradiationEvent]) -> Decimal:
    """The sum of the events' DLP values exactly as they are written."""
    return sum((Decimal(str(number(e.dlp_mgycm))) for e in events), Decimal(0))


# -- content items -------------------------------------------------------------------------------


def code_sequence(code: Code) -> list[Dataset]:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning
    return [item]


def _item(value_type: str, concept: Code, relationship: str | None) -> Dataset:
    ds = Dataset()
    if relationship is not None:
        ds.RelationshipType = relationship
    ds.ValueType = value_type
    ds.ConceptNameCodeSequence = code_sequence(concept)
    return ds


def container(concept: Code, children: list[Dataset], rel: str | None = CONTAINS) -> Dataset:
    ds = _item("CONTAINER", concept, rel)
    ds.ContinuityOfContent = "SEPARATE"
    ds.ContentSequence = children
    return ds


def code_item(
    concept: Code, value: Code, rel: str = CONTAINS, children: list[Dataset] | None = None
) -> Dataset:
    ds = _item("CODE", concept, rel)
    ds.ConceptCodeSequence = code_sequence(value)
    if children:
        ds.ContentSequence = children
    return ds


def num_item(
    concept: Code, value: float | Decimal, unit: Code | None = None, rel: str = CONTAINS
) -> Dataset:
    ds = _item("NUM", concept, rel)
    measured = Dataset()
    if isinstance(value, Decimal | int):
        measured.NumericValue = str(value)  # exact: a count, or the DLP sum
    else:
        measured.NumericValue = number(value)
    measured.MeasurementUnitsCodeSequence = code_sequence(unit or c.UNITS[concept])
    ds.MeasuredValueSequence = [measured]
    return ds


def text_item(concept: Code, value: str, rel: str = CONTAINS) -> Dataset:
    ds = _item("TEXT", concept, rel)
    ds.TextValue = value
    return ds


def uid_item(concept: Code, value: str, rel: str = CONTAINS) -> Dataset:
    ds = _item("UIDREF", concept, rel)
    ds.UID = value
    return ds


def datetime_item(concept: Code, value: datetime, tz: tzinfo, rel: str = CONTAINS) -> Dataset:
    """In the zone of the document's Timezone Offset From UTC, which it then implies (no
    suffix: DCMTK 3.6.7 refuses the valid suffix "+0000")."""
    ds = _item("DATETIME", concept, rel)
    ds.DateTime = value.astimezone(tz).strftime("%Y%m%d%H%M%S.%f")
    return ds


def person_item(name: str, role: Code) -> Dataset:
    """TID 1020 Person Participant: the name, and the person's role in the procedure."""
    ds = _item("PNAME", c.PERSON_NAME, CONTAINS)
    ds.PersonName = name
    ds.ContentSequence = [code_item(c.PERSON_ROLE_IN_PROCEDURE, role, PROPERTIES)]
    return ds


# -- the templates -------------------------------------------------------------------------------


def observer_context(device: DeviceObserver) -> list[Dataset]:
    """TID 1002 with a device observer (TID 1004)."""
    items = [
        code_item(c.OBSERVER_TYPE, c.DEVICE, OBS_CONTEXT),
        uid_item(c.DEVICE_OBSERVER_UID, device.uid, OBS_CONTEXT),
    ]
    for concept, value in (
        (c.DEVICE_OBSERVER_NAME, device.name),
        (c.DEVICE_OBSERVER_MANUFACTURER, device.manufacturer),
        (c.DEVICE_OBSERVER_MODEL_NAME, device.model_name),
        (c.DEVICE_OBSERVER_SERIAL_NUMBER, device.serial_number),
    ):
        if value:
            items.append(text_item(concept, value, OBS_CONTEXT))
    items.append(code_item(c.DEVICE_ROLE_IN_PROCEDURE, c.IRRADIATING_DEVICE, OBS_CONTEXT))
    return items


def accumulated_dose(events: Sequence[IrradiationEvent]) -> Dataset:
    """TID 10012: how many events, and the DLP total (the exact sum of the events')."""
    return container(
        c.CT_ACCUMULATED_DOSE_DATA,
        [
            num_item(c.TOTAL_NUMBER_OF_IRRADIATION_EVENTS, len(events)),
            num_item(c.CT_DLP_TOTAL, dlp_total(events)),
        ],
    )


def irradiation_event(e: IrradiationEvent, protocol: str = "") -> Dataset:
    """TID 10013 for one acquisition, with TID 10014 and the CT Dose container (and TID 10015
    where a dose check notified or alerted)."""
    constant_angle = e.acquisition_type is AcquisitionType.CONSTANT_ANGLE
    children = []
    if protocol:
        children.append(text_item(c.ACQUISITION_PROTOCOL, protocol[:1024]))
    children += [
        code_item(c.TARGET_REGION, target_region(e.target_region)),
        code_item(c.CT_ACQUISITION_TYPE, c.ACQUISITION_TYPES[e.acquisition_type]),
        uid_item(c.IRRADIATION_EVENT_UID, e.event_uid),
    ]
    parameters = [
        num_item(c.EXPOSURE_TIME, e.exposure_time_s),
        num_item(c.SCANNING_LENGTH, e.scanning_length_mm),  # TID 10014
        num_item(c.NOMINAL_SINGLE_COLLIMATION, e.single_collimation_mm),
        num_item(c.NOMINAL_TOTAL_COLLIMATION, e.total_collimation_mm),
    ]
    if e.pitch_factor is not None and e.acquisition_type in (
        AcquisitionType.SPIRAL,
        AcquisitionType.SEQUENCED,
    ):
        parameters.append(num_item(c.PITCH_FACTOR, e.pitch_factor))
    parameters.append(num_item(c.NUMBER_OF_XRAY_SOURCES, len(e.sources)))
    for s in e.sources:
        source = [
            text_item(c.XRAY_SOURCE_ID, s.source_id),
            num_item(c.KVP, s.kvp),
            num_item(c.MAX_TUBE_CURRENT, s.max_tube_current_ma),
            num_item(c.TUBE_CURRENT, s.mean_tube_current_ma),
        ]
        if not constant_angle:  # the tube does not rotate for a localizer
            source.append(num_item(c.EXPOSURE_TIME_PER_ROTATION, s.rotation_time_s))
        parameters.append(container(c.CT_XRAY_SOURCE_PARAMETERS, source))
    children.append(container(c.CT_ACQUISITION_PARAMETERS, parameters))
    dose = [
        num_item(c.MEAN_CTDIVOL, e.mean_ctdivol_mgy),
        code_item(c.CTDIW_PHANTOM_TYPE, c.PHANTOMS[e.ctdi_phantom]),
        num_item(c.DLP, e.dlp_mgycm),
        *dose_check(e.alerts),
    ]
    children.append(container(c.CT_DOSE, dose))
    return container(c.CT_ACQUISITION, children)


_CHECK = {  # kind -> container, (DLP, CTDIvol) configured, values, forward estimates
    AlertKind.NOTIFICATION: (
        c.NOTIFICATION_DETAILS,
        (c.DLP_NOTIFICATION_CONFIGURED, c.CTDIVOL_NOTIFICATION_CONFIGURED),
        (c.DLP_NOTIFICATION_VALUE, c.CTDIVOL_NOTIFICATION_VALUE),
        (c.DLP_FORWARD_ESTIMATE, c.CTDIVOL_FORWARD_ESTIMATE),
    ),
    AlertKind.ALERT: (
        c.ALERT_DETAILS,
        (c.DLP_ALERT_CONFIGURED, c.CTDIVOL_ALERT_CONFIGURED),
        (c.DLP_ALERT_VALUE, c.CTDIVOL_ALERT_VALUE),
        (c.ACCUMULATED_DLP_FORWARD_ESTIMATE, c.ACCUMULATED_CTDIVOL_FORWARD_ESTIMATE),
    ),
}


def dose_check(alerts: Sequence[DoseAlert]) -> list[Dataset]:
    """TID 10015: one container per kind raised (notification, alert). A quantity that raised
    nothing is reported as not configured: the record names only what was raised."""
    out = []
    for kind in (AlertKind.ALERT, AlertKind.NOTIFICATION):
        raised = {a.quantity: a for a in alerts if a.kind is kind}
        if not raised:
            continue
        concept, configured, values, estimates = _CHECK[kind]
        quantities = (AlertQuantity.DLP, AlertQuantity.CTDIVOL)
        children = [
            code_item(configured[i], c.YES if q in raised else c.NO)
            for i, q in enumerate(quantities)
        ]
        for i, q in enumerate(quantities):
            if q in raised:
                children.append(num_item(values[i], raised[q].configured_value))
        for i, q in enumerate(quantities):
            if q in raised:
                children.append(num_item(estimates[i], raised[q].value))
        reasons = sorted({a.reason for a in raised.values() if a.reason})
        if reasons:
            children.append(text_item(c.REASON_FOR_PROCEEDING, "; ".join(reasons)[:1024]))
        for person in sorted({a.person for a in raised.values() if a.person}):
            children.append(person_item(person, c.IRRADIATION_AUTHORIZING))
        out.append(container(concept, children))
    return out


def root_items(
    events: Sequence[IrradiationEvent],
    device: DeviceObserver,
    study_instance_uid: str,
    tz: tzinfo,
    *,
    protocols: dict[str, str] | None = None,
    simulated: bool = False,
) -> list[Dataset]:
    """The children of the TID 10011 root container, events oldest first, times in zone `tz`
    (the document's Timezone Offset From UTC). `protocols`:
    Acquisition Protocol by Irradiation Event UID, where the series named one."""
    if not events:
        raise ContentError("a CT Radiation Dose report needs at least one irradiation event")
    ordered = sorted(events, key=lambda e: e.start_time)
    protocols = protocols or {}
    items = [
        code_item(
            c.PROCEDURE_REPORTED,
            c.CT_XRAY,
            CONCEPT_MOD,
            [code_item(c.HAS_INTENT, c.DIAGNOSTIC_INTENT, CONCEPT_MOD)],
        ),
        *observer_context(device),
        datetime_item(c.START_OF_IRRADIATION, ordered[0].start_time, tz, OBS_CONTEXT),
        datetime_item(c.END_OF_IRRADIATION, max(e.end_time for e in ordered), tz, OBS_CONTEXT),
        code_item(
            c.SCOPE_OF_ACCUMULATION,
            c.STUDY,
            OBS_CONTEXT,
            [uid_item(c.STUDY_INSTANCE_UID, study_instance_uid, PROPERTIES)],
        ),
        accumulated_dose(ordered),
        *(irradiation_event(e, protocols.get(e.event_uid, "")) for e in ordered),
    ]
    if simulated:
        items.append(text_item(c.COMMENT, SIMULATED_COMMENT))
    items.append(code_item(c.SOURCE_OF_DOSE_INFORMATION, c.AUTOMATED_DATA_COLLECTION))
    return items


def root(
    events: Sequence[IrradiationEvent],
    device: DeviceObserver,
    study_instance_uid: str,
    tz: tzinfo,
    *,
    protocols: dict[str, str] | None = None,
    simulated: bool = False,
) -> Dataset:
    """The SR Document Content module: the root container naming TID 10011."""
    ds = Dataset()
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = code_sequence(c.XRAY_RADIATION_DOSE_REPORT)
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource = MAPPING_RESOURCE
    template.TemplateIdentifier = TEMPLATE
    ds.ContentTemplateSequence = [template]
    ds.ContentSequence = root_items(
        events, device, study_instance_uid, tz, protocols=protocols, simulated=simulated
    )
    return ds
