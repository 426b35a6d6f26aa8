"""A damaged spool at start-up (SPEC §5, issue 8), through the real daemon: its index made
unreadable and one spooled file cut short while the daemon was down (the archive down too, so
that everything was still to send). The daemon starts, sets the damaged index aside, rebuilds
from the files, quarantines the one it cannot read, raises alarms, and delivers the rest."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from tests.agent_process import Agent, Dest, write_config
from tests.peers import archived, free_port, storescp


def test_damaged_index_and_truncated_file_at_start(tmp_path: Path, stack: ExitStack) -> None:
    port = free_port()  # the archive is down while the exam is made
    cfg = write_config(tmp_path, [Dest("PACS", port)])
    agent = Agent(cfg, tmp_path / "daemon.log")
    agent.start()
    stack.callback(agent.stop)
    r = agent.cli("exam", "start", "--patient-id", "P1", "--patient-name", "DOE^JANE")
    assert r.returncode == 0, r.stderr
    assert agent.cli("simulate", "--slices", "4").returncode == 0
    assert agent.cli("exam", "end").returncode == 0
    agent.stop()
    spool = tmp_path / "spool"
    index = spool / "index.sqlite3"
    data = bytearray(index.read_bytes())
    data[100:4000] = b"\xab" * 3900
    index.write_bytes(bytes(data))
    for extra in ("index.sqlite3-wal", "index.sqlite3-shm"):
        (spool / extra).unlink(missing_ok=True)
    files = sorted((spool / "instances").rglob("*.dcm"), key=lambda p: p.stat().st_size)
    cut = files[-1]  # an image (the largest files), cut in half
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])

    stack.enter_context(storescp(tmp_path / "archive", port=port))
    agent.start()  # starts, despite it all
    alarms = {a["kind"]: a["message"] for a in agent.json("queue")["alarms"]}
    assert "spool_rebuilt" in alarms and "set aside" in alarms["spool_rebuilt"], alarms
    assert "1 unreadable" in alarms["spool_rebuilt"]
    assert "spool_problem" in alarms  # the cut file, quarantined in orphans/
    r = agent.cli("wait", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    images = archived(tmp_path / "archive")
    numbers = sorted(int(ds.InstanceNumber) for ds in images)
    assert len(numbers) == 3 and set(numbers) < {1, 2, 3, 4}  # all but the one cut short
    assert list((spool / "damaged").glob("index-*/index.sqlite3"))  # kept, not deleted
    assert len(list((spool / "orphans").rglob("*.dcm"))) == 1
