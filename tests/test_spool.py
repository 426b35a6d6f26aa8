"""Unit tests of the durable spool (agent/spool): acceptance, recovery, delivery state, summary."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.spool import (
    DeliveryState,
    InstanceRecord,
    InvalidUID,
    Spool,
    SpoolClosed,
    SpoolConflict,
    SpoolCorrupt,
    SpooledInstance,
    SpoolLocked,
    UnknownInstance,
)
from agent.spool import files as spool_files

STUDY = "1.2.826.0.1.3680043.10.999.1"
STUDY2 = "1.2.826.0.1.3680043.10.999.2"
CT = "1.2.840.10008.5.1.4.1.1.2"
ELE = "1.2.840.10008.1.2.1"
REPO = Path(__file__).resolve().parent.parent


def rec(n: int, study: str = STUDY, token: str | None = "exam-1") -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=f"{study}.3.{n}",
        sop_class_uid=CT,
        study_instance_uid=study,
        series_instance_uid=f"{study}.2",
        transfer_syntax_uid=ELE,
        instance_number=n,
        exam_token=token,
    )


def blob(n: int, size: int = 1000) -> bytes:
    return (n.to_bytes(4, "big") * (size // 4 + 1))[:size]


class Clock:
    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def spool(tmp_path: Path, clock: Clock) -> Iterator[Spool]:
    with Spool(tmp_path / "spool", clock=clock) as s:
        yield s


def sops(instances: list[SpooledInstance]) -> list[str]:
    return [i.sop_instance_uid for i in instances]


# -- layout, accept, idempotence ----------------------------------------------------------------


def test_layout_and_wal(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    with Spool(root):
        for name in ("index.sqlite3", "instances", "orphans", "lock"):
            assert (root / name).exists(), name
        mode = sqlite3.connect(root / "index.sqlite3").execute("PRAGMA journal_mode").fetchone()
        assert mode == ("wal",)


def test_accept_writes_file_and_pending_rows(spool: Spool, clock: Clock) -> None:
    inst = spool.accept(rec(1), blob(1), ["PACS", "BACKUP", "PACS"])
    assert spool.path(inst) == spool.root / "instances" / STUDY / f"{STUDY}.3.1.dcm"
    assert spool.path(inst).read_bytes() == blob(1)
    assert spool.read(inst) == blob(1)
    assert inst.size == 1000 and inst.accepted_at == clock.t
    states = {(d.destination, d.state, d.attempts) for d in spool.deliveries(inst.sop_instance_uid)}
    assert states == {("BACKUP", DeliveryState.PENDING, 0), ("PACS", DeliveryState.PENDING, 0)}
    assert spool.due("PACS", clock.t, 10) == [inst]
    assert spool.get(inst.sop_instance_uid) == inst
    assert spool.get("1.2.3") is None
    assert not list(spool.path(inst).parent.glob(".*"))  # no temporary file left


def test_accept_same_bytes_is_noop(spool: Spool) -> None:
    first = spool.accept(rec(1), blob(1), ["PACS"])
    again = spool.accept(rec(1), blob(1), ["PACS", "OTHER"])
    assert again == first
    assert len(spool.instances()) == 1
    assert [d.destination for d in spool.deliveries(first.sop_instance_uid)] == ["PACS"]


def test_a_file_given_in_pieces_is_written_as_the_pieces_joined(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image's file comes in pieces (header runs, the pixels not copied): written with
    writev, a short write continued, and indexed as the one file they make."""
    data = blob(1, 300_000)
    pieces: list[bytes | memoryview] = [data[:7], b"", memoryview(data)[7:200_000], data[200_000:]]
    real = os.writev

    def short_writev(fd: int, buffers: list[memoryview]) -> int:
        return real(fd, [memoryview(b)[:1000] for b in buffers[:1]])  # 1 000 bytes at a time

    monkeypatch.setattr(spool_files.os, "writev", short_writev)
    got = spool.accept(rec(1), pieces, ["PACS"])
    assert spool.path(got).read_bytes() == data and got.size == len(data)
    monkeypatch.undo()
    assert spool.accept(rec(1), data, ["PACS"]) == got  # the same bytes in one piece: no-op


def test_accept_other_bytes_or_metadata_conflicts(spool: Spool) -> None:
    first = spool.accept(rec(1), blob(1), ["PACS"])
    with pytest.raises(SpoolConflict, match="other bytes"):
        spool.accept(rec(1), blob(2), ["PACS"])
    with pytest.raises(SpoolConflict, match="other metadata"):
        spool.accept(rec(1, token="exam-2"), blob(1), ["PACS"])
    assert spool.read(first) == blob(1)  # never overwritten


@pytest.mark.parametrize(
    "bad", ["../../etc", "..", ".", "", "1..2", "1.2.", ".1.2", "1.2/3", "1.a", "1.2\n", "9" * 65]
)
def test_unsafe_uids_rejected(bad: str, spool: Spool) -> None:
    with pytest.raises(InvalidUID):
        rec(1, study=bad)
    with pytest.raises(InvalidUID):
        InstanceRecord(bad, CT, STUDY, STUDY, ELE, 1)
    with pytest.raises(InvalidUID):
        spool_files.instance_path(spool.root / "instances", STUDY, bad)
    with pytest.raises(InvalidUID):
        spool.rearm(study_uid=bad)


def test_uid_of_64_characters_accepted(spool: Spool) -> None:
    study = "1." + "2" * 62
    inst = spool.accept(rec(1, study=study[:60]), blob(1), ["PACS"])
    assert spool.read(inst) == blob(1)
    assert len(study) == 64
    InstanceRecord("1." + "3" * 62, CT, study, study, ELE, 1)


def test_second_open_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    with Spool(root), pytest.raises(SpoolLocked):
        Spool(root)
    with Spool(root):  # released by close()
        pass


def test_closed_spool_raises(tmp_path: Path) -> None:
    s = Spool(tmp_path / "spool")
    s.close()
    s.close()
    with pytest.raises(SpoolClosed):
        s.due("PACS", time.time(), 1)
    with pytest.raises(SpoolClosed):
        s.accept(rec(1), blob(1), ["PACS"])


def test_failed_commit_leaves_no_file(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(spool._index, "insert_many", boom)
    with pytest.raises(sqlite3.OperationalError):
        spool.accept(rec(1), blob(1), ["PACS"])
    monkeypatch.undo()
    assert not list((spool.root / "instances" / STUDY).iterdir())
    inst = spool.accept(rec(1), blob(1), ["PACS"])
    assert spool.read(inst) == blob(1) and spool.problems == []


def test_stray_file_under_final_name_is_moved_aside(spool: Spool) -> None:
    study_dir = spool.root / "instances" / STUDY
    study_dir.mkdir()
    (study_dir / f"{STUDY}.3.1.dcm").write_bytes(b"not accepted")
    inst = spool.accept(rec(1), blob(1), ["PACS"])
    assert spool.read(inst) == blob(1)
    (orphan,) = spool.problems
    assert orphan.kind == "orphan" and orphan.path.read_bytes() == b"not accepted"


def test_root_created_with_parents(tmp_path: Path) -> None:
    with Spool(tmp_path / "a" / "b" / "spool") as s:
        assert s.due("PACS", 0.0, 1) == []
        with pytest.raises(ValueError):
            s.due("PACS", 0.0, 0)


def test_spool_does_not_import_dicom_libraries() -> None:
    code = (
        "import sys, agent.spool; bad = {'pydicom', 'pynetdicom'} & set(sys.modules);"
        " sys.exit(f'imports {bad}' if bad else 0)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# -- recovery -----------------------------------------------------------------------------------


def test_recovery_removes_temp_and_moves_orphans(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    with Spool(root) as s:
        kept = s.accept(rec(1), blob(1), ["PACS"])
    study_dir = root / "instances" / STUDY
    (study_dir / f".{STUDY}.3.2.dcm.abc123.tmp").write_bytes(b"half")
    (study_dir / f"{STUDY}.3.3.dcm").write_bytes(blob(3))  # renamed, never committed
    (study_dir / "README").write_text("left alone")
    with Spool(root) as s:
        assert s.recovery.temp_files_removed == 1
        moved = root / "orphans" / STUDY / f"{STUDY}.3.3.dcm"
        assert s.recovery.orphans_moved == (moved,)
        assert moved.read_bytes() == blob(3)
        assert sorted(p.name for p in study_dir.iterdir()) == [f"{STUDY}.3.1.dcm", "README"]
        assert [(p.kind, p.sop_instance_uid) for p in s.problems] == [("orphan", f"{STUDY}.3.3")]
        assert s.due("PACS", float("inf"), 10) == [kept]
    # A second orphan of the same name does not replace the first.
    (study_dir / f"{STUDY}.3.3.dcm").write_bytes(b"other")
    with Spool(root) as s:
        assert s.recovery.orphans_moved == (moved.with_name(moved.name + ".1"),)
        assert moved.read_bytes() == blob(3)


def test_recovery_flags_missing_and_short_files(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    with Spool(root) as s:
        a = s.accept(rec(1), blob(1), ["PACS"])
        b = s.accept(rec(2), blob(2), ["PACS"])
        c = s.accept(rec(3), blob(3), ["PACS"])
        path_a, path_b = s.path(a), s.path(b)
    path_a.unlink()
    path_b.write_bytes(blob(2)[:500])
    with Spool(root) as s:
        kinds = {(p.kind, p.sop_instance_uid) for p in s.recovery.problems}
        assert kinds == {("missing", a.sop_instance_uid), ("size", b.sop_instance_uid)}
        assert {(p.kind, p.path) for p in s.problems} == {("missing", path_a), ("size", path_b)}
        assert s.due("PACS", float("inf"), 10) == [c]
        with pytest.raises(SpoolCorrupt, match="missing"):
            s.read(a)
        assert s.summary()[0].problems == 2
    path_b.write_bytes(blob(2))  # restored by hand: verified in full, then cleared
    with Spool(root) as s:
        assert [p.kind for p in s.problems] == ["missing"]
        assert s.due("PACS", float("inf"), 10) == [b, c]
        assert s.accept(rec(1), blob(1), ["PACS"]) == a  # the same bytes again repair it
        assert s.problems == [] and s.read(a) == blob(1)
        assert s.due("PACS", float("inf"), 10) == [a, b, c]


def test_corrupted_file_detected_on_read(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    with Spool(root) as s:
        a = s.accept(rec(1), blob(1), ["PACS"])
        b = s.accept(rec(2), blob(2), ["PACS"])
        damaged = bytearray(blob(1))
        damaged[500] ^= 0xFF
        s.path(a).write_bytes(bytes(damaged))  # same size: only the hash tells
        assert s.due("PACS", float("inf"), 10) == [a, b]
        with pytest.raises(SpoolCorrupt, match="SHA-256"):
            s.read(a)
        assert s.due("PACS", float("inf"), 10) == [b]
        (problem,) = s.problems
        assert (problem.kind, problem.sop_instance_uid) == ("corrupt", a.sop_instance_uid)
    with Spool(root) as s:  # still flagged after a restart
        assert [p.kind for p in s.problems] == ["corrupt"]
        s.path(a).write_bytes(blob(1))
    with Spool(root) as s:
        assert s.problems == []


def test_interrupted_send_is_pending_again(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    with Spool(root) as s:
        a = s.accept(rec(1), blob(1), ["PACS"])
        assert s.mark_sending([a.sop_instance_uid], "PACS") == 1
        assert s.due("PACS", float("inf"), 10) == []
    with Spool(root) as s:
        assert s.recovery.sending_reset == 1
        assert s.due("PACS", float("inf"), 10) == [a]


def test_retry_time_survives_restart_and_clock_step(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    clock = Clock()
    with Spool(root, clock=clock, max_retry_delay=600) as s:
        a = s.accept(rec(1), blob(1), ["PACS"])
        s.mark_retry([a.sop_instance_uid], "PACS", "refused", clock.t + 60)
        b = s.accept(rec(2), blob(2), ["PACS"])
        s.mark_retry([b.sop_instance_uid], "PACS", "refused", clock.t + 10_000)  # capped
        assert s.deliveries(b.sop_instance_uid)[0].next_attempt == clock.t + 600
    with Spool(root, clock=clock, max_retry_delay=600) as s:
        assert s.recovery.next_attempt_clamped == 0
        assert s.due("PACS", clock.t + 59, 10) == []
        assert s.due("PACS", clock.t + 60, 10) == [a]
    stepped_back = Clock(clock.t - 86_400)  # the wall clock went back a day
    with Spool(root, clock=stepped_back, max_retry_delay=600) as s:
        assert s.recovery.next_attempt_clamped == 2
        assert s.due("PACS", stepped_back.t + 600, 10) == [a, b]


# -- delivery state -----------------------------------------------------------------------------


def test_due_order_limit_and_destination(spool: Spool, clock: Clock) -> None:
    made = [spool.accept(rec(n), blob(n), ["PACS"]) for n in (5, 3, 9, 1)]
    other = spool.accept(rec(7), blob(7), ["BACKUP"])
    assert spool.due("PACS", clock.t, 10) == made  # acceptance order, not UID order
    assert spool.due("PACS", clock.t, 2) == made[:2]
    assert spool.due("BACKUP", clock.t, 10) == [other]
    assert spool.due("PACS", clock.t - 1, 10) == []


def test_state_transitions(spool: Spool, clock: Clock) -> None:
    a, b, c = (spool.accept(rec(n), blob(n), ["PACS"]).sop_instance_uid for n in (1, 2, 3))
    assert spool.mark_sending([a, b, c], "PACS") == 3
    assert spool.due("PACS", clock.t, 10) == []
    assert spool.mark_retry([a], "PACS", "connection refused", clock.t + 30) == 1
    assert spool.mark_delivered([b], "PACS", warning="B007") == 1
    assert spool.mark_failed([c], "PACS", "A900 identifier does not match SOP class") == 1
    (da,) = spool.deliveries(a)
    assert (da.state, da.attempts, da.last_error, da.next_attempt) == (
        DeliveryState.PENDING,
        1,
        "connection refused",
        clock.t + 30,
    )
    (db,) = spool.deliveries(b)
    assert (db.state, db.warning, db.delivered_at) == (DeliveryState.DELIVERED, "B007", clock.t)
    assert spool.deliveries(c)[0].state == DeliveryState.FAILED
    assert sops(spool.due("PACS", clock.t + 30, 10)) == [a]
    # A late retry or failure never undoes a delivery; a delivery is recorded once.
    assert spool.mark_retry([b], "PACS", "late", clock.t) == 0
    assert spool.mark_failed([b], "PACS", "late") == 0
    assert spool.mark_delivered([b], "PACS") == 0
    assert spool.deliveries(b)[0].state == DeliveryState.DELIVERED
    assert spool.mark_delivered([c], "PACS") == 1  # an archive may accept a failed one later


def test_unknown_instance_rolls_back_batch(spool: Spool) -> None:
    a = spool.accept(rec(1), blob(1), ["PACS"]).sop_instance_uid
    with pytest.raises(UnknownInstance):
        spool.mark_delivered([a, "1.2.3.4"], "PACS")
    with pytest.raises(UnknownInstance):
        spool.mark_delivered([a], "NOWHERE")
    assert spool.deliveries(a)[0].state == DeliveryState.PENDING
    with pytest.raises(TypeError):
        spool.mark_delivered(a, "PACS")


def test_rearm(spool: Spool, clock: Clock) -> None:
    a = spool.accept(rec(1), blob(1), ["PACS", "BACKUP"]).sop_instance_uid
    b = spool.accept(rec(2, study=STUDY2), blob(2), ["PACS"]).sop_instance_uid
    spool.mark_failed([a], "PACS", "C000")
    spool.mark_failed([a], "BACKUP", "C000")
    spool.mark_retry([b], "PACS", "timeout", clock.t + 500)
    assert spool.rearm(destination="BACKUP") == 1
    assert spool.deliveries(a)[0].state == DeliveryState.PENDING  # BACKUP
    assert spool.deliveries(a)[1].state == DeliveryState.FAILED  # PACS
    assert spool.rearm(study_uid=STUDY2) == 1  # cuts b's backoff short
    (db,) = spool.deliveries(b)
    assert (db.state, db.attempts, db.next_attempt) == (DeliveryState.PENDING, 0, clock.t)
    assert spool.rearm() == 1
    assert sops(spool.due("PACS", clock.t, 10)) == [a, b]


def test_add_destination(spool: Spool, clock: Clock) -> None:
    a = spool.accept(rec(1), blob(1), ["PACS"]).sop_instance_uid
    spool.mark_delivered([a], "PACS")
    assert spool.add_destination([a], "BACKUP") == 1
    assert spool.add_destination([a], "BACKUP") == 0
    assert sops(spool.due("BACKUP", clock.t, 10)) == [a]
    with pytest.raises(UnknownInstance):
        spool.add_destination([a, "1.2.3"], "THIRD")
    assert [d.destination for d in spool.deliveries(a)] == ["BACKUP", "PACS"]


def test_summary(tmp_path: Path, clock: Clock) -> None:
    root = tmp_path / "spool"
    with Spool(root, clock=clock) as s:
        uids = [s.accept(rec(n), blob(n), ["PACS", "BACKUP"]).sop_instance_uid for n in range(4)]
        other = s.accept(rec(9, study=STUDY2, token=None), blob(9), ["PACS"]).sop_instance_uid
        s.mark_delivered(uids, "PACS")
        s.mark_delivered(uids[:2], "BACKUP")
        s.mark_retry([uids[2]], "BACKUP", "association rejected (transient)", clock.t + 40)
        clock.t += 1
        s.mark_failed([uids[3]], "BACKUP", "C211")
        s.mark_delivered([other], "PACS")
    with sqlite3.connect(root / "index.sqlite3") as db:  # storage commitment is not built yet
        db.execute("UPDATE deliveries SET commitment = 'committed'")
    with Spool(root, clock=clock) as s:
        first, second = s.summary()
    assert (first.study_instance_uid, first.images, first.problems) == (STUDY, 4, 0)
    assert first.exam_tokens == ("exam-1",)
    backup, pacs = first.destinations
    assert (backup.name, backup.state, backup.images, backup.sent, backup.failed) == (
        "BACKUP",
        "failed",
        4,
        2,
        1,
    )
    assert (backup.pending, backup.last_error, backup.next_attempt) == (1, "C211", clock.t - 1 + 40)
    assert (pacs.state, pacs.sent, pacs.committed, pacs.pending, pacs.last_error) == (
        "committed",
        4,
        4,
        0,
        None,
    )
    assert pacs.next_attempt is None
    assert (second.study_instance_uid, second.images, second.exam_tokens) == (STUDY2, 1, ())
    assert [d.state for d in second.destinations] == ["committed"]


# -- threads and speed --------------------------------------------------------------------------


def test_acquisition_and_senders_in_threads(spool: Spool) -> None:
    total = 150
    errors: list[BaseException] = []
    done = threading.Event()

    def acquire() -> None:
        try:
            for n in range(total):
                spool.accept(rec(n), blob(n, 2000), ["PACS", "BACKUP"])
        except BaseException as e:
            errors.append(e)
        finally:
            done.set()

    def send(dest: str) -> None:
        try:
            while True:
                finished = done.is_set()
                batch = sops(spool.due(dest, float("inf"), 16))
                if batch:
                    spool.mark_sending(batch, dest)
                    for uid in batch:
                        inst = spool.get(uid)
                        assert inst is not None and len(spool.read(inst)) == 2000
                    spool.mark_delivered(batch, dest)
                elif finished:
                    return
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=acquire)]
    threads += [threading.Thread(target=send, args=(d,)) for d in ("PACS", "BACKUP")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    (study,) = spool.summary()
    assert study.images == total
    assert [(d.state, d.sent) for d in study.destinations] == [("delivered", total)] * 2


def test_same_sop_accepted_concurrently(spool: Spool) -> None:
    barrier = threading.Barrier(4)
    results: list[object] = []

    def go(n: int) -> None:
        barrier.wait()
        try:
            results.append(spool.accept(rec(1), blob(n % 2), ["PACS"]))
        except SpoolConflict as e:
            results.append(e)

    threads = [threading.Thread(target=go, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = [r for r in results if not isinstance(r, SpoolConflict)]
    assert len(accepted) == 2 and accepted[0] == accepted[1]
    (inst,) = spool.instances()
    assert spool.read(inst) in (blob(0), blob(1))
    assert not os.listdir(spool.root / "orphans")


def test_accept_rate(spool: Spool, capsys: pytest.CaptureFixture[str]) -> None:
    data = os.urandom(512 * 1024)
    n = 100
    start = time.perf_counter()
    for k in range(n):
        spool.accept(rec(k), data, ["PACS"])
    elapsed = time.perf_counter() - start
    with capsys.disabled():
        print(f"\nspool: {n / elapsed:.0f} accepts/s of 512 KiB ({1000 * elapsed / n:.2f} ms each)")
