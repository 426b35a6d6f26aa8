"""Group commit: accepts that reach the index while a commit is in progress share the next
one (one folder fsync, one transaction), each still returning only once its own file and row
are durable; a failure fails exactly the accepts it concerns, and leaves no file of theirs."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from agent.spool import Spool, SpooledInstance
from agent.spool import files as spool_files
from agent.spool.index import Row
from tests.test_spool import STUDY, blob, rec

WAIT_S = 30.0


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool(tmp_path / "spool") as s:
        yield s


def hold_first_commit(spool: Spool, monkeypatch: pytest.MonkeyPatch, others: int) -> list[int]:
    """The first commit waits until `others` accepts queue behind it; returns the batch sizes."""
    group, index = spool._group, spool._index
    insert_many = index.insert_many
    sizes: list[int] = []

    def held(rows: list[Row], now: float) -> Any:
        if not sizes:
            with group._cond:
                assert group._cond.wait_for(lambda: len(group._waiting) == others, WAIT_S)
        sizes.append(len(rows))
        return insert_many(rows, now)

    monkeypatch.setattr(index, "insert_many", held)
    return sizes


def accept_at_once(spool: Spool, n: int) -> list[SpooledInstance | BaseException]:
    def one(i: int) -> SpooledInstance | BaseException:
        try:
            return spool.accept(rec(i), blob(i), ["PACS"])
        except Exception as e:
            return e

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(1, n + 1)))


def count_folder_fsyncs(monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> list[Path]:
    synced: list[Path] = []
    real: Callable[[Path], None] = spool_files.fsync_dir

    def fsync_dir(path: Path) -> None:
        if path.name == STUDY:
            synced.append(path)
            if fail:
                raise OSError(errno.EIO, "I/O error")
        real(path)

    monkeypatch.setattr(spool_files, "fsync_dir", fsync_dir)
    return synced


def test_accepts_queued_behind_a_commit_share_the_next(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool.accept(rec(99), blob(99), ["PACS"])  # the study folder exists
    sizes = hold_first_commit(spool, monkeypatch, others=3)
    synced = count_folder_fsyncs(monkeypatch)
    results = accept_at_once(spool, 4)
    assert sizes == [1, 3] and len(synced) == 2
    assert all(isinstance(r, SpooledInstance) for r in results)
    for i, r in enumerate(results, 1):
        assert isinstance(r, SpooledInstance) and r.record == rec(i)
        assert spool.read(r) == blob(i) and spool.get(rec(i).sop_instance_uid) == r
    assert len({r.seq for r in results if isinstance(r, SpooledInstance)}) == 4


def test_a_failed_folder_fsync_fails_its_group_and_leaves_no_file(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool.accept(rec(99), blob(99), ["PACS"])
    hold_first_commit(spool, monkeypatch, others=2)
    count_folder_fsyncs(monkeypatch, fail=True)
    results = accept_at_once(spool, 3)
    assert all(isinstance(r, OSError) and r.errno == errno.EIO for r in results)
    folder = spool.root / "instances" / STUDY
    assert sorted(p.name for p in folder.iterdir()) == [f"{STUDY}.3.99.dcm"]
    assert [i.record.instance_number for i in spool.instances()] == [99]
    monkeypatch.undo()
    assert all(isinstance(r, SpooledInstance) for r in accept_at_once(spool, 3))


def test_a_row_that_breaks_a_constraint_is_left_out_of_its_group_alone(spool: Spool) -> None:
    rows = [Row(rec(1), 10, "a" * 64, ["PACS"]), Row(rec(1), 10, "b" * 64, ["PACS"])]
    rows.append(Row(rec(2), 10, "c" * 64, ["PACS"], deferred=["LATER"]))
    first, dup, third = spool._index.insert_many(rows, 1.0)
    assert isinstance(dup, sqlite3.IntegrityError)
    assert isinstance(first, SpooledInstance) and isinstance(third, SpooledInstance)
    assert [i.sha256 for i in spool.instances()] == ["a" * 64, "c" * 64]
    assert {d.destination: d.state.value for d in spool.deliveries(rec(2).sop_instance_uid)} == {
        "PACS": "pending",
        "LATER": "deferred",
    }
