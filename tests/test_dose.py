"""The CT Radiation Dose SR built from the mock's records (a localizer, two helical
acquisitions, one with a dose-check notification): value by value against the records, valid
by dciodvfy (and IHE REM's profile, as far as the exam's data allows), readable by DCMTK's
dsrdump and dicom3tools' dcsrdump; our TID 10011 checker passes it and refuses crafted bad
ones."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sr._concepts_dict import concepts

from agent.config.model import Equipment
from agent.dicom import files
from agent.dicom.uids import UidFactory
from agent.dose import check, codes, document
from agent.exam import Exam, Patient, Procedure, open_exam
from hardware.dose import AcquisitionType, IrradiationEvent
from hardware.mock import simulated_irradiation, simulated_localizer, with_dose_check
from tests.peers import require
from tests.test_worklist import LATIN1_DIAGNOSIS, LATIN1_NAME, Item
from tests.test_worklist import _item as worklist_item

EQUIPMENT = Equipment("Example Medical", "CT-1", "SN0001", "CT1", "General Hospital", "1.0")


def make_exam() -> Exam:
    patient = Patient("DOE^JANE", "P1", date(1970, 1, 2), "F")
    return open_exam(patient, Procedure(accession_number="A1"), UidFactory(), operator="RT^ONE")


def make_events(token: str) -> list[IrradiationEvent]:
    t = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    return [
        simulated_localizer(token, t),
        with_dose_check(simulated_irradiation(token, t + timedelta(seconds=30), 320.0), 5.0),
        simulated_irradiation(token, t + timedelta(seconds=90), 200.0),
    ]


def build(events: list[IrradiationEvent] | None = None, exam: Exam | None = None) -> Dataset:
    exam = exam or make_exam()
    uids = UidFactory()
    return document.report(
        exam,
        events if events is not None else make_events(exam.token),
        EQUIPMENT,
        sop_instance_uid=uids.new(),
        series_instance_uid=uids.new(),
        created=datetime.now().astimezone(),
    )


def children(item: Dataset, concept: codes.Code) -> list[Dataset]:
    return [
        ch
        for ch in item.get("ContentSequence", [])
        if ch.ConceptNameCodeSequence[0].CodeValue == concept.value
    ]


def one(item: Dataset, concept: codes.Code) -> Dataset:
    (found,) = children(item, concept)
    return found


def num(item: Dataset, concept: codes.Code) -> tuple[Decimal, str]:
    m = one(item, concept).MeasuredValueSequence[0]
    return Decimal(str(m.NumericValue)), str(m.MeasurementUnitsCodeSequence[0].CodeValue)


def check_against_records(ds: Dataset, events: list[IrradiationEvent]) -> None:
    """Every row of the report against the record it came from."""
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.67" and ds.Modality == "SR"
    (template,) = ds.ContentTemplateSequence
    assert (template.MappingResource, template.TemplateIdentifier) == ("DCMR", "10011")
    assert ds.ConceptNameCodeSequence[0].CodeMeaning == "X-Ray Radiation Dose Report"
    assert document.device_observer_uid(EQUIPMENT) == one(ds, codes.DEVICE_OBSERVER_UID).UID
    assert one(ds, codes.DEVICE_OBSERVER_SERIAL_NUMBER).TextValue == "SN0001"
    accumulated = one(ds, codes.CT_ACCUMULATED_DOSE_DATA)
    assert num(accumulated, codes.TOTAL_NUMBER_OF_IRRADIATION_EVENTS) == (len(events), "{events}")
    total = sum(Decimal(str(e.dlp_mgycm)) for e in events)
    assert num(accumulated, codes.CT_DLP_TOTAL) == (total, "mGy.cm")
    acquisitions = children(ds, codes.CT_ACQUISITION)
    ordered = sorted(events, key=lambda e: e.start_time)
    assert len(acquisitions) == len(ordered)
    for item, e in zip(acquisitions, ordered, strict=True):
        assert e.event_uid == one(item, codes.IRRADIATION_EVENT_UID).UID
        kind = one(item, codes.CT_ACQUISITION_TYPE).ConceptCodeSequence[0]
        assert kind.CodeValue == codes.ACQUISITION_TYPES[e.acquisition_type].value
        region = one(item, codes.TARGET_REGION).ConceptCodeSequence[0]
        assert (region.CodeValue, region.CodeMeaning) == ("816094009", "Chest")
        p = one(item, codes.CT_ACQUISITION_PARAMETERS)
        assert num(p, codes.EXPOSURE_TIME) == (Decimal(str(e.exposure_time_s)), "s")
        assert num(p, codes.SCANNING_LENGTH) == (Decimal(str(e.scanning_length_mm)), "mm")
        assert num(p, codes.NOMINAL_SINGLE_COLLIMATION)[0] == Decimal(str(e.single_collimation_mm))
        assert num(p, codes.NOMINAL_TOTAL_COLLIMATION)[0] == Decimal(str(e.total_collimation_mm))
        if e.acquisition_type is AcquisitionType.SPIRAL:
            assert num(p, codes.PITCH_FACTOR) == (Decimal(str(e.pitch_factor)), "{ratio}")
        else:
            assert not children(p, codes.PITCH_FACTOR)
        (source,) = children(p, codes.CT_XRAY_SOURCE_PARAMETERS)
        (s,) = e.sources
        assert num(source, codes.KVP) == (Decimal(str(s.kvp)), "kV")
        assert num(source, codes.TUBE_CURRENT) == (Decimal(str(s.mean_tube_current_ma)), "mA")
        assert num(source, codes.MAX_TUBE_CURRENT)[0] == Decimal(str(s.max_tube_current_ma))
        dose = one(item, codes.CT_DOSE)
        assert num(dose, codes.MEAN_CTDIVOL) == (Decimal(str(e.mean_ctdivol_mgy)), "mGy")
        assert num(dose, codes.DLP) == (Decimal(str(e.dlp_mgycm)), "mGy.cm")
        # DLP = CTDIvol x scanning length (cm), as the hardware computed it
        assert abs(e.dlp_mgycm - e.mean_ctdivol_mgy * e.scanning_length_mm / 10) < 0.1
        phantom = one(dose, codes.CTDIW_PHANTOM_TYPE).ConceptCodeSequence[0]
        assert phantom.CodeMeaning == codes.PHANTOMS[e.ctdi_phantom].meaning
        notified = children(dose, codes.NOTIFICATION_DETAILS)
        assert len(notified) == (1 if e.alerts else 0)
        if e.alerts:
            (alert,) = e.alerts
            n = notified[0]
            assert num(n, codes.CTDIVOL_NOTIFICATION_VALUE)[0] == Decimal(
                str(alert.configured_value)
            )
            assert num(n, codes.CTDIVOL_FORWARD_ESTIMATE)[0] == Decimal(str(alert.value))
            assert one(n, codes.REASON_FOR_PROCEEDING).TextValue == alert.reason
            assert str(one(n, codes.PERSON_NAME).PersonName) == alert.person
    assert check.problems(ds) == []


def test_report_rows_equal_the_records() -> None:
    exam = make_exam()
    events = make_events(exam.token)
    assert [e.acquisition_type for e in events] == [
        AcquisitionType.CONSTANT_ANGLE,
        AcquisitionType.SPIRAL,
        AcquisitionType.SPIRAL,
    ]
    ds = build(events, exam)
    check_against_records(files.decode(files.encode(ds)), events)


def test_code_meanings_are_those_of_the_standard() -> None:
    """Every DCM concept's meaning as pydicom's copy of PS3.16 has it; units as UCUM's."""
    by_code: dict[str, str] = {}
    for table in concepts["DCM"].values():
        for code, entry in table.items():  # type: ignore[attr-defined]
            by_code[code] = entry[0]
    for (scheme, value), meaning in codes.CONCEPTS.items():
        if scheme == "DCM":
            assert by_code[value] == meaning, value


def write(tmp_path: Path, ds: Dataset, name: str = "sr.dcm") -> Path:
    path = tmp_path / name
    path.write_bytes(files.encode(ds))
    return path


def test_dciodvfy_and_dsrdump_accept_the_report(tmp_path: Path) -> None:
    dciodvfy, dsrdump = require("dciodvfy", "dsrdump")
    path = write(tmp_path, build())
    out = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
    text = out.stdout + out.stderr
    assert "Error" not in text and "Warning" not in text, text
    out = subprocess.run([dsrdump, str(path)], capture_output=True, text=True)
    assert out.returncode == 0 and "E:" not in out.stderr and "W:" not in out.stderr, out.stderr
    assert "Constant Angle Acquisition" in out.stdout and "Dose Check Notification" in out.stdout


def ihe_rem_errors(tmp_path: Path, ds: Dataset) -> list[str]:
    (dciodvfy,) = require("dciodvfy")
    path = write(tmp_path, ds)
    out = subprocess.run(
        [dciodvfy, "-profile", "IHEREM", str(path)], capture_output=True, text=True
    )
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def test_ihe_rem_profile_passes_for_an_exam_from_the_worklist(tmp_path: Path) -> None:
    """The worklist item's size, weight, admitting diagnoses (description and code, as
    encoded) and requested procedure code (the performed one) reach the header."""
    item = worklist_item(Item("A-REM", LATIN1_NAME, "ISO_IR 100", diagnosis=LATIN1_DIAGNOSIS))
    assert item.usable, item.problems
    patient, procedure = item.exam_parts()
    exam = open_exam(patient, procedure, UidFactory(), operator="RT^ONE")
    encoded = files.encode(build(exam=exam))
    assert LATIN1_DIAGNOSIS in encoded  # as the RIS encoded it
    ds = files.decode(encoded)
    assert ihe_rem_errors(tmp_path, ds) == []
    assert (str(ds.PatientWeight), str(ds.PatientSize)) == ("70.5", "1.68")
    assert ds.AdmittingDiagnosesDescription == "Lungenembolie? Ödem"
    (diagnosis,) = ds.AdmittingDiagnosesCodeSequence
    assert (diagnosis.CodeValue, diagnosis.CodeMeaning) == ("59282003", "Pulmonary embolism")
    (performed,) = ds.PerformedProcedureCodeSequence
    assert (performed.CodeValue, performed.CodingSchemeDesignator) == ("24627-2", "LN")
    (request,) = ds.ReferencedRequestSequence
    assert request.RequestedProcedureCodeSequence[0].CodeMeaning == "CT Chest"


def test_ihe_rem_profile_for_an_exam_registered_by_hand(tmp_path: Path) -> None:
    """By hand, weight and size can be given; admitting diagnoses and a procedure code
    cannot, and none is made up: those are the only IHE REM errors left."""
    patient = Patient("DOE^JANE", "P1", date(1970, 1, 2), "F", weight_kg="82.5", size_m="1.7")
    exam = open_exam(patient, Procedure(accession_number="A1"), UidFactory())
    errors = ihe_rem_errors(tmp_path, build(exam=exam))
    lacking = ("AdmittingDiagnoses", "PerformedProcedureCode")
    assert errors and all(any(a in e for a in lacking) for e in errors), errors
    assert not any("PatientWeight" in e or "PatientSize" in e for e in errors), errors


def test_dcsrdump_reads_the_report(tmp_path: Path) -> None:
    (dcsrdump,) = require("dcsrdump")
    out = subprocess.run([dcsrdump, str(write(tmp_path, build()))], capture_output=True, text=True)
    text = out.stdout + out.stderr  # dcsrdump writes its dump to stderr
    assert out.returncode == 0 and "Error" not in text, text
    assert "CT Dose Length Product Total" in text


def _drop_accumulated(ds: Dataset) -> None:
    ds.ContentSequence = [
        i for i in ds.ContentSequence if i not in children(ds, codes.CT_ACCUMULATED_DOSE_DATA)
    ]


def _ctdivol_in_gy(ds: Dataset) -> None:
    dose = one(children(ds, codes.CT_ACQUISITION)[1], codes.CT_DOSE)
    unit = one(dose, codes.MEAN_CTDIVOL).MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0]
    unit.CodeValue = unit.CodeMeaning = "Gy"


def _dlp_total_off(ds: Dataset) -> None:
    m = one(one(ds, codes.CT_ACCUMULATED_DOSE_DATA), codes.CT_DLP_TOTAL).MeasuredValueSequence[0]
    m.NumericValue = str(Decimal(str(m.NumericValue)) + 1)


def _event_without_uid(ds: Dataset) -> None:
    event = children(ds, codes.CT_ACQUISITION)[2]
    event.ContentSequence = [
        i for i in event.ContentSequence if i not in children(event, codes.IRRADIATION_EVENT_UID)
    ]


def _wrong_meaning(ds: Dataset) -> None:
    dose = one(children(ds, codes.CT_ACQUISITION)[1], codes.CT_DOSE)
    one(dose, codes.MEAN_CTDIVOL).ConceptNameCodeSequence[0].CodeMeaning = "Mean CTDI vol"


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        (_drop_accumulated, "CT Accumulated Dose Data"),
        (_ctdivol_in_gy, "Mean CTDIvol in Gy"),
        (_dlp_total_off, "not the sum"),
        (_event_without_uid, "Irradiation Event UID"),
        (_wrong_meaning, "Code Meaning 'Mean CTDI vol'"),
    ],
)
def test_checker_refuses_crafted_bad_reports(
    tmp_path: Path, spoil: Callable[[Dataset], None], expected: str
) -> None:
    ds = build()
    bad = copy.deepcopy(ds)
    spoil(bad)
    found = check.problems(bad)
    assert any(expected in p for p in found), found
    path = write(tmp_path, bad)
    assert check.main([str(path)]) == 1
    assert check.main([str(write(tmp_path, ds, "good.dcm"))]) == 0


def test_no_event_no_report() -> None:
    with pytest.raises(ValueError, match="at least one irradiation event"):
        build([])


def test_device_observer_uid_is_stable() -> None:
    assert document.device_observer_uid(EQUIPMENT) == document.device_observer_uid(
        Equipment("Example Medical", "CT-1", "SN0001", "other", "other", "2.0")
    )
    assert document.device_observer_uid(EQUIPMENT) != document.device_observer_uid(
        Equipment("Example Medical", "CT-1", "SN0002", "CT1", "General Hospital", "1.0")
    )


def test_dose_check_command(tmp_path: Path) -> None:
    """`modality-agent dose-check FILE...`: exit 0 for a good report, 1 naming the problem."""
    good = write(tmp_path, build(), "good.dcm")
    bad_ds = build()
    _dlp_total_off(bad_ds)
    bad = write(tmp_path, bad_ds, "bad.dcm")
    agent = [sys.executable, "-m", "agent", "dose-check"]
    ok = subprocess.run([*agent, str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and "TID 10011 content OK" in ok.stdout
    no = subprocess.run([*agent, str(good), str(bad)], capture_output=True, text=True)
    assert no.returncode == 1 and "not the sum" in no.stdout


@pytest.mark.parametrize(
    ("given", "why"),
    [
        ({"size_m": 168}, "size_m: expected metres (e.g. 1.75), above 0 and at most 3"),
        ({"weight_kg": 0}, "weight_kg: expected kilograms, above 0"),
        ({"weight_kg": "heavy"}, "weight_kg: expected kilograms"),
        ({"size_m": True}, "size_m: expected metres"),
    ],
)
def test_weight_and_size_by_hand_are_checked(given: dict[str, object], why: str) -> None:
    from agent.control.protocol import OpError
    from agent.operations import _patient_and_procedure

    hand = {"patient_id": "P1", "patient_name": "DOE^JANE"}
    patient, _ = _patient_and_procedure({**hand, "weight_kg": 82.5, "size_m": 1.7})
    assert (patient.weight_kg, patient.size_m) == ("82.5", "1.7")
    with pytest.raises(OpError, match=re.escape(why)):
        _patient_and_procedure({**hand, **given})
