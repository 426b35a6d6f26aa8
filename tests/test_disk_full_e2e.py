"""The spool's disk fills up during an exam (SPEC §5, issue 8): a real daemon with its spool
on a small tmpfs mounted by the test (root only; otherwise skipped with the reason), the mock
scanner, a real storescp.

1. A ballast file leaves room for only part of the exam: the acquisition stalls with an
   alarm, the hardware waits (the mock's queue is bounded), nothing is dropped.
2. The ballast goes: the acquisition resumes by itself; every slice arrives, exactly once.
3. The disk is filled again: a new exam is refused, saying why; space back, it starts.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from agent.control.client import ControlClient
from tests.agent_process import AGENT, Agent, Dest, write_config
from tests.peers import archived, storescp

MB = 1024 * 1024
TMPFS_MB = 40
SLICES = 40  # about 0.5 MB each in the spool: more than the room the ballast leaves


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    spool = tmp_path / "spool"
    spool.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs for the spool needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m", "tmpfs", str(spool)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield spool
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


def fill(spool: Path, leave_mb: int) -> Path:
    """A ballast file that leaves about `leave_mb` MB free."""
    st = os.statvfs(spool)
    free = st.f_bavail * st.f_frsize
    ballast = spool / "ballast"
    with ballast.open("ab") as f:
        f.write(b"\0" * max(0, free - leave_mb * MB))
    return ballast


def wait_for_alarm(client: ControlClient, events: ControlClient, kind: str) -> None:
    stream = iter(events.events(["alarm"]))  # subscribed before the first look
    while kind not in {a["kind"] for a in client.request("status")["alarms"]}:
        next(stream)


def accepted(client: ControlClient) -> int:
    return int(client.request("status")["counts"]["slices_accepted"])


def test_spool_disk_full_during_an_exam(tmp_path: Path, stack: ExitStack, small_disk: Path) -> None:
    port = stack.enter_context(storescp(tmp_path / "archive"))
    cfg = write_config(tmp_path, [Dest("PACS", port, send_while_scanning=False)])
    cfg.write_text(
        cfg.read_text().replace(
            "[agent]\n", "[agent]\nspool_warn_free_mb = 20\nspool_refuse_free_mb = 10\n", 1
        )
    )
    agent = Agent(cfg, tmp_path / "daemon.log")
    agent.start()
    stack.callback(agent.stop)
    ballast = fill(small_disk, leave_mb=14)  # room for about half the exam
    r = agent.cli("exam", "start", "--patient-id", "P1", "--patient-name", "DOE^JANE")
    assert r.returncode == 0, r.stderr
    sock = tmp_path / "control.sock"
    with ControlClient(sock, timeout=60) as client, ControlClient(sock, timeout=None) as events:
        # 1. the disk fills: the scan cannot finish, the acquisition stalls with an alarm
        scan = subprocess.Popen(
            [*AGENT, "simulate", "--slices", str(SLICES), "--timeout", "300", "-c", str(cfg)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        stack.callback(scan.kill)
        wait_for_alarm(client, events, "acquisition_stalled")
        stalled_at = accepted(client)
        assert 0 < stalled_at < SLICES
        status = client.request("status")  # measures the disk afresh
        assert status["disk"]["level"] == "full"
        assert "disk_low" in {a["kind"] for a in client.request("status")["alarms"]}
        assert scan.poll() is None  # the scan waits: nothing was thrown away
    # 2. space comes back: the acquisition resumes by itself, the scan completes
    ballast.unlink()
    _, err = scan.communicate(timeout=300)
    assert scan.returncode == 0, err
    assert agent.cli("exam", "end").returncode == 0
    r = agent.cli("wait", "--timeout", "120")
    assert r.returncode == 0, r.stderr
    images = archived(tmp_path / "archive")
    assert sorted(int(ds.InstanceNumber) for ds in images) == list(range(1, SLICES + 1))
    # 3. filled again below the refusal threshold: a new exam is refused, with the reason
    ballast = fill(small_disk, leave_mb=5)
    r = agent.cli("exam", "start", "--patient-id", "P2", "--patient-name", "ROE^RICHARD")
    assert r.returncode == 1 and "no new exam" in r.stderr and "MB free" in r.stderr, r.stderr
    ballast.unlink()
    r = agent.cli("exam", "start", "--patient-id", "P2", "--patient-name", "ROE^RICHARD")
    assert r.returncode == 0, r.stderr
