"""End to end: a real wlmscpfs (and Orthanc with its worklist plugin) -> the real daemon and
CLI -> `exam start --accession` -> `simulate` (mock) -> `exam end` -> `wait` -> a real
storescp; the archived images carry the item's values byte for byte and pass dciodvfy."""

from __future__ import annotations

import json
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pydicom
import pytest

from tests import test_worklist as wl
from tests.agent_process import Agent, Dest, write_config
from tests.orthanc import orthanc as run_orthanc
from tests.orthanc import plugin
from tests.peers import VALIDATE_DICOM, XRAY_DOSE_SR, require, storescp

PN, LO = 0x00100010, 0x00081030


def start(
    tmp_path: Path, ris_port: int, stack: ExitStack, ris_ae: str = "RIS", extra: str = ""
) -> Agent:
    archive = stack.enter_context(storescp(tmp_path / "archive"))
    worklist = (
        f'\n[worklist]\nae_title = "{ris_ae}"\nhost = "127.0.0.1"\nport = {ris_port}\n'
        "connect_timeout = 2\nacse_timeout = 5\ndimse_timeout = 5\nquery_timeout = 20\n"
        f"refresh_interval = 3600\n{extra}"
    )
    agent = Agent(write_config(tmp_path, [Dest("PACS", archive)], worklist), tmp_path / "d.log")
    agent.verbose = True  # INFO: the worklist's patient data must not show there (SPEC §9)
    agent.start()
    stack.callback(agent.stop)
    return agent


def acquire(agent: Agent, *start_args: str) -> dict[str, object]:
    r = agent.cli("exam", "start", *start_args, "--json")
    assert r.returncode == 0, r.stderr
    started: dict[str, object] = json.loads(r.stdout)
    assert agent.cli("simulate", "--series", "1", "--slices", "3").returncode == 0
    assert agent.cli("exam", "end").returncode == 0
    r = agent.cli("wait", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    return started


def images(tmp_path: Path) -> list[pydicom.Dataset]:
    """The CT images at the archive (the exam's dose report left out)."""
    files = sorted(f for f in (tmp_path / "archive").rglob("*") if f.is_file())
    found = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    return [ds for ds in found if ds.SOPClassUID != XRAY_DOSE_SR]


def raw(ds: pydicom.Dataset, tag: int) -> bytes:
    elem = ds.get_item(tag)
    assert elem is not None and elem.is_raw, hex(tag)
    return bytes(elem.value).rstrip(b" ")


def validate(tmp_path: Path) -> None:
    require("dciodvfy")
    v = subprocess.run(
        [str(VALIDATE_DICOM), str(tmp_path / "archive")], capture_output=True, text=True
    )
    assert v.returncode == 0, v.stdout


@pytest.mark.parametrize("accession", ["A-LATIN1", "A-UTF8", "A-JIS"])
def test_worklist_to_archive_byte_exact(tmp_path: Path, stack: ExitStack, accession: str) -> None:
    port = stack.enter_context(wl.wlmscpfs(tmp_path / "wl", wl.CHARSET_ITEMS))
    agent = start(tmp_path, port, stack)
    listing = agent.json("worklist")
    assert not listing["stale"] and listing["count"] == 4
    (item,) = [i for i in listing["items"] if i["accession_number"] == accession]
    source = {i.accession: i for i in wl.CHARSET_ITEMS}[accession]
    exam = acquire(agent, "--accession", accession, "--operator", "TECH^ONE")["exam"]
    assert isinstance(exam, dict) and exam["unscheduled"] is False
    got = images(tmp_path)
    assert len(got) == 3
    for ds in got:
        # the names as encoded (raw bytes), and decoded the same as the worklist said
        assert raw(ds, PN) == source.name and str(ds.PatientName) == item["patient_name"]
        assert raw(ds, LO) == source.description.rstrip(b" ")
        assert ds.SpecificCharacterSet == source.charset
        assert ds.AccessionNumber == accession and ds.PatientID == f"PID-{accession}"
        assert ds.PatientBirthDate == "19800102" and ds.PatientSex == "F"
        assert str(ds.PatientWeight) == "70.5" and str(ds.PatientSize) == "1.68"
        assert str(ds.ReferringPhysicianName) == "WHO^REFERRING"
        if source.study_uid:
            assert ds.StudyInstanceUID == source.study_uid
        else:  # a new one, the same for every image of the exam
            assert ds.StudyInstanceUID == exam["study_instance_uid"]
        (req,) = ds.RequestAttributesSequence
        assert req.RequestedProcedureID == f"RP{accession}"[:16]
        assert req.ScheduledProcedureStepID == f"S{accession}"[:16]
        assert req.ScheduledProcedureStepDescription == "CHEST WITHOUT CONTRAST"
        assert req.AccessionNumber == accession
        (code,) = req.ScheduledProtocolCodeSequence
        assert (code.CodeValue, code.CodingSchemeDesignator) == ("CTCHEST", "99LOCAL")
        assert "CommentsOnThePerformedProcedureStep" not in ds
    (study,) = agent.json("queue")["studies"]
    assert study["accession_number"] == accession and study["unscheduled"] is False
    validate(tmp_path)
    log = (tmp_path / "d.log").read_text(errors="replace")
    assert "worklist query: 4 item(s)" in log
    assert f"PID-{accession}" not in log and item["patient_name"].split("^")[0] not in log


def test_safety_information_reaches_the_images(tmp_path: Path, stack: ExitStack) -> None:
    port = stack.enter_context(wl.wlmscpfs(tmp_path / "wl", wl.CHARSET_ITEMS))
    agent = start(tmp_path, port, stack)
    r = agent.cli("worklist", "--accession", "A-SAFETY")  # the person-readable listing
    assert r.returncode == 0, r.stderr
    assert "allergies: IODINE CONTRAST, LATEX" in r.stdout
    assert "pregnancy: possibly pregnant" in r.stdout
    acquire(agent, "--sps-id", "SA-SAFETY")
    ds = images(tmp_path)[0]
    assert list(ds.Allergies) == ["IODINE CONTRAST", "LATEX"]
    assert ds.MedicalAlerts == "PACEMAKER" and ds.PregnancyStatus == 2
    validate(tmp_path)


def test_no_match_several_and_unusable_are_clear_errors(tmp_path: Path, stack: ExitStack) -> None:
    items = [*wl.CHARSET_ITEMS, wl.Item("DUP", sps_id="SPS-1"), wl.Item("DUP", sps_id="SPS-2")]
    items.append(wl.Item("BADUID", study_uid="1.2.03.x"))
    port = stack.enter_context(wl.wlmscpfs(tmp_path / "wl", items))
    agent = start(tmp_path, port, stack)
    r = agent.cli("exam", "start", "--accession", "NOPE")
    assert r.returncode == 1 and "no worklist item with accession NOPE" in r.stderr
    assert "A-SAFETY" in r.stderr  # what the list does have
    r = agent.cli("exam", "start", "--accession", "DUP")
    assert r.returncode == 1 and "2 worklist items" in r.stderr
    assert "SPS-1" in r.stderr and "SPS-2" in r.stderr and "--sps-id" in r.stderr
    r = agent.cli("exam", "start", "--accession", "BADUID")
    assert r.returncode == 1 and "Study Instance UID" in r.stderr
    acquire(agent, "--accession", "DUP", "--sps-id", "SPS-2")
    assert images(tmp_path)[0].RequestAttributesSequence[0].ScheduledProcedureStepID == "SPS-2"


def test_ris_down_stale_list_and_exam_start_from_it(tmp_path: Path, stack: ExitStack) -> None:
    peer = ExitStack()
    port = peer.enter_context(wl.wlmscpfs(tmp_path / "wl", wl.CHARSET_ITEMS))
    agent = start(tmp_path, port, stack)
    assert agent.json("worklist")["count"] == 4
    peer.close()  # the RIS goes down
    listing = agent.json("worklist")
    assert listing["stale"] and listing["count"] == 4 and "cannot connect" in listing["error"]
    assert listing["age_seconds"] >= 0 and listing["fetched_at"]
    r = agent.cli("worklist")
    assert r.returncode == 0 and "STALE" in r.stderr and "s old" in r.stderr
    alarms = agent.json("queue")["alarms"]
    assert any(a["kind"] == "worklist_unreachable" for a in alarms)
    acquire(agent, "--accession", "A-JIS")
    ds = images(tmp_path)[0]
    assert raw(ds, PN) == wl.JAPANESE_NAME
    validate(tmp_path)


def test_unscheduled_exams_are_flagged(tmp_path: Path, stack: ExitStack) -> None:
    port = stack.enter_context(wl.wlmscpfs(tmp_path / "wl", wl.CHARSET_ITEMS))
    agent = start(tmp_path, port, stack)
    # by hand: the accession is just a value, even with a worklist configured
    acquire(agent, "--patient-id", "P9", "--patient-name", "ROE^RICHARD", "--accession", "A-UTF8")
    acquire(agent, "--unscheduled")
    studies = agent.json("queue")["studies"]
    assert [s["unscheduled"] for s in studies] == [True, True]
    got = images(tmp_path)
    comments = {str(ds.CommentsOnThePerformedProcedureStep) for ds in got}
    assert comments == {
        "UNSCHEDULED: patient registered by hand, no worklist item",
        "UNSCHEDULED: unidentified emergency patient, generated identifiers",
    }
    assert all("RequestAttributesSequence" not in ds for ds in got)
    validate(tmp_path)


def test_a_config_value_the_item_set_cannot_hold(tmp_path: Path, stack: ExitStack) -> None:
    port = stack.enter_context(wl.wlmscpfs(tmp_path / "wl", wl.CHARSET_ITEMS))
    agent = start(tmp_path, port, stack)
    cfg = agent.config.read_text().replace('"General Hospital"', '"総合病院 General"')
    agent.config.write_text(cfg)
    agent.stop()
    agent.start()
    started = acquire(agent, "--accession", "A-LATIN1")
    assert "InstitutionName" in " ".join(started["warnings"])  # type: ignore[arg-type]
    ds = images(tmp_path)[0]
    assert ds.SpecificCharacterSet == "ISO_IR 100" and raw(ds, PN) == wl.LATIN1_NAME
    assert ds.InstitutionName == "???? General"
    validate(tmp_path)


# -- Orthanc and its worklist plugin ---------------------------------------------------------


def orthanc(tmp_path: Path, stack: ExitStack) -> int:
    folder = tmp_path / "orthanc"
    wl.write_items(folder / "worklists", wl.CHARSET_ITEMS)
    return stack.enter_context(
        run_orthanc(
            folder,
            DefaultEncoding="Utf8",
            DicomModalities={"console": ["CT_TEST", "127.0.0.1", 104]},
            Plugins=[str(plugin("ModalityWorklists"))],
            Worklists={"Enable": True, "Database": str(folder / "worklists")},
        )
    )


def test_orthanc_worklist_to_archive(tmp_path: Path, stack: ExitStack) -> None:
    port = orthanc(tmp_path, stack)
    agent = start(tmp_path, port, stack, ris_ae="ORTHANC")
    listing = agent.json("worklist")
    assert not listing["stale"], listing["error"]
    by_acc = {i["accession_number"]: i for i in listing["items"]}
    assert sorted(by_acc) == ["A-JIS", "A-LATIN1", "A-SAFETY", "A-UTF8"]  # MR, other station out
    # Orthanc answers in its DefaultEncoding (UTF-8): the names survive, decoded the same
    assert by_acc["A-LATIN1"]["patient_name"] == "Müller^Jürgen"
    assert by_acc["A-UTF8"]["patient_name"] == "Ωμέγα^Ζωή"
    assert by_acc["A-JIS"]["patient_name"] == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert by_acc["A-SAFETY"]["allergies"] == ["IODINE CONTRAST", "LATEX"]
    assert by_acc["A-SAFETY"]["pregnancy_status"] == "possibly pregnant"
    acquire(agent, "--accession", "A-UTF8")
    ds = images(tmp_path)[0]
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert raw(ds, PN) == wl.UTF8_NAME and str(ds.PatientName) == "Ωμέγα^Ζωή"
    validate(tmp_path)


def test_orthanc_item_gives_the_dose_report_what_ihe_rem_wants(
    tmp_path: Path, stack: ExitStack
) -> None:
    """Size, weight, admitting diagnoses, reason and procedure codes from the RIS: the
    report of a (simulated) acquisition passes dciodvfy -profile IHEREM with no error."""
    (dciodvfy,) = require("dciodvfy")
    port = orthanc(tmp_path, stack)
    agent = start(tmp_path, port, stack, ris_ae="ORTHANC")
    cfg = agent.config.read_text()
    agent.config.write_text(
        cfg.replace("[agent]\n", "[agent]\ndose_report_when_simulated = true\n")
    )
    agent.stop()
    agent.start()
    acquire(agent, "--accession", "A-LATIN1")
    (sr,) = [f for f in (tmp_path / "archive").rglob("SR*") if f.is_file()]
    out = subprocess.run([dciodvfy, "-profile", "IHEREM", str(sr)], capture_output=True, text=True)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if "Error" in line]
    assert errors == [], errors
    ds = pydicom.dcmread(sr)
    assert ds.AdmittingDiagnosesDescription == "Lungenembolie? Ödem"
    assert ds.PerformedProcedureCodeSequence[0].CodeMeaning == "CT Chest"
    validate(tmp_path)
