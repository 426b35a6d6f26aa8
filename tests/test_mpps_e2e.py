"""MPPS end to end: the real daemon and CLI (mock scanner), a real storescp, a real wlmscpfs
for the scheduled case, and the MPPS SCP written for the tests (no Debian package provides
one: tests/mpps_scp.py). N-CREATE and N-SET checked attribute by attribute for a scheduled,
an unscheduled, a discontinued and an abandoned exam; the RIS down through the exam and a
daemon restart, then the messages in order."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from tests import test_worklist as wl
from tests.agent_process import Agent, Dest, write_config
from tests.mpps_scp import MppsSCP
from tests.peers import archived, free_port, storescp

PN = 0x00100010


def start(
    tmp_path: Path, stack: ExitStack, ris_port: int, worklist_port: int | None = None
) -> Agent:
    archive = stack.enter_context(storescp(tmp_path / "archive"))
    extra = (
        f'\n[mpps]\nae_title = "RIS"\nhost = "127.0.0.1"\nport = {ris_port}\n'
        "connect_timeout = 2\nacse_timeout = 5\ndimse_timeout = 5\n"
    )
    if worklist_port is not None:
        extra += (
            f'\n[worklist]\nae_title = "RIS"\nhost = "127.0.0.1"\nport = {worklist_port}\n'
            "connect_timeout = 2\nacse_timeout = 5\ndimse_timeout = 5\n"
        )
    agent = Agent(write_config(tmp_path, [Dest("PACS", archive)], extra), tmp_path / "d.log")
    agent.start()
    stack.callback(agent.stop)
    return agent


def exam(agent: Agent, *start_args: str, slices: int = 3, end: tuple[str, ...] = ()) -> dict:
    r = agent.cli("exam", "start", *start_args, "--operator", "TECH^ONE", "--json")
    assert r.returncode == 0, r.stderr
    started: dict = agent.json("exam", "status")["exam"]
    if slices:
        assert agent.cli("simulate", "--series", "2", "--slices", str(slices)).returncode == 0
    r = agent.cli("exam", "end", *end)
    assert r.returncode == 0, r.stderr
    r = agent.cli("wait", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    return started


def common_create_checks(create: Dataset, started: dict) -> None:
    assert create.PerformedProcedureStepStatus == "IN PROGRESS"
    assert create.Modality == "CT"
    assert create.PerformedStationAETitle == "CT_TEST"
    assert create.PerformedStationName == "CT1"
    assert create.PerformedProcedureStepID and create.PerformedProcedureStepStartDate
    assert create.PerformedProcedureStepStartTime
    assert create.PerformedProcedureStepEndDate == "" and create.PerformedSeriesSequence == []
    (step,) = create.ScheduledStepAttributesSequence
    assert step.StudyInstanceUID == started["study_instance_uid"]


def check_final(ris: MppsSCP, uid: str, tmp_path: Path, status: str = "COMPLETED") -> Dataset:
    """The final N-SET lists every archived image under its series, nothing else."""
    final = ris.messages[-1].dataset
    assert final.PerformedProcedureStepStatus == status
    assert final.PerformedProcedureStepEndDate and final.PerformedProcedureStepEndTime
    listed = {
        (s.SeriesInstanceUID, r.ReferencedSOPInstanceUID, r.ReferencedSOPClassUID)
        for s in final.PerformedSeriesSequence
        for r in s.ReferencedImageSequence
    }
    images = archived(tmp_path / "archive")
    assert listed == {
        (str(i.SeriesInstanceUID), str(i.SOPInstanceUID), str(i.SOPClassUID)) for i in images
    }
    for s in final.PerformedSeriesSequence:
        assert s.ProtocolName and s.SeriesDescription.startswith("SIMULATED")
        assert s.OperatorsName == "TECH^ONE"
    for image in images:  # each image names the step that reports it
        (ref,) = image.ReferencedPerformedProcedureStepSequence
        assert ref.ReferencedSOPInstanceUID == uid
        assert ref.ReferencedSOPClassUID == "1.2.840.10008.3.1.2.3.3"
    return final


def test_unscheduled_exam(tmp_path: Path, stack: ExitStack) -> None:
    ris = stack.enter_context(MppsSCP())
    agent = start(tmp_path, stack, ris.port)
    started = exam(agent, "--patient-id", "P1", "--patient-name", "DOE^JANE", "--sex", "F")
    assert [m.kind for m in ris.messages] == ["N-CREATE", "N-SET"]
    assert all(m.status == 0 and m.calling_ae == "CT_TEST" for m in ris.messages)
    (uid,) = ris.steps
    create = ris.messages[0].dataset
    common_create_checks(create, started)
    assert create.PatientName == "DOE^JANE" and create.PatientID == "P1"
    assert create.PatientSex == "F"
    (step,) = create.ScheduledStepAttributesSequence
    # IHE SWF unscheduled case: no scheduled values, only the study
    assert step.AccessionNumber == "" and step.ScheduledProcedureStepID == ""
    assert step.RequestedProcedureID == ""
    check_final(ris, uid, tmp_path)
    queue = agent.json("queue")
    assert queue["mpps"] == {"pending": 0, "set_aside": 0, "last_error": None}


def test_scheduled_exam_copies_the_worklist_item(tmp_path: Path, stack: ExitStack) -> None:
    ris = stack.enter_context(MppsSCP())
    wl_port = stack.enter_context(wl.wlmscpfs(tmp_path / "wl", wl.CHARSET_ITEMS))
    agent = start(tmp_path, stack, ris.port, wl_port)
    started = exam(agent, "--accession", "A-JIS")
    (uid,) = ris.steps
    create = ris.messages[0].dataset
    common_create_checks(create, started)
    source = {i.accession: i for i in wl.CHARSET_ITEMS}["A-JIS"]
    assert create.get_item(PN).value.rstrip(b" ") == source.name  # as encoded, byte for byte
    assert list(create.SpecificCharacterSet) == ["", "ISO 2022 IR 87"]
    (step,) = create.ScheduledStepAttributesSequence
    assert step.AccessionNumber == "A-JIS"
    assert step.RequestedProcedureID == "RPA-JIS"
    assert step.ScheduledProcedureStepID == "SA-JIS"
    assert step.ScheduledProcedureStepDescription == "CHEST WITHOUT CONTRAST"
    (code,) = step.ScheduledProtocolCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("CTCHEST", "99LOCAL")
    (performed,) = create.PerformedProtocolCodeSequence
    assert performed.CodeValue == "CTCHEST"
    # the item's values outside the MPPS IOD stay out (a strict RIS refuses them: 0105)
    assert "ReasonForTheRequestedProcedure" not in step
    assert "AdmittingDiagnosesDescription" not in create
    check_final(ris, uid, tmp_path)


def test_n_create_carries_only_what_the_mpps_iod_allows() -> None:
    """Every worklist value the images carry, yet only the Scheduled Step Attributes and
    patient attributes PS3.4 F.7.2 lists in the N-CREATE."""
    from agent.exam import open_exam
    from agent.mpps import steps
    from tests.factory import EQUIPMENT, UIDS

    item = wl._item(wl.Item("A-IOD", wl.LATIN1_NAME, "ISO_IR 100", alerts=["LATEX"], pregnancy=1))
    assert item.usable and item.scheduled.reason_codes and item.admitting_diagnoses
    create = steps.in_progress(open_exam(*item.exam_parts(), UIDS), "CT_TEST", EQUIPMENT)
    (step,) = create.ScheduledStepAttributesSequence
    assert {e.keyword for e in step} == {
        "StudyInstanceUID",
        "ReferencedStudySequence",
        "AccessionNumber",
        "RequestedProcedureID",
        "RequestedProcedureDescription",
        "ScheduledProcedureStepID",
        "ScheduledProcedureStepDescription",
        "ScheduledProtocolCodeSequence",
    }
    patient = {e.keyword for e in create} & {
        *steps.PATIENT_KEYS,
        "ReasonForTheRequestedProcedure",
        "ReasonForRequestedProcedureCodeSequence",
        "AdmittingDiagnosesDescription",
        "AdmittingDiagnosesCodeSequence",
        "MedicalAlerts",
        "PatientWeight",
        "PatientSize",
        "PregnancyStatus",
    }
    assert patient == set(steps.PATIENT_KEYS) - {"IssuerOfPatientID"}
    assert create.PatientName.original_string.rstrip(b" ") == wl.LATIN1_NAME  # as encoded
    (code,) = create.ProcedureCodeSequence  # the Requested Procedure Code Sequence
    assert code.CodeValue.rstrip(b" ") == b"24627-2"


def test_discontinued_exam_has_its_reason_code(tmp_path: Path, stack: ExitStack) -> None:
    ris = stack.enter_context(MppsSCP())
    agent = start(tmp_path, stack, ris.port)
    exam(
        agent,
        "--patient-id",
        "P2",
        "--patient-name",
        "ROE^RICHARD",
        end=("--discontinue", "Patient refused to continue procedure"),
    )
    (uid,) = ris.steps
    final = check_final(ris, uid, tmp_path, "DISCONTINUED")
    (reason,) = final.PerformedProcedureStepDiscontinuationReasonCodeSequence
    assert (reason.CodeValue, reason.CodingSchemeDesignator) == ("110505", "DCM")
    assert reason.CodeMeaning == "Patient refused to continue procedure"


def test_abandoned_exam_is_created_then_discontinued(tmp_path: Path, stack: ExitStack) -> None:
    """No image at all: N-CREATE, then DISCONTINUED with no series; a reason in words that
    is not a CID 9300 meaning is kept as the step's comment."""
    ris = stack.enter_context(MppsSCP())
    agent = start(tmp_path, stack, ris.port)
    exam(
        agent,
        "--patient-id",
        "P3",
        "--patient-name",
        "POE^EDGAR",
        slices=0,
        end=("--discontinue", "contrast injector jammed"),
    )
    assert [m.kind for m in ris.messages] == ["N-CREATE", "N-SET"]
    final = ris.messages[1].dataset
    assert final.PerformedProcedureStepStatus == "DISCONTINUED"
    assert final.PerformedSeriesSequence == []
    (reason,) = final.PerformedProcedureStepDiscontinuationReasonCodeSequence
    assert reason.CodeValue == "110513"
    assert final.CommentsOnThePerformedProcedureStep == "contrast injector jammed"


def test_ris_down_through_the_exam_and_a_restart_then_in_order(
    tmp_path: Path, stack: ExitStack
) -> None:
    port = free_port()  # nobody listens yet
    agent = start(tmp_path, stack, port)
    r = agent.cli("exam", "start", "--patient-id", "P4", "--patient-name", "DOE^JOHN")
    assert r.returncode == 0, r.stderr
    assert agent.cli("simulate", "--series", "1", "--slices", "2").returncode == 0
    assert agent.cli("exam", "end").returncode == 0
    queue = agent.json("queue")
    assert queue["mpps"]["pending"] == 2 and queue["mpps"]["last_error"]
    assert "mpps_unreachable" in {a["kind"] for a in queue["alarms"]}
    assert agent.cli("wait", "--timeout", "2").returncode == 3  # the MPPS is not delivered
    agent.stop()
    ris = MppsSCP()
    ris.start(port)
    stack.callback(ris.stop)
    agent.start()  # the restarted daemon sends what waited, in the order it was made
    r = agent.cli("wait", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    assert [(m.kind, m.status) for m in ris.messages] == [("N-CREATE", 0), ("N-SET", 0)]
    assert ris.messages[1].dataset.PerformedProcedureStepStatus == "COMPLETED"
    assert "mpps_unreachable" not in {a["kind"] for a in agent.json("queue")["alarms"]}
    assert pydicom  # the images were delivered as well
    assert len(archived(tmp_path / "archive")) == 2
