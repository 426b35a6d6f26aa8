"""Through the real daemon and CLI: the audit trail of who did what, acknowledging an alarm,
the spool disk running low (new exams refused with the reason), and the hardware's counters
in `status`."""

from __future__ import annotations

import json
import os
import pwd
from contextlib import ExitStack
from pathlib import Path

from agent.control.client import ControlClient
from tests.agent_process import Agent, Dest, write_config
from tests.peers import storescp


def start(tmp_path: Path, stack: ExitStack, agent_keys: str = "") -> Agent:
    port = stack.enter_context(storescp(tmp_path / "archive"))
    cfg = write_config(tmp_path, [Dest("PACS", port)])
    if agent_keys:
        text = cfg.read_text().replace("[agent]\n", f"[agent]\n{agent_keys}", 1)
        cfg.write_text(text)
    agent = Agent(cfg, tmp_path / "daemon.log")
    agent.start()
    stack.callback(agent.stop)
    return agent


def test_audit_trail_of_an_exam(tmp_path: Path, stack: ExitStack) -> None:
    agent = start(tmp_path, stack)
    r = agent.cli(
        "exam", "start", "--patient-id", "P1", "--patient-name", "DOE^JANE",
        "--operator", "RT SMITH", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    token = json.loads(r.stdout)["exam"]["token"]
    assert agent.cli("exam", "end", "--discontinue", "Equipment failure").returncode == 0
    with ControlClient(tmp_path / "control.sock") as client:
        client.request("operator.sign_in", {"operator": "RT SMITH"})
    records = agent.json("audit")["records"]
    me = pwd.getpwuid(os.getuid()).pw_name
    actions = [r["action"] for r in records]
    assert actions == ["agent.start", "exam.start", "exam.end", "operator.sign_in"]
    start_record, end_record = records[1], records[2]
    assert start_record["operator"] == "RT SMITH" and start_record["os_user"] == me
    assert start_record["objects"]["token"] == token
    assert start_record["atna_event"] == "110111 Procedure Record"
    assert end_record["outcome"] == "discontinued: Equipment failure"
    text = agent.cli("audit", "--last", "2")
    assert text.returncode == 0 and "exam.end" in text.stdout and "exam.start" not in text.stdout
    agent.stop()
    agent.start()  # the trail survives a restart
    assert [r["action"] for r in agent.json("audit")["records"]][-2:] == [
        "agent.stop",
        "agent.start",
    ]
    agent.stop()
    agent.config.write_text(agent.config.read_text().replace('"CT1"', '"CT2"'))
    agent.start()  # started with another config: a config change, recorded
    change, start_again = agent.json("audit")["records"][-2:]
    assert change["action"] == "config.change" and start_again["action"] == "agent.start"
    assert change["objects"]["after"] == start_again["objects"]["config_sha256"]
    assert change["objects"]["before"] != change["objects"]["after"]


def test_spool_disk_low_refuses_new_exams_with_the_reason(tmp_path: Path, stack: ExitStack) -> None:
    """Thresholds above any real disk's free space: the daemon still starts (what is queued
    must still go out), raises disk_low, and refuses a new exam, saying why."""
    huge = 1 << 40  # MB
    agent = start(tmp_path, stack, f"spool_warn_free_mb = {huge}\nspool_refuse_free_mb = {huge}\n")
    r = agent.cli("exam", "start", "--patient-id", "P1", "--patient-name", "DOE^JANE")
    assert r.returncode == 1
    assert "no new exam" in r.stderr and "MB free" in r.stderr, r.stderr
    status = agent.json("queue")
    (alarm,) = [a for a in status["alarms"] if a["kind"] == "disk_low"]
    assert "new exams are refused" in alarm["message"]
    with ControlClient(tmp_path / "control.sock") as client:
        assert client.request("status")["disk"]["level"] == "full"
        # the operator saw it: recorded; the alarm stays while its cause lasts
        client.request("alarm.acknowledge", {"kind": "disk_low", "operator": "RT SMITH"})
        (alarm,) = client.request("status")["alarms"]
        assert alarm["kind"] == "disk_low" and alarm["acknowledged"]["by"] == "RT SMITH"
    assert agent.json("audit")["records"][-1]["action"] == "alarm.acknowledge"


def test_status_reports_the_hardware_and_its_counters(tmp_path: Path, stack: ExitStack) -> None:
    start(tmp_path, stack)
    with ControlClient(tmp_path / "control.sock") as client:
        status = client.request("status")
    assert status["hardware"] == {"driver": "mock", "counters": {}}
    assert status["counts"]["irradiation_events"] == 0


def test_retention_purges_a_delivered_study_never_an_undelivered_one(
    tmp_path: Path, stack: ExitStack
) -> None:
    """retention_days = 0: a study goes as soon as it is delivered and its exam ended (the
    audit trail says so); a study whose archive is down stays, however old."""
    agent = start(tmp_path, stack, "retention_days = 0\n")
    r = agent.cli("exam", "start", "--patient-id", "P1", "--patient-name", "DOE^JANE")
    assert r.returncode == 0, r.stderr
    assert agent.cli("simulate", "--slices", "3").returncode == 0
    assert agent.cli("exam", "end").returncode == 0
    assert agent.cli("wait", "--timeout", "60").returncode == 0
    agent.stop()
    agent.start()  # retention looks at start (and every 10 minutes, and when space is low)
    sock = tmp_path / "control.sock"
    with ControlClient(sock, timeout=60) as client, ControlClient(sock, timeout=60) as events:
        stream = iter(events.events(["delivery"]))  # delivery.purged, once purged
        while client.request("queue")["studies"]:
            next(stream)
    purge = [r for r in agent.json("audit")["records"] if r["action"] == "purge"]
    assert len(purge) == 1 and purge[0]["outcome"].startswith("3 instance(s)")
    assert not list((tmp_path / "spool" / "instances").iterdir())
