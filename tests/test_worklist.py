"""The worklist client against DCMTK's wlmscpfs serving files these tests write: character sets
kept byte for byte, matching keys, safety information, large lists, the stale list when the RIS
is down, and answers that are wrong in every way we could think of. Also the pure parts: the date
across midnight, the character set decisions and the rule for our own text."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydicom import dcmwrite
from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from agent.config import WorklistSettings
from agent.dicom import modules
from agent.exam import Encoded
from agent.worklist import charset
from agent.worklist.item import BadItem, WorklistItem, parse
from agent.worklist.query import Filter, date_range, identifier, local_today, matches
from agent.worklist.service import Worklist
from tests.peers import free_port, require, wait_port

TODAY = date.today().strftime("%Y%m%d")
JAPANESE_NAME = (
    b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B"
)
LATIN1_NAME = "Müller^Jürgen".encode("latin-1")
UTF8_NAME = "Ωμέγα^Ζωή".encode()
LATIN1_DIAGNOSIS = "Lungenembolie? Ödem".encode("latin-1")


@dataclass
class Item:
    """One worklist file's content; `name` as encoded (bytes), `charset` as written."""

    accession: str
    name: bytes = b"DOE^JANE"
    charset: str | Sequence[str] | None = None
    modality: str = "CT"
    station: str = "CT_TEST"
    study_uid: str | None = None
    sps_id: str = ""
    date: str = TODAY
    allergies: Sequence[str] = ()
    alerts: Sequence[str] = ()
    pregnancy: int | None = None
    weight: str = "70.5"
    size: str = "1.68"
    birth_date: str = "19800102"
    sex: str = "F"
    description: bytes = b"CT CHEST"
    patient_id: str = ""
    diagnosis: bytes = b"SUSPECTED PULMONARY EMBOLISM"  # Admitting Diagnoses Description
    diagnosis_code: tuple[str, str, str] | None = ("59282003", "SCT", "Pulmonary embolism")
    procedure_code: tuple[str, str, str] | None = ("24627-2", "LN", "CT Chest")
    reason: str = "DYSPNOEA"  # Reason for the Requested Procedure
    reason_code: tuple[str, str, str] | None = ("267036007", "SCT", "Dyspnea")

    def dataset(self) -> Dataset:
        ds = Dataset()
        if self.charset is not None:
            ds.SpecificCharacterSet = self.charset
        ds.PatientID = self.patient_id or f"PID-{self.accession}"
        for tag, vr, raw in (  # as given, however wrong: never decoded and encoded again
            (0x00100010, "PN", self.name),
            (0x00100030, "DA", self.birth_date.encode()),
            (0x00100040, "CS", self.sex.encode()),
            (0x00101030, "DS", self.weight.encode()),
            (0x00101020, "DS", self.size.encode()),
            (0x00321060, "LO", self.description),
            *([(0x00081080, "LO", self.diagnosis)] if self.diagnosis else []),
        ):
            value = raw + b" " * (len(raw) % 2)
            ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
        if self.allergies:
            ds.Allergies = list(self.allergies)
        if self.alerts:
            ds.MedicalAlerts = list(self.alerts)
        if self.pregnancy is not None:
            ds.PregnancyStatus = self.pregnancy
        ds.AccessionNumber = self.accession
        ds.ReferringPhysicianName = "WHO^REFERRING"
        ds.RequestedProcedureID = f"RP{self.accession}"[:16]
        if self.diagnosis_code:
            ds.AdmittingDiagnosesCodeSequence = [code_item(*self.diagnosis_code)]
        if self.procedure_code:
            ds.RequestedProcedureCodeSequence = [code_item(*self.procedure_code)]
        if self.reason:
            ds.ReasonForTheRequestedProcedure = self.reason
        if self.reason_code:
            ds.ReasonForRequestedProcedureCodeSequence = [code_item(*self.reason_code)]
        if self.study_uid:
            ds.StudyInstanceUID = self.study_uid
        step = Dataset()
        step.ScheduledStationAETitle = self.station
        step.ScheduledProcedureStepStartDate = self.date
        step.ScheduledProcedureStepStartTime = "093000"
        step.Modality = self.modality
        step.ScheduledProcedureStepID = self.sps_id or f"S{self.accession}"[:16]
        step.ScheduledProcedureStepDescription = "CHEST WITHOUT CONTRAST"
        step.ScheduledProtocolCodeSequence = [code_item("CTCHEST", "99LOCAL", "CT chest routine")]
        ds.ScheduledProcedureStepSequence = [step]
        # the raw values above are then written as they are (pydicom converts raw values
        # when the character set differs from the one a dataset was read in)
        ds.set_original_encoding(
            False,
            True,
            convert_encodings(
                self.charset if isinstance(self.charset, str) else list(self.charset or [])
            ),
        )
        return ds


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


def write_items(folder: Path, items: Sequence[Item]) -> None:
    """The worklist files (one per item) in `folder`, with the empty lockfile wlmscpfs needs."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lockfile").touch()
    for i, item in enumerate(items):
        dcmwrite(folder / f"item{i:04d}.wl", item.dataset(), implicit_vr=False, little_endian=True)


@contextlib.contextmanager
def wlmscpfs(root: Path, items: Sequence[Item], ae_title: str = "RIS") -> Iterator[int]:
    """DCMTK's worklist SCP on a free loopback port serving `items` (charsets kept: -csk;
    items without a Study Instance UID too: -dfr)."""
    (binary,) = require("wlmscpfs")
    write_items(root / ae_title, items)
    port = free_port()
    log = open(root / f"wlmscpfs-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [binary, "-dfp", str(root), "-csk", "-dfr", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    try:
        wait_port(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def settings(port: int, **kw: object) -> WorklistSettings:
    base = WorklistSettings(
        ae_title="RIS",
        host="127.0.0.1",
        port=port,
        station_ae_title="CT_TEST",
        connect_timeout_s=2,
        acse_timeout_s=5,
        dimse_timeout_s=5,
        query_timeout_s=20,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def worklist(tmp_path: Path, port: int, **kw: object) -> Worklist:
    return Worklist("CT_TEST", settings(port, **kw), tmp_path / "worklist.json")


CHARSET_ITEMS = [
    Item(
        "A-LATIN1",
        LATIN1_NAME,
        "ISO_IR 100",
        study_uid="1.2.826.0.1.3680043.10.999.1",
        diagnosis=LATIN1_DIAGNOSIS,
    ),
    Item("A-UTF8", UTF8_NAME, "ISO_IR 192"),
    Item("A-JIS", JAPANESE_NAME, ["", "ISO 2022 IR 87"], description=b"\x1b$B6;It\x1b(B CT"),
    Item("A-MR", modality="MR"),
    Item("A-SAFETY", allergies=["IODINE CONTRAST", "LATEX"], alerts=["PACEMAKER"], pregnancy=2),
    Item("A-OTHER-STATION", station="CT_OTHER"),
]


def test_wlmscpfs_charsets_kept_byte_exact_and_matching(tmp_path: Path) -> None:
    with wlmscpfs(tmp_path / "wl", CHARSET_ITEMS) as port:
        listing = worklist(tmp_path, port).query()
    assert not listing.stale and listing.error is None and listing.bad_answers == 0
    by_acc = {i.accession_number: i for i in listing.items}
    # the MR item (modality) and the other station's item (station AE) are not asked for
    assert sorted(by_acc) == ["A-JIS", "A-LATIN1", "A-SAFETY", "A-UTF8"]
    expected = {
        "A-LATIN1": (LATIN1_NAME, ("ISO_IR 100",), "Müller^Jürgen"),
        "A-UTF8": (UTF8_NAME, ("ISO_IR 192",), "Ωμέγα^Ζωή"),
        "A-JIS": (JAPANESE_NAME, ("", "ISO 2022 IR 87"), "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    }
    for acc, (raw, terms, decoded) in expected.items():
        item = by_acc[acc]
        assert item.character_set == terms and item.notes == () and item.usable
        assert item.patient_name == decoded
        (name,) = [e for e in item.patient_encoded if e.tag == 0x00100010]
        assert name.value.rstrip(b" ") == raw  # as encoded, padding aside
    assert by_acc["A-JIS"].requested_procedure_description == "胸部 CT"
    (description,) = [e for e in by_acc["A-JIS"].scheduled.study if e.tag == 0x00081030]
    assert description.value.rstrip(b" ") == b"\x1b$B6;It\x1b(B CT"
    # a Study Instance UID only where the item has one
    assert by_acc["A-LATIN1"].study_instance_uid == "1.2.826.0.1.3680043.10.999.1"
    assert by_acc["A-UTF8"].study_instance_uid == ""
    # what IHE REM wants in the dose report: diagnoses (as encoded) and the procedure code
    latin1 = by_acc["A-LATIN1"]
    assert latin1.admitting_diagnoses == "Lungenembolie? Ödem"
    (diagnosis,) = [e for e in latin1.patient_encoded if e.tag == 0x00081080]
    assert diagnosis.value.rstrip(b" ") == LATIN1_DIAGNOSIS
    assert latin1.procedure_codes == (("24627-2", "LN", "CT Chest"),)
    assert latin1.scheduled.diagnosis_codes == ()  # wlmscpfs never returns (0008,1084)
    assert latin1.to_json()["procedure_codes"] == [
        {"value": "24627-2", "scheme": "LN", "meaning": "CT Chest"}
    ]
    safety = by_acc["A-SAFETY"].to_json()
    assert safety["allergies"] == ["IODINE CONTRAST", "LATEX"]
    assert safety["medical_alerts"] == ["PACEMAKER"]
    assert safety["pregnancy_status"] == "possibly pregnant"
    assert (safety["weight_kg"], safety["size_m"]) == ("70.5", "1.68")
    assert safety["protocol_codes"] == [
        {"value": "CTCHEST", "scheme": "99LOCAL", "meaning": "CT chest routine"}
    ]


def test_wlmscpfs_filters_from_the_command_line(tmp_path: Path) -> None:
    with wlmscpfs(tmp_path / "wl", CHARSET_ITEMS) as port:
        wl = worklist(tmp_path, port)
        (one,) = wl.query(Filter(accession="A-SAFETY")).items
        assert one.accession_number == "A-SAFETY"
        (jis,) = wl.query(Filter(patient_name="Yamada*")).items
        assert jis.accession_number == "A-JIS"
        assert wl.query(Filter(sps_id="SA-UTF8")).items[0].accession_number == "A-UTF8"
        tomorrow = date.today() + timedelta(days=1)
        assert wl.query(Filter(dates=(tomorrow, tomorrow))).items == []


def test_500_items_and_the_cancel_at_max_items(tmp_path: Path) -> None:
    items = [Item(f"B{n:04d}") for n in range(500)]
    with wlmscpfs(tmp_path / "wl", items) as port:
        full = worklist(tmp_path, port).query()
        assert len(full.items) == 500 and not full.truncated and full.error is None
        assert len({i.accession_number for i in full.items}) == 500
        cut = worklist(tmp_path, port, max_items=50).query()
        assert len(cut.items) == 50 and cut.truncated and cut.error is None
        # the SCP took the C-CANCEL: the same association-less client asks again at once
        assert len(worklist(tmp_path, port).query().items) == 500


def test_the_ris_down_serves_the_kept_list_with_its_age(tmp_path: Path) -> None:
    with wlmscpfs(tmp_path / "wl", CHARSET_ITEMS) as port:
        fresh = worklist(tmp_path, port).query()
    assert len(fresh.items) == 4
    # the SCP is gone; a new component (a restarted daemon) reads the kept list from disk
    stale = worklist(tmp_path, port).query()
    assert stale.stale and stale.error and "cannot connect" in stale.error
    assert stale.fetched_at == fresh.fetched_at and len(stale.items) == 4
    doc = stale.to_json()
    assert doc["stale"] and doc["age_seconds"] is not None and doc["age_seconds"] >= 0
    # matched locally as the RIS would: by accession, and byte-exact values kept
    (jis,) = worklist(tmp_path, port).query(Filter(accession="A-JIS")).items
    assert any(e.value.rstrip(b" ") == JAPANESE_NAME for e in jis.patient_encoded)


def test_never_answered_and_nothing_kept(tmp_path: Path) -> None:
    listing = worklist(tmp_path, free_port()).query()
    assert listing.stale and listing.items == [] and listing.fetched_at is None
    assert listing.to_json()["age_seconds"] is None


BAD_ITEMS = [
    Item("C-NOCS-UTF8", UTF8_NAME, None),  # no Specific Character Set, UTF-8 bytes
    Item("C-WRONG-192", LATIN1_NAME, "ISO_IR 192"),  # says UTF-8, is Latin-1
    Item("C-UNKNOWN", LATIN1_NAME, "ISO_IR 999"),  # a term nobody knows
    Item("C-NOCS-JIS", JAPANESE_NAME, None),  # ISO 2022 escapes, undeclared
    Item("C-GARBAGE", birth_date="19801399", weight="heavy", sex="X", pregnancy=9),
    Item("C-BADUID", study_uid="1.2.03.x"),
    Item("C-NOPID", patient_id=" "),
]


def test_bad_answers_are_handled_never_raised(tmp_path: Path) -> None:
    with wlmscpfs(tmp_path / "wl", BAD_ITEMS) as port:
        listing = worklist(tmp_path, port).query()
    by_acc = {i.accession_number: i for i in listing.items}
    assert len(by_acc) == len(BAD_ITEMS), by_acc.keys()
    nocs = by_acc["C-NOCS-UTF8"]
    assert nocs.character_set == ("ISO_IR 192",) and nocs.patient_name == "Ωμέγα^Ζωή"
    assert "no Specific Character Set" in nocs.notes[0]
    wrong = by_acc["C-WRONG-192"]
    assert wrong.character_set == ("ISO_IR 100",) and wrong.patient_name == "Müller^Jürgen"
    assert by_acc["C-UNKNOWN"].character_set == ("ISO_IR 100",)
    assert by_acc["C-NOCS-JIS"].character_set == ("", "ISO 2022 IR 87")
    garbage = by_acc["C-GARBAGE"]
    assert garbage.birth_date is None and garbage.weight_kg == "" and garbage.sex == ""
    assert garbage.pregnancy_status == "" and len(garbage.notes) == 4 and garbage.usable
    assert not by_acc["C-BADUID"].usable and "Study Instance UID" in by_acc["C-BADUID"].problems[0]
    assert not by_acc["C-NOPID"].usable
    for item in listing.items:  # every one of them usable or saying why, all printable
        assert item.to_json()["usable"] == (not item.problems)


def test_unreadable_identifiers_raise_bad_item_only() -> None:
    good = Item("D1").dataset()
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, good)
    data = buf.getvalue()
    assert parse(data, False).accession_number == "D1"
    for garbage in (data[:37], b"\xff" * 64, data[:10] + b"\x00\xff\xff\xff" + data[14:], b""):
        with contextlib.suppress(BadItem):  # BadItem, or read as something: never another error
            parse(garbage, False)


# -- pure parts ------------------------------------------------------------------------------


def test_the_date_is_today_in_local_time_across_midnight() -> None:
    tz = timezone(timedelta(hours=9))  # a console east of UTC: its day starts before UTC's
    before = datetime(2026, 11, 26, 23, 59, 59, tzinfo=tz)
    after = datetime(2026, 11, 27, 0, 0, 1, tzinfo=tz)
    s = settings(104)
    # the clock reads UTC; the date is the console's
    assert local_today(lambda: before.astimezone(UTC), tz) == date(2026, 11, 26)
    assert local_today(lambda: after.astimezone(UTC), tz) == date(2026, 11, 27)
    step = identifier(s, Filter(), date(2026, 11, 27)).ScheduledProcedureStepSequence[0]
    assert step.ScheduledProcedureStepStartDate == "20261127"
    assert step.Modality == "CT" and step.ScheduledStationAETitle == "CT_TEST"
    wide = replace(s, days_before=1, days_after=2)
    assert date_range(wide, Filter(), date(2026, 11, 27)) == (
        date(2026, 11, 26),
        date(2026, 11, 29),
    )
    step = identifier(wide, Filter(), date(2026, 11, 27)).ScheduledProcedureStepSequence[0]
    assert step.ScheduledProcedureStepStartDate == "20261126-20261129"
    # a kept list from yesterday no longer matches today's items
    yesterday_item = _item(Item("E1", date="20261126"))
    assert matches(yesterday_item, s, Filter(), date(2026, 11, 26))
    assert not matches(yesterday_item, s, Filter(), date(2026, 11, 27))


def test_local_clock_is_read_at_each_query() -> None:
    """local_today() takes the console's zone from the clock's reading, not a fixed one."""
    utc_late = datetime(2026, 11, 26, 23, 30, tzinfo=UTC)
    assert local_today(lambda: utc_late) == utc_late.astimezone().date()


def _item(it: Item) -> WorklistItem:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, it.dataset())
    return parse(buf.getvalue(), False)


@pytest.mark.parametrize(
    ("terms", "text", "fitted"),
    [
        (("ISO_IR 100",), "Hôpital 病院", "Hôpital ??"),
        (("ISO_IR 192",), "Hôpital 病院", "Hôpital 病院"),
        (("", "ISO 2022 IR 87"), "Hôpital 病院", "H?pital 病院"),
        ((), "CT1", "CT1"),
    ],
)
def test_our_text_is_fitted_into_the_worklist_set(
    terms: tuple[str, ...], text: str, fitted: str
) -> None:
    assert charset.fit(text, terms) == fitted


def test_a_config_value_the_set_cannot_hold_is_replaced_not_raised() -> None:
    from agent.exam import open_exam
    from tests.factory import EQUIPMENT, UIDS

    item = _item(Item("F1", LATIN1_NAME, "ISO_IR 100"))
    patient, procedure = item.exam_parts()
    exam = open_exam(patient, procedure, UIDS, operator="佐藤^花子")
    eq = replace(EQUIPMENT, institution_name="総合病院 Hôpital")
    ds = modules.exam_preview(exam, eq)
    assert sorted(modules.fit_text(ds, modules.character_set(ds))) == [
        "InstitutionName",
        "OperatorsName",
    ]
    assert ds.InstitutionName == "???? Hôpital" and str(ds.OperatorsName) == "??^??"
    assert ds.get_item(0x00100010).value.original_string.rstrip(b" ") == LATIN1_NAME


def test_the_exam_keeps_what_ihe_rem_wants_across_a_restart(tmp_path: Path) -> None:
    """Weight, size, diagnoses, reason and procedure codes of the item survive the exam
    book's save and load (a daemon restarted mid-exam still makes a complete dose report)."""
    from agent.exam import open_exam
    from agent.exam_book import ExamBook
    from tests.factory import EQUIPMENT, UIDS

    item = _item(Item("R1", LATIN1_NAME, "ISO_IR 100", diagnosis=LATIN1_DIAGNOSIS))
    patient, procedure = item.exam_parts()
    assert (patient.weight_kg, patient.size_m) == ("70.5", "1.68")
    assert procedure.scheduled is not None
    assert len(procedure.scheduled.diagnosis_codes) == 1
    assert len(procedure.scheduled.reason_codes) == len(procedure.scheduled.procedure_codes) == 1
    exam = open_exam(patient, procedure, UIDS)
    ExamBook(tmp_path / "exams.json").start(exam)
    assert ExamBook(tmp_path / "exams.json").current == exam
    ds = modules.exam_preview(exam, EQUIPMENT)
    assert ds.AdmittingDiagnosesCodeSequence[0].CodeValue == b"59282003"  # as encoded
    assert ds.get_item(0x00081080).value.rstrip(b" ") == LATIN1_DIAGNOSIS
    request = modules.request_attributes(exam)
    assert request.ReasonForTheRequestedProcedure == b"DYSPNOEA"
    assert request.ReasonForRequestedProcedureCodeSequence[0].CodeMeaning == b"Dyspnea "


def test_incomplete_codes_are_left_out_with_a_note() -> None:
    item = _item(Item("R2", procedure_code=("24627-2", "LN", ""), diagnosis_code=None))
    assert item.procedure_codes == () and item.usable
    assert "Requested Procedure Code Sequence: 1 incomplete code(s) left out" in item.notes


OVERLONG_REASON = "Dyspnoea and pleuritic chest pain since this morning, D-dimer raised: exclude PE"
ICD10_MEANING = (  # an ICD-10 Code Meaning longer than LO's 64 characters
    "Pulmonary embolism without acute cor pulmonale, other and unspecified pulmonary embolism"
)


def _values(elements: Sequence[Encoded]) -> dict[int, bytes]:
    return {e.tag: e.value.rstrip(b" ") for e in elements}


def _kept_byte_exact(item: WorklistItem) -> None:
    """What the item had besides the value left out is there, as encoded."""
    from agent.exam import open_exam
    from tests.factory import EQUIPMENT, UIDS

    assert item.usable, item.problems
    patient, procedure = item.exam_parts()
    ds = modules.exam_preview(open_exam(patient, procedure, UIDS), EQUIPMENT)
    assert ds.get_item(0x00100010).value.original_string.rstrip(b" ") == LATIN1_NAME
    assert ds.get_item(0x00081030).value.rstrip(b" ") == b"CT CHEST"  # Study Description


def test_an_overlong_reason_is_left_out_not_the_item() -> None:
    item = _item(
        Item("R3", LATIN1_NAME, "ISO_IR 100", diagnosis=LATIN1_DIAGNOSIS, reason=OVERLONG_REASON)
    )
    _kept_byte_exact(item)
    assert len(OVERLONG_REASON) > 64
    note = next(n for n in item.notes if n.startswith("Reason for the Requested Procedure"))
    assert "left out" in note and "ReasonForTheRequestedProcedure" in note
    request = item.scheduled.request
    assert 0x00401002 not in {e.tag for e in request}
    assert _values(item.patient_encoded)[0x00081080] == LATIN1_DIAGNOSIS
    assert [c[2].value for c in item.scheduled.reason_codes] == [b"Dyspnea "]
    assert item.procedure_codes == (("24627-2", "LN", "CT Chest"),)


def test_an_overlong_diagnoses_description_is_left_out_not_the_item() -> None:
    item = _item(Item("R4", LATIN1_NAME, "ISO_IR 100", diagnosis=b"X" * 65))
    _kept_byte_exact(item)
    assert any(n.startswith("Admitting Diagnoses Description left out") for n in item.notes)
    assert 0x00081080 not in {e.tag for e in item.patient_encoded}
    assert item.admitting_diagnoses == ""
    assert _values(item.scheduled.request)[0x00401002] == b"DYSPNOEA"


@pytest.mark.parametrize("which", ["diagnosis_code", "procedure_code", "reason_code"])
def test_a_code_with_an_overlong_meaning_is_left_out_not_the_item(which: str) -> None:
    codes = {
        "diagnosis_code": ("I26.9", "I10", "Pulmonary embolism"),
        "procedure_code": ("24627-2", "LN", "CT Chest"),
        "reason_code": ("267036007", "SCT", "Dyspnea"),
    }
    codes[which] = (codes[which][0], codes[which][1], ICD10_MEANING)
    it = Item("R5", LATIN1_NAME, "ISO_IR 100", diagnosis=LATIN1_DIAGNOSIS, **codes)  # type: ignore[arg-type]
    item = _item(it)
    _kept_byte_exact(item)
    assert item.scheduled is not None
    kept = {
        "diagnosis_code": item.scheduled.diagnosis_codes,
        "procedure_code": item.scheduled.procedure_codes,
        "reason_code": item.scheduled.reason_codes,
    }
    assert kept.pop(which) == ()
    for name, left in kept.items():  # the other codes, byte for byte as the RIS sent them
        assert [tuple(e.value.rstrip(b" ") for e in c) for c in left] == [
            tuple(v.encode() for v in codes[name])
        ]
    assert any("a code left out" in n and "CodeMeaning" in n for n in item.notes), item.notes
    assert _values(item.patient_encoded)[0x00081080] == LATIN1_DIAGNOSIS
    assert _values(item.scheduled.request)[0x00401002] == b"DYSPNOEA"


def test_a_value_that_blocked_an_item_before_still_does() -> None:
    item = _item(Item("R6", description=b"D" * 65))  # Requested Procedure Description: LO
    assert not item.usable
    assert any("does not fit its DICOM type" in p for p in item.problems), item.problems
