"""The durable spool: encoded Part 10 files on disk plus their index and delivery state.

Layout under `root`:
    lock                                  flock()ed while a Spool has the root open
    index.sqlite3 (+ -wal, -shm)          instances and deliveries (see index.py)
    instances/<study UID>/<SOP UID>.dcm   accepted files, never rewritten with other bytes
    orphans/<study UID>/<SOP UID>.dcm     files found without an index row (never accepted)
    purging/<n>.json                      a purge under way: finished by the next open

Times (accepted_at, next_attempt) are wall-clock epoch seconds: a monotonic clock restarts with
the process, and retry times must survive a restart. The wall clock can step; recovery pulls any
retry scheduled more than `max_retry_delay` ahead back to now + max_retry_delay, mark_retry()
never schedules further ahead than that, and rearm() cuts every wait short.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import NoReturn

from . import files
from .group import GroupCommit
from .index import Index, Row
from .model import (
    Delivery,
    DeliveryState,
    InstanceRecord,
    RecoveryReport,
    SpoolConflict,
    SpoolCorrupt,
    SpooledInstance,
    SpoolLocked,
    SpoolProblem,
    StudySummary,
    check_destination,
    check_uid,
)
from .recovery import content_problem, file_problem, recover
from .summary import summarize

log = logging.getLogger(__name__)
_ACTIVE = ("pending", "sending")


def _uids(sop_uids: Iterable[str]) -> list[str]:
    if isinstance(sop_uids, str):
        raise TypeError("pass a sequence of SOP Instance UIDs, not one string")
    return list(sop_uids)


def _orphan_problem(moved: Path) -> SpoolProblem:
    sop = moved.name.split(files.SUFFIX)[0]
    return SpoolProblem("orphan", sop, moved, f"found without an index row; moved to {moved}")


class Spool:
    """Open (creating the layout and recovering from a crash) the spool at `root`.

    Thread-safe: any thread may call any method. The index is one SQLite connection that
    writes and one that reads, each behind a lock held only for SQL (see index.py); files are
    written outside them. Two accepts of the same SOP Instance UID are serialised; different
    ones run concurrently.
    """

    def __init__(
        self,
        root: Path,
        *,
        clock: Callable[[], float] = time.time,
        max_retry_delay: float = 3600.0,
    ) -> None:
        self.root = Path(root)
        self._clock = clock
        self._max_retry_delay = max_retry_delay
        self._instances = self.root / "instances"
        self._orphans = self.root / "orphans"
        self._purging = self.root / "purging"
        self._make_layout()
        self._lock_fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolLocked(f"{self.root} is already open (another agent running?)") from None
        self.rebuilt: Path | None = None  # where a damaged index was set aside, if one was
        try:
            try:
                self._open_index(max_retry_delay)
            except sqlite3.DatabaseError as e:
                # the index is damaged: set aside (kept), a new one made, and every file found
                # becomes an orphan, for the caller to adopt (agent.spool_rebuild)
                self.rebuilt = self._set_aside_index(e)
                self._open_index(max_retry_delay)
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._late_orphans = [_orphan_problem(p) for p in self.recovery.orphans_moved]
        self._durable_dirs: set[str] = set()  # study folders whose entry is known durable
        self._dir_lock = threading.Lock()
        self._group = GroupCommit(self._index, clock)
        self._inflight: set[str] = set()
        self._inflight_cond = threading.Condition()
        self._closed = False
        self._close_lock = threading.Lock()

    def _open_index(self, max_retry_delay: float) -> None:
        self._index = Index(self.root / "index.sqlite3")
        try:
            files.fsync_dir(self.root)
            self._finish_purges()  # before recovery, which would call their files orphans
            self.recovery: RecoveryReport = recover(
                self._instances, self._orphans, self._index, self._clock(), max_retry_delay
            )
        except BaseException:
            self._index.close()
            raise

    def _set_aside_index(self, error: Exception) -> Path:
        damaged = self.root / "damaged" / f"index-{time.time_ns()}"
        files.make_dirs(damaged)
        for name in ("index.sqlite3", "index.sqlite3-wal", "index.sqlite3-shm"):
            with suppress(FileNotFoundError):
                os.rename(self.root / name, damaged / name)
        files.fsync_dir(damaged)
        files.fsync_dir(self.root)
        log.error(
            "spool: index damaged (%s): set aside in %s, rebuilt from the files", error, damaged
        )
        return damaged

    def adopt(self, orphan: Path, record: InstanceRecord, destinations: Sequence[str]) -> None:
        """An orphan (moved aside by an index rebuild) accepted again under `record`, then
        removed from orphans/: its deliveries start afresh."""
        self.accept(record, orphan.read_bytes(), destinations)
        files.remove_durable(orphan)
        self._late_orphans = [p for p in self._late_orphans if p.path != orphan]

    def _make_layout(self) -> None:
        files.make_dirs(self.root)
        for sub in (self._instances, self._orphans, self._purging):
            files.make_dir(sub)  # made durable by the fsync of root that follows

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        with self._close_lock:
            if not self._closed:
                self._closed = True
                self._index.close()
                os.close(self._lock_fd)  # releases the flock

    def __enter__(self) -> Spool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- accepting ------------------------------------------------------------------------------

    def accept(
        self,
        record: InstanceRecord,
        data: files.FileData,
        destinations: Sequence[str],
        deferred: Sequence[str] = (),
    ) -> SpooledInstance:
        """Make `data` (the file's bytes, in one piece or in pieces: files.FileData) durable
        and index it with one pending delivery per destination (and a deferred one per
        destination in `deferred`: see release_deferred).

        Returns only once the file is fsynced under its final name, its folder fsynced and the
        index row committed (accepts arriving together share the folder fsync and the
        commit: see group.py). Accepting an already indexed SOP Instance UID with the same bytes
        and metadata is a no-op returning the existing instance (destinations are not added: see
        add_destination); other bytes or metadata raise SpoolConflict.
        """
        dests = list(dict.fromkeys(check_destination(d) for d in _uids(destinations)))
        later = [check_destination(d) for d in _uids(deferred) if d not in dests]
        data = files.pieces(data)  # once: what is hashed is what is written
        size, digest = files.size_and_sha256(data)
        with self._reserved(record.sop_instance_uid):
            found = self._index.get(record.sop_instance_uid)
            if found is not None:
                return self._accept_again(found[0], found[1], record, data, size, digest)
            final = self._final_path(record.study_instance_uid, record.sop_instance_uid)
            if os.path.lexists(final):  # no index row: never accepted, so never ours to replace
                self._orphan(final)
            files.write_in_place(final, data)
            try:  # its folder fsynced, then indexed: with other accepts arriving meanwhile
                return self._group.commit(
                    final.parent, Row(record, size, digest, dests, deferred=later)
                )
            except BaseException:
                with suppress(OSError):
                    files.remove_durable(final)
                raise

    def _accept_again(
        self,
        existing: SpooledInstance,
        problem: str | None,
        record: InstanceRecord,
        data: files.FileData,
        size: int,
        digest: str,
    ) -> SpooledInstance:
        sop = record.sop_instance_uid
        if existing.size != size or existing.sha256 != digest:
            raise SpoolConflict(
                f"{sop} was already accepted with other bytes ({existing.size} bytes, SHA-256"
                f" {existing.sha256}; now {size} bytes, {digest}); the accepted file is kept"
            )
        if existing.record != record:
            raise SpoolConflict(
                f"{sop} was already accepted with other metadata: {existing.record} != {record}"
            )
        if problem is not None:  # the same bytes again: repair the damaged or missing file
            final = self._final_path(record.study_instance_uid, sop)
            files.write_durable(final, data)
            self._index.set_problem(sop, None, None)
        return existing

    @contextmanager
    def _reserved(self, sop_uid: str) -> Iterator[None]:
        with self._inflight_cond:
            while sop_uid in self._inflight:
                self._inflight_cond.wait()
            self._inflight.add(sop_uid)
        try:
            yield
        finally:
            with self._inflight_cond:
                self._inflight.discard(sop_uid)
                self._inflight_cond.notify_all()

    def _final_path(self, study_uid: str, sop_uid: str) -> Path:
        """The final path, with the study folder created and its entry made durable."""
        path = files.instance_path(self._instances, study_uid, sop_uid)
        with self._dir_lock:
            if study_uid not in self._durable_dirs:
                # A folder that already existed was made durable by recovery at open.
                if files.make_dir(path.parent):
                    files.fsync_dir(self._instances)
                self._durable_dirs.add(study_uid)
        return path

    def _orphan(self, path: Path) -> None:
        moved = files.move_aside(path, self._orphans / path.parent.name)
        self._late_orphans.append(_orphan_problem(moved))

    # -- reading --------------------------------------------------------------------------------

    def get(self, sop_uid: str) -> SpooledInstance | None:
        found = self._index.get(sop_uid)
        return None if found is None else found[0]

    def instances(self, study_uid: str | None = None) -> list[SpooledInstance]:
        """Accepted instances in acceptance order, of one study or all."""
        return self._index.instances(study_uid)

    def path(self, instance: SpooledInstance) -> Path:
        return files.instance_path(
            self._instances, instance.study_instance_uid, instance.sop_instance_uid
        )

    def read(self, instance: SpooledInstance) -> bytes:
        """The accepted bytes, verified (size and SHA-256). A damaged or missing file raises
        SpoolCorrupt and is flagged in the index, so due() no longer lists it."""
        path = self.path(instance)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self._flag(instance, "missing", f"{path} is missing")
        digest = hashlib.sha256(data).hexdigest()
        problem = content_problem(path, instance, len(data), digest)
        if problem is not None:
            self._flag(instance, *problem)
        return data

    def verified_path(self, instance: SpooledInstance) -> Path:
        """The accepted file, once checked as `read` checks it, for senders that stream it
        from disk instead of holding its bytes."""
        path = self.path(instance)
        problem = file_problem(path, instance, full=True)
        if problem is not None:
            self._flag(instance, *problem)
        return path

    def _flag(self, instance: SpooledInstance, kind: str, detail: str) -> NoReturn:
        self._index.set_problem(instance.sop_instance_uid, kind, detail)
        raise SpoolCorrupt(f"{instance.sop_instance_uid}: {detail}; it will not be sent")

    @property
    def problems(self) -> list[SpoolProblem]:
        """Alarms: indexed instances whose file is missing or damaged, and orphans moved aside."""
        flagged = [
            SpoolProblem(kind, inst.sop_instance_uid, self.path(inst), detail)
            for inst, kind, detail in self._index.problems()
        ]
        return flagged + list(self._late_orphans)

    # -- delivery state -------------------------------------------------------------------------

    def due(self, destination: str, now: float, limit: int) -> list[SpooledInstance]:
        """Pending deliveries to `destination` whose next attempt is due, in acceptance order.

        Instances with a problem (missing or damaged file) are never listed.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        return self._index.due(destination, now, limit)

    def deliveries(self, sop_uid: str) -> list[Delivery]:
        return self._index.deliveries(sop_uid)

    def mark_sending(self, sop_uids: Iterable[str], destination: str) -> int:
        """pending -> sending (reset to pending by the next open if no outcome is recorded)."""
        return self._index.transition(
            _uids(sop_uids), destination, ("pending",), "state = 'sending'", {"now": self._clock()}
        )

    def mark_delivered(
        self, sop_uids: Iterable[str], destination: str, warning: str | None = None
    ) -> int:
        """-> delivered (from pending, sending or failed); `warning` e.g. a B000 status."""
        now = self._clock()
        return self._index.transition(
            _uids(sop_uids),
            destination,
            (*_ACTIVE, "failed"),
            "state = 'delivered', attempts = attempts + 1, warning = :warning,"
            " delivered_at = :now, last_error = NULL",
            {"now": now, "warning": warning},
        )

    def mark_retry(
        self, sop_uids: Iterable[str], destination: str, error: str, next_attempt: float
    ) -> int:
        """Stays pending, one more attempt counted, due again at `next_attempt` (epoch s)."""
        now = self._clock()
        nxt = min(next_attempt, now + self._max_retry_delay)
        return self._index.transition(
            _uids(sop_uids),
            destination,
            _ACTIVE,
            "state = 'pending', attempts = attempts + 1, last_error = :error, next_attempt = :nxt",
            {"now": now, "error": error, "nxt": nxt},
        )

    def mark_failed(self, sop_uids: Iterable[str], destination: str, error: str) -> int:
        """-> failed: permanent, kept and shown until rearm()."""
        return self._index.transition(
            _uids(sop_uids),
            destination,
            _ACTIVE,
            "state = 'failed', attempts = attempts + 1, last_error = :error",
            {"now": self._clock(), "error": error},
        )

    # -- retention (agent.retention) ----------------------------------------------------

    def purge(self, instances: Sequence[SpooledInstance]) -> int:
        """Remove delivered instances for good: their rows, then their files. Only those whose
        every delivery is delivered go (an instance with anything left to send stays). The
        intent is written first, so that a crash half-way is finished by the next open."""
        if not instances:
            return 0
        doc = [[i.study_instance_uid, i.sop_instance_uid] for i in instances]
        intent = self._purging / f"{time.time_ns()}.json"
        files.create_durable(intent, json.dumps(doc).encode())
        return self._purge(intent)

    def _purge(self, intent: Path) -> int:
        pairs = [(str(study), str(sop)) for study, sop in json.loads(intent.read_bytes())]
        removed = self._index.delete_settled([sop for _, sop in pairs])
        studies: set[Path] = set()
        for study, sop in pairs:
            if self._index.get(sop) is not None:
                continue  # still to send somewhere: kept
            path = files.instance_path(self._instances, study, sop)
            with suppress(FileNotFoundError):  # gone before a crash
                path.unlink()
            studies.add(path.parent)
        for folder in studies:
            if folder.exists():
                files.fsync_dir(folder)
                with suppress(OSError):
                    folder.rmdir()  # empty: the study is gone
        files.fsync_dir(self._instances)
        files.remove_durable(intent)
        return len(removed)

    def _finish_purges(self) -> None:
        for intent in sorted(self._purging.glob("*.json")):
            try:
                self._purge(intent)
            except ValueError:  # a torn intent (crash while it was written): nothing done yet
                intent.unlink()

    def last_delivered(self) -> dict[str, float]:
        """Per study, the latest delivery or commitment time of its instances (epoch s)."""
        rows = self._index.query(
            "SELECT i.study_instance_uid, max(max(coalesce(d.delivered_at, 0),"
            " coalesce(d.committed_at, 0))) FROM deliveries d JOIN instances i ON i.seq = d.seq"
            " GROUP BY i.study_instance_uid"
        )
        return {str(study): float(t or 0) for study, t in rows}

    def size_bytes(self) -> dict[str, int]:
        """Per study, the bytes of its accepted files."""
        rows = self._index.query(
            "SELECT study_instance_uid, sum(size) FROM instances GROUP BY study_instance_uid"
        )
        return {str(study): int(n or 0) for study, n in rows}

    # -- storage commitment of delivered instances (agent.commitment) -------------------

    def mark_commitment_requested(
        self, sop_uids: Iterable[str], destination: str, transaction_uid: str
    ) -> int:
        """delivered, not committed -> commitment requested under `transaction_uid`."""
        check_uid(transaction_uid, "Transaction UID")
        return self._index.transition(
            _uids(sop_uids),
            destination,
            ("delivered",),
            "commitment = 'requested', commitment_txn = :txn",
            {"now": self._clock(), "txn": transaction_uid},
        )

    def mark_committed(self, sop_uids: Iterable[str], destination: str) -> int:
        """The archive committed to keeping them: `queue` says committed once all are."""
        return self._index.transition(
            _uids(sop_uids),
            destination,
            ("delivered",),
            "commitment = 'committed', committed_at = :now",
            {"now": self._clock()},
        )

    def forget_commitment(self, sop_uids: Iterable[str], destination: str) -> int:
        """No answer to the request: they are asked for again, in a new request."""
        return self._index.transition(
            _uids(sop_uids),
            destination,
            ("delivered",),
            "commitment = NULL, commitment_txn = NULL",
            {"now": self._clock()},
        )

    def resend(self, sop_uids: Iterable[str], destination: str, error: str) -> int:
        """delivered -> pending: the archive reported it does not keep them (commitment
        failed); they are sent again, then asked for again."""
        return self._index.transition(
            _uids(sop_uids),
            destination,
            ("delivered",),
            "state = 'pending', attempts = 0, next_attempt = :now, last_error = :error,"
            " commitment = NULL, commitment_txn = NULL",
            {"now": self._clock(), "error": error},
        )

    def release_deferred(self, exam_token: str) -> int:
        """The exam ended: its deferred deliveries become pending now (one transaction)."""
        return self._index.release_deferred(exam_token, self._clock())

    def release_deferred_except(self, open_token: str | None) -> int:
        """At start: deferred deliveries of any exam but the open one become pending."""
        return self._index.release_deferred_except(open_token, self._clock())

    def rearm(self, destination: str | None = None, study_uid: str | None = None) -> int:
        """failed -> pending and waiting retries due now (attempts reset), optionally filtered."""
        if study_uid is not None:
            check_uid(study_uid, "Study Instance UID")
        return self._index.rearm(destination, study_uid, self._clock())

    def add_destination(self, sop_uids: Iterable[str], destination: str) -> int:
        """A pending delivery to `destination` for each instance that has none yet."""
        check_destination(destination)
        return self._index.add_destination(_uids(sop_uids), destination, self._clock())

    def summary(self) -> list[StudySummary]:
        return summarize(self._index)

    def count(self, destination: str, state: DeliveryState) -> int:
        """How many deliveries to `destination` are in `state`."""
        rows = self._index.query(
            "SELECT count(*) FROM deliveries WHERE destination = ? AND state = ?",
            (destination, state.value),
        )
        return int(rows[0][0])
