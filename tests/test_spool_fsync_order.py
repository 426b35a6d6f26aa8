"""Prove from an strace of the writer the order a durable accept needs, for every instance:

mkdir(study dir) < fsync(instances/)            (only when the study folder is new)
write(temp) < fsync(temp) < rename(temp, final) < fsync(study dir)
  < the WAL write carrying the index row < fsync/fdatasync(-wal) < print "accepted <uid>"

kill -9 cannot show a missing fsync (the page cache survives the process), hence this test.
The writer is single-threaded, so the trace's line order is the order of the system calls.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

WRITER = Path(__file__).resolve().parent / "spool_writer.py"
SYSCALLS = "fsync,fdatasync,rename,renameat,renameat2,openat,write,pwrite64,mkdir,mkdirat"
_LINE = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")
_FD_PATH = re.compile(r"^\d+<(.*?)>")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
SYNCS = ("fsync", "fdatasync")
WRITES = ("write", "pwrite64")


@dataclass(frozen=True)
class Call:
    n: int  # position in the trace
    name: str
    path: str  # the fd's path (-y) or the first path argument
    args: str
    strings: tuple[str, ...]


def strace_usable() -> str | None:
    """None when strace can trace here, else the reason it cannot."""
    if shutil.which("strace") is None:
        return "strace is not installed"
    probe = subprocess.run(
        ["strace", "-f", "-qq", "-o", "/dev/null", sys.executable, "-c", "pass"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0 and re.search(r"ptrace|not permitted", probe.stderr, re.I):
        return f"ptrace is not permitted here: {probe.stderr.strip()}"
    return None


def parse(trace: str) -> list[Call]:
    pending: dict[str, str] = {}
    calls: list[Call] = []
    for raw in trace.splitlines():
        pid, _, rest = raw.partition(" ")
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest[: -len("<unfinished ...>")]
            continue
        resumed = re.match(r"\s*<\.\.\. \w+ resumed>(.*)", rest)
        if resumed:
            rest = pending.pop(pid, "") + resumed.group(1)
        m = _LINE.match(f"{pid} {rest.strip()}")
        if m is None or int(m.group(4)) < 0:
            continue
        name, args = m.group(2), m.group(3)
        strings = tuple(_STRING.findall(args))
        fd = _FD_PATH.match(args)
        if name in (*SYNCS, *WRITES) and fd:
            path = fd.group(1)
        elif name in ("rename", "mkdir", "openat", "renameat", "renameat2", "mkdirat"):
            path = strings[0] if strings else ""
        else:
            continue
        calls.append(Call(len(calls), name, path, args, strings))
    return calls


def first(calls: list[Call], after: int, what: str, pred: Callable[[Call], bool]) -> Call:
    """The first call after position `after` that matches `pred`."""
    for c in calls[after + 1 :]:
        if pred(c):
            return c
    raise AssertionError(f"no {what} after trace position {after}")


def check_accept(calls: list[Call], root: Path, sop: str, start: int) -> int:
    """Check the order of one accept whose calls follow trace position `start` (the end of the
    previous accept); return the position of its "accepted" print."""
    instances_dir = str(root / "instances")
    wal = str(root / "index.sqlite3-wal")

    def wal_write(c: Call) -> bool:
        return c.name in WRITES and c.path == wal

    def wal_sync(c: Call) -> bool:
        return c.name in SYNCS and c.path == wal

    tmp_open = first(
        calls,
        start,
        f"temporary file for {sop}",
        lambda c: c.name == "openat" and f"/.{sop}.dcm." in c.path,
    )
    tmp = tmp_open.path
    study_dir = str(Path(tmp).parent)
    assert tmp.endswith(".tmp") and "O_EXCL" in tmp_open.args
    data_writes = [c for c in calls if c.name == "write" and c.path == tmp]
    assert data_writes and data_writes[0].n > tmp_open.n
    file_sync = first(
        calls, data_writes[-1].n, f"fsync of {tmp}", lambda c: c.name in SYNCS and c.path == tmp
    )
    rename = first(
        calls,
        tmp_open.n,
        f"rename of {tmp}",
        lambda c: c.name.startswith("rename") and tmp in c.strings,
    )
    assert rename.strings[-1] == f"{study_dir}/{sop}.dcm", rename
    assert file_sync.n < rename.n, f"{sop}: rename before fsync of the file"
    dir_sync = first(
        calls, rename.n, f"fsync of {study_dir}", lambda c: c.name in SYNCS and c.path == study_dir
    )
    printed = first(
        calls,
        dir_sync.n,
        f"'accepted {sop}'",
        lambda c: c.name == "write" and f"accepted {sop} " in c.args,
    )
    # The index row: no WAL activity from the end of the previous accept up to the folder
    # fsync; then WAL writes carrying this UID, then a WAL sync, then "accepted".
    window = calls[start + 1 : printed.n]
    early = [c for c in window if c.n < dir_sync.n and (wal_write(c) or wal_sync(c))]
    assert not early, f"{sop}: index written before the folder fsync: {early[0]}"
    commit = [c for c in window if wal_write(c) and sop in c.args]
    assert commit, f"{sop}: no WAL write carrying its row before 'accepted'"
    wal_synced = first(calls, commit[-1].n, "WAL sync", wal_sync)
    assert wal_synced.n < printed.n, f"{sop}: 'accepted' printed before the WAL was synced"
    # A new study folder: its entry in instances/ is made durable before the commit.
    made = [c for c in window if c.name.startswith("mkdir") and c.path == study_dir]
    if made:
        parent_sync = first(
            calls,
            made[0].n,
            f"fsync of {instances_dir}",
            lambda c: c.name in SYNCS and c.path == instances_dir,
        )
        assert parent_sync.n < commit[0].n, f"{sop}: new study folder not made durable"
    return printed.n


def test_fsync_rename_commit_order(tmp_path: Path) -> None:
    reason = strace_usable()
    if reason is not None:
        print(f"skipping: {reason}")
        pytest.skip(reason)
    root = tmp_path / "spool"
    trace_file = tmp_path / "trace.txt"
    count = 24
    writer = [sys.executable, str(WRITER), str(root), "--count", str(count), "--per-study", "5"]
    writer += ["--min-size", "2000", "--max-size", "9000"]
    cmd = ["strace", "-f", "-y", "-qq", "-s", "4096", "-e", f"trace={SYSCALLS}"]
    cmd += ["-e", "signal=none", "-o", str(trace_file), *writer]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    accepted = [line.split()[1] for line in out.splitlines() if line.startswith("accepted ")]
    assert len(accepted) == count
    calls = parse(trace_file.read_text())
    # Opening the spool (schema, recovery) writes the WAL too: start after "ready".
    previous_print = first(
        calls, -1, "ready", lambda c: c.name == "write" and '"ready\\n"' in c.args
    ).n
    for sop in accepted:
        previous_print = check_accept(calls, root, sop, previous_print)
    # Every rename targets a new name: no accepted file is ever replaced.
    targets = [c.strings[-1] for c in calls if c.name.startswith("rename")]
    assert len(targets) == len(set(targets)) == count
    new_dirs = [
        c for c in calls if c.name.startswith("mkdir") and c.path.startswith(f"{root}/instances/")
    ]
    assert len(new_dirs) == 5  # 24 instances, 5 per study
