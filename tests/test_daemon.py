"""The real daemon process, the real CLI and a real DCMTK storescp: the exam lifecycle,
attribution of series by exam token, independent destinations, restart recovery."""

from __future__ import annotations

import subprocess
import threading
from contextlib import ExitStack
from pathlib import Path

import pytest

from agent.control.client import ControlClient
from agent.control.protocol import OpError
from tests.agent_process import Agent, Dest, write_config
from tests.peers import VALIDATE_DICOM, archived, free_port, require, storescp


def start_agent(work: Path, dests: list[Dest], stack: ExitStack) -> Agent:
    agent = Agent(write_config(work, dests), work / "daemon.log")
    agent.start()
    stack.callback(agent.stop)
    return agent


def test_exam_two_series_delivered_and_valid(tmp_path: Path, stack: ExitStack) -> None:
    port = stack.enter_context(storescp(tmp_path / "archive"))
    agent = start_agent(tmp_path, [Dest("PACS", port)], stack)
    r = agent.cli(
        "exam", "start", "--patient-id", "P1", "--patient-name", "DOE^JANE", "--operator", "SMITH"
    )
    assert r.returncode == 0, r.stderr
    again = agent.cli("exam", "start", "--patient-id", "P2", "--patient-name", "ROE^RICHARD")
    assert again.returncode == 1 and "already open" in again.stderr
    r = agent.cli("simulate", "--series", "2", "--slices", "5")
    assert r.returncode == 0, r.stderr
    assert agent.cli("exam", "end").returncode == 0
    r = agent.cli("wait", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    images = archived(tmp_path / "archive")
    assert len(images) == 10
    assert len({ds.StudyInstanceUID for ds in images}) == 1
    assert len({ds.SeriesInstanceUID for ds in images}) == 2
    q = agent.json("queue")
    (study,) = q["studies"]
    assert study["images"] == 10
    assert study["destinations"][0]["state"] == "delivered"
    require("dciodvfy")
    v = subprocess.run(
        [str(VALIDATE_DICOM), str(tmp_path / "archive")], capture_output=True, text=True
    )
    assert v.returncode == 0, v.stdout


def test_series_are_filed_by_token_and_unknown_tokens_are_held(
    tmp_path: Path, stack: ExitStack
) -> None:
    port = stack.enter_context(storescp(tmp_path / "archive"))
    agent = start_agent(tmp_path, [Dest("PACS", port)], stack)
    first = agent.json("exam", "start", "--patient-id", "P1", "--patient-name", "FIRST^PATIENT")[
        "exam"
    ]
    assert agent.cli("simulate", "--slices", "2").returncode == 0
    assert agent.cli("exam", "end").returncode == 0
    second = agent.json("exam", "start", "--patient-id", "P2", "--patient-name", "SECOND^PATIENT")[
        "exam"
    ]
    # a late reconstruction of the first patient, arriving while the second exam is open
    assert agent.cli("simulate", "--slices", "3", "--token", first["token"]).returncode == 0
    # and a series whose token nobody knows
    assert agent.cli("simulate", "--slices", "4", "--token", "f00dfeedf00dfeed").returncode == 0
    assert agent.cli("wait", "--timeout", "60").returncode == 0
    by_study: dict[str, int] = {}
    for ds in archived(tmp_path / "archive"):
        by_study[ds.StudyInstanceUID] = by_study.get(ds.StudyInstanceUID, 0) + 1
    assert by_study == {first["study_instance_uid"]: 5}  # nothing under the second exam
    q = agent.json("queue")
    (held,) = q["unassigned"]
    assert held["slices"] == 4
    assert any(a["kind"] == "unassigned_series" for a in q["alarms"])
    r = agent.cli(
        "exam",
        "assign",
        "--series",
        held["series_instance_uid"],
        "--to",
        second["token"],
        "--operator",
        "LEAD^TECH",
    )
    assert r.returncode == 0, r.stderr
    assert agent.cli("wait", "--timeout", "60").returncode == 0
    images = archived(tmp_path / "archive")
    assigned = [ds for ds in images if ds.SeriesInstanceUID == held["series_instance_uid"]]
    assert len(assigned) == 4
    assert {ds.StudyInstanceUID for ds in assigned} == {second["study_instance_uid"]}
    assert {str(ds.PatientID) for ds in assigned} == {"P2"}
    q = agent.json("queue")
    assert q["unassigned"] == [] and not any(a["kind"] == "unassigned_series" for a in q["alarms"])


def test_a_dead_archive_never_delays_another(tmp_path: Path, stack: ExitStack) -> None:
    up = stack.enter_context(storescp(tmp_path / "up"))
    down = free_port()
    agent = start_agent(tmp_path, [Dest("UP", up), Dest("DOWN", down)], stack)
    assert (
        agent.cli("exam", "start", "--patient-id", "P1", "--patient-name", "DOE^JANE").returncode
        == 0
    )
    assert agent.cli("simulate", "--slices", "6").returncode == 0
    assert agent.cli("exam", "end").returncode == 0
    r = agent.cli("wait", "--timeout", "3")
    assert r.returncode == 3  # DOWN is not done
    assert len(archived(tmp_path / "up")) == 6
    q = agent.json("queue")
    dests = {d["name"]: d for d in q["studies"][0]["destinations"]}
    assert dests["UP"]["state"] == "delivered"
    assert dests["DOWN"]["state"] == "pending" and dests["DOWN"]["last_error"]
    senders = {d["name"]: d for d in q["destinations"]}
    # backoff, not a tight loop: 0.5 s doubling to a 2 s cap within 3 s of waiting
    assert 1 <= senders["DOWN"]["associations"] <= 6
    stack.enter_context(storescp(tmp_path / "down", port=down))
    r = agent.cli("wait", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    assert len(archived(tmp_path / "down")) == 6


def test_open_exam_survives_a_restart(tmp_path: Path, stack: ExitStack) -> None:
    port = stack.enter_context(storescp(tmp_path / "archive"))
    agent = start_agent(tmp_path, [Dest("PACS", port)], stack)
    exam = agent.json("exam", "start", "--patient-id", "P1", "--patient-name", "DOE^JANE")["exam"]
    assert agent.cli("simulate", "--slices", "2").returncode == 0
    agent.stop()
    agent.start()
    status = agent.json("exam", "status")
    assert status["exam"]["token"] == exam["token"] and status["exam"]["state"] == "open"
    assert agent.cli("simulate", "--slices", "2").returncode == 0
    assert agent.cli("exam", "end").returncode == 0
    assert agent.cli("wait", "--timeout", "60").returncode == 0
    assert {ds.StudyInstanceUID for ds in archived(tmp_path / "archive")} == {
        exam["study_instance_uid"]
    }
    assert len(archived(tmp_path / "archive")) == 4


def test_no_daemon_is_exit_4_with_one_line(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, [Dest("PACS", free_port())])
    r = Agent(cfg, tmp_path / "log").cli("queue")
    assert r.returncode == 4
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_echo_and_retry_after_a_refusing_archive(tmp_path: Path, stack: ExitStack) -> None:
    refusing = free_port()
    agent = start_agent(tmp_path, [Dest("PACS", refusing)], stack)
    with storescp(tmp_path / "refusing", extra=["--refuse"], port=refusing):
        r = agent.cli("echo")
        assert r.returncode == 1 and "PACS" in r.stdout and "rejected" in r.stdout
        assert (
            agent.cli(
                "exam", "start", "--patient-id", "P1", "--patient-name", "DOE^JANE"
            ).returncode
            == 0
        )
        assert agent.cli("simulate", "--slices", "3").returncode == 0
        assert agent.cli("exam", "end").returncode == 0
        r = agent.cli("wait", "--timeout", "30")
        assert r.returncode == 1 and "failed" in r.stderr  # permanent: parked, not looped
    q = agent.json("queue")
    (dest,) = q["studies"][0]["destinations"]
    assert dest["state"] == "failed" and dest["failed"] == 3 and "rejected" in dest["last_error"]
    assert any(a["kind"] == "delivery_failed" for a in q["alarms"])
    with storescp(tmp_path / "archive", port=refusing):
        assert agent.json("echo", "PACS")["peers"][0]["ok"] is True
        assert agent.json("retry", "--dest", "PACS") == {"rearmed": 3}
        r = agent.cli("wait", "--timeout", "60")
        assert r.returncode == 0, r.stderr
    assert len(archived(tmp_path / "archive")) == 3
    assert not any(a["kind"] == "delivery_failed" for a in agent.json("queue")["alarms"])


def test_bad_requests_are_refused_before_anything_happens(tmp_path: Path, stack: ExitStack) -> None:
    agent = start_agent(tmp_path, [Dest("PACS", free_port())], stack)
    long_component = "A" * 70 + "^JANE"  # PN components are at most 64 characters
    for args in (
        ["--patient-id", "P1", "--patient-name", long_component],
        ["--patient-id", "P1\\P2", "--patient-name", "DOE^JANE"],
        ["--patient-id", "P1"],
        ["--patient-id", "P1", "--patient-name", "DOE^JANE", "--birth-date", "19801340"],
        ["--patient-id", "P1", "--patient-name", "DOE^JANE", "--dest", "NOWHERE"],
    ):
        r = agent.cli("exam", "start", *args)
        assert r.returncode in (1, 2) and "Traceback" not in r.stderr, (args, r.stderr)
    assert agent.json("exam", "status")["exam"] is None
    assert (
        agent.cli("exam", "start", "--patient-id", "P1", "--patient-name", "DOE^JANE").returncode
        == 0
    )
    r = agent.cli("exam", "end", "--discontinue", "")
    assert r.returncode == 2  # an empty reason is refused, not taken as "completed"
    with ControlClient(tmp_path / "control.sock") as client:
        with pytest.raises(OpError) as e:
            client.request("exam.end", {"discontinu": "patient left"})
        assert e.value.code == "bad_request" and "discontinue" in e.value.message
        with pytest.raises(OpError) as e:
            client.request("wait", {"timeout": 1e999})
        assert e.value.code == "bad_request"
    assert agent.json("exam", "status")["exam"]["state"] == "open"


def test_a_held_series_is_assigned_only_once_complete(tmp_path: Path, stack: ExitStack) -> None:
    port = stack.enter_context(storescp(tmp_path / "archive"))
    agent = start_agent(tmp_path, [Dest("PACS", port)], stack)
    exam = agent.json("exam", "start", "--patient-id", "P1", "--patient-name", "DOE^JANE")["exam"]
    with ControlClient(tmp_path / "control.sock") as client:
        held_slices = client.events(["slice"])
        scan = threading.Thread(
            target=agent.cli,
            args=("simulate", "--slices", "12", "--rate", "3", "--token", "0badc0de"),
        )
        scan.start()
        next(iter(held_slices))
    (held,) = agent.json("queue")["unassigned"]
    r = agent.cli("exam", "assign", "--series", held["series_instance_uid"], "--to", exam["token"])
    assert r.returncode == 1 and "still being acquired" in r.stderr
    scan.join()
    r = agent.cli("exam", "assign", "--series", held["series_instance_uid"], "--to", exam["token"])
    assert r.returncode == 0, r.stderr
    assert agent.cli("wait", "--timeout", "60").returncode == 0
    assert len(archived(tmp_path / "archive")) == 12


def test_send_at_exam_end_shows_as_pending_until_then(tmp_path: Path, stack: ExitStack) -> None:
    port = stack.enter_context(storescp(tmp_path / "archive"))
    agent = start_agent(tmp_path, [Dest("PACS", port, send_while_scanning=False)], stack)
    assert (
        agent.cli("exam", "start", "--patient-id", "P1", "--patient-name", "DOE^JANE").returncode
        == 0
    )
    assert agent.cli("simulate", "--slices", "4").returncode == 0
    (dest,) = agent.json("queue")["studies"][0]["destinations"]
    assert dest["state"] == "pending" and dest["deferred"] == 4
    assert agent.cli("wait", "--timeout", "1").returncode == 3
    assert archived(tmp_path / "archive") == []
    assert agent.cli("exam", "end").returncode == 0
    assert agent.cli("wait", "--timeout", "60").returncode == 0
    assert len(archived(tmp_path / "archive")) == 4


def test_no_patient_identifier_in_the_logs_at_info(tmp_path: Path, stack: ExitStack) -> None:
    """SPEC §9: the journal of a whole exam, at INFO, holds none of the patient's identifiers."""
    port = stack.enter_context(storescp(tmp_path / "archive"))
    agent = Agent(
        write_config(tmp_path, [Dest("PACS", port)]), tmp_path / "daemon.log", verbose=True
    )
    agent.start()
    stack.callback(agent.stop)
    identifiers = ["QXZPATIENTID", "ZYXWVU^QUENTIN", "19510203", "ACCQXZ77"]
    r = agent.cli(
        "exam", "start", "--patient-id", identifiers[0], "--patient-name", identifiers[1],
        "--birth-date", identifiers[2], "--accession", identifiers[3], "--operator", "SMITH",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert agent.cli("simulate", "--series", "2", "--slices", "3").returncode == 0
    assert agent.cli("simulate", "--slices", "2", "--token", "feedfacefeedface").returncode == 0
    assert agent.cli("exam", "end").returncode == 0
    assert agent.cli("wait", "--timeout", "60").returncode == 0
    agent.stop()
    log = (tmp_path / "daemon.log").read_text()
    assert "INFO" in log  # the log really was at INFO
    for value in (*identifiers, "ZYXWVU", "QUENTIN"):
        assert value not in log, f"{value} in the daemon's log"
