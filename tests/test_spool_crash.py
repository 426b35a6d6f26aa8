"""kill -9 the spool writer at random instants; every instance it reported accepted survives.

Each iteration starts tests/spool_writer.py on the same (growing) spool, kills it with SIGKILL
after a random delay (sometimes while it is still opening and recovering), reopens the spool
here and checks SPEC §5: every instance reported accepted is indexed with intact bytes, no
half-written file is listed, no temporary file remains, and due() lists only intact instances.
Set SPOOL_CRASH_SEED to replay a run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.spool import Spool

WRITER = Path(__file__).resolve().parent / "spool_writer.py"
ITERATIONS = 40


def run_and_kill(root: Path, tag: int, rng: random.Random) -> tuple[dict[str, str], str]:
    """Start the writer, SIGKILL it at a random instant; its reported accepts, uid -> sha256."""
    cmd = [sys.executable, str(WRITER), str(root), "--tag", str(tag), "--per-study", "6"]
    cmd += ["--min-size", "1024", "--max-size", str(512 * 1024)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    output = b""
    if rng.random() < 0.15:  # while starting: imports, open, recovery
        delay = rng.uniform(0.0, 0.25)
        when = f"{delay * 1000:.1f} ms after start"
    else:
        output = proc.stdout.readline()
        assert output == b"ready\n", (output, proc.stderr.read() if proc.stderr else b"")
        delay = rng.uniform(0.0, 0.06)
        when = f"{delay * 1000:.1f} ms after ready"
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, err.decode(errors="replace"))
    output += out
    accepted: dict[str, str] = {}
    for line in output.decode().split("\n")[:-1]:  # a last line without "\n" is ignored
        if line.startswith("accepted "):
            _, uid, digest = line.split()
            accepted[uid] = digest
    return accepted, when


def check_after_crash(root: Path, tag: int, accepted: dict[str, str]) -> tuple[int, int]:
    """Reopen and check; returns (temporary files removed, orphans moved) by recovery."""
    with Spool(root) as spool:
        report = spool.recovery
        instances = spool.instances()
        indexed = {i.sop_instance_uid: i for i in instances}
        for uid, digest in accepted.items():
            assert uid in indexed, f"{uid} was reported accepted but is not indexed"
            assert indexed[uid].sha256 == digest
        mine = [i for i in instances if f".{tag}.3." in i.sop_instance_uid]
        for inst in mine:  # this run's files in full; older ones by size (recovery)
            spool.read(inst)  # verifies size and SHA-256, raises SpoolCorrupt otherwise
        extra = [i.sop_instance_uid for i in mine if i.sop_instance_uid not in accepted]
        assert len(extra) <= 1, f"indexed but never reported: {extra}"  # killed before print
        assert [p for p in spool.problems if p.kind != "orphan"] == []
        for orphan in report.orphans_moved:
            assert orphan.name.removesuffix(".dcm") not in indexed
        leftovers = [p for p in (root / "instances").rglob("*") if p.name.endswith(".tmp")]
        assert leftovers == []
        on_disk = {p.name.removesuffix(".dcm") for p in (root / "instances").rglob("*.dcm")}
        assert on_disk == set(indexed), "a file without an index row is still in instances/"
        assert spool.due("PACS", float("inf"), 10**6) == instances  # nothing delivered here
    return report.temp_files_removed, len(report.orphans_moved)


def test_kill_9_loses_no_accepted_instance(tmp_path: Path) -> None:
    seed = int(os.environ.get("SPOOL_CRASH_SEED", str(time.time_ns() % 1_000_000)))
    print(f"SPOOL_CRASH_SEED={seed}")
    rng = random.Random(seed)
    root = tmp_path / "spool"
    start = time.monotonic()
    total_accepted = temp_removed = orphans = 0
    for tag in range(1, ITERATIONS + 1):
        accepted, when = run_and_kill(root, tag, rng)
        print(f"run {tag}: killed {when}, {len(accepted)} reported accepted")
        removed, moved = check_after_crash(root, tag, accepted)
        total_accepted += len(accepted)
        temp_removed += removed
        orphans += moved
    elapsed = time.monotonic() - start
    print(
        f"seed {seed}: {ITERATIONS} kills in {elapsed:.1f} s, {total_accepted} accepted and"
        f" intact; recovery removed {temp_removed} temporary files, moved {orphans} orphans"
    )
    assert total_accepted > 0
