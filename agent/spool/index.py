"""The spool index: one SQLite database (WAL, synchronous=FULL), one connection that writes
and one that only reads, each behind its own lock.

Thread-safety: each connection (check_same_thread=False) is guarded by a threading.Lock, held
for its statements only, never while files are written or fsynced, so a sender's
mark_delivered() waits at most for one WAL commit of the acquisition thread. Reads never wait
for a commit (a WAL reader sees every transaction committed before its statement began): an
accept's look-up of its SOP Instance UID runs while another group of accepts commits.
Every write is one BEGIN IMMEDIATE ... COMMIT transaction, batches included.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .model import (
    CommitmentState,
    Delivery,
    DeliveryState,
    InstanceRecord,
    SpoolClosed,
    SpooledInstance,
    SpoolError,
    UnknownInstance,
)

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,       -- acceptance order
    sop_instance_uid TEXT NOT NULL UNIQUE,
    sop_class_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    instance_number INTEGER NOT NULL,
    exam_token TEXT,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    accepted_at REAL NOT NULL,                   -- epoch seconds
    problem TEXT CHECK (problem IN ('missing', 'size', 'corrupt')),  -- never sent while set
    problem_detail TEXT
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_instance_uid, seq);
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER NOT NULL REFERENCES instances (seq) ON DELETE CASCADE,
    destination TEXT NOT NULL,
    -- deferred: routed, but sent only once its exam ends (send_while_scanning = false)
    state TEXT NOT NULL
        CHECK (state IN ('deferred', 'pending', 'sending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,                  -- epoch seconds (wall clock)
    last_error TEXT,
    warning TEXT,
    delivered_at REAL,
    commitment TEXT CHECK (commitment IN ('requested', 'committed', 'refused')),
    commitment_txn TEXT,                         -- storage commitment Transaction UID
    committed_at REAL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (seq, destination)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_queue ON deliveries (destination, state, seq);
"""

# MIGRATIONS[v] takes an index of schema v to v + 1 (bump SCHEMA_VERSION with each, and make
# SCHEMA the result). They run at open, in the transaction that stamps the new version: an
# upgraded package migrates the spool at the daemon's first start (docs/install.md).
MIGRATIONS: dict[int, str] = {}


def _upgrade(path: Path, version: int) -> str:
    """The SQL that brings an index of schema `version` (0: a new file) to SCHEMA_VERSION."""
    if version > SCHEMA_VERSION:
        raise SpoolError(
            f"{path}: index schema {version} is newer than {SCHEMA_VERSION}: written by a newer"
            " modality-agent (a downgrade?)"
        )
    steps = range(version or SCHEMA_VERSION, SCHEMA_VERSION)
    missing = [v for v in steps if v not in MIGRATIONS]
    if missing:
        raise SpoolError(f"{path}: index schema {version}: no migration from schema {missing[0]}")
    # SCHEMA last: its IF NOT EXISTS statements add what the migrations did not make. Each
    # ends its statement, so that one without its ";" cannot run into the next.
    return ";\n".join([*(MIGRATIONS[v] for v in steps), SCHEMA])


_I_COLS = (
    "i.seq, i.sop_instance_uid, i.sop_class_uid, i.study_instance_uid, i.series_instance_uid,"
    " i.transfer_syntax_uid, i.instance_number, i.exam_token, i.size, i.sha256, i.accepted_at"
)


def _instance(row: Sequence[Any]) -> SpooledInstance:
    record = InstanceRecord(
        sop_instance_uid=row[1],
        sop_class_uid=row[2],
        study_instance_uid=row[3],
        series_instance_uid=row[4],
        transfer_syntax_uid=row[5],
        instance_number=row[6],
        exam_token=row[7],
    )
    return SpooledInstance(record, seq=row[0], size=row[8], sha256=row[9], accepted_at=row[10])


@dataclass(frozen=True)
class Row:
    """An accepted instance as the index records it, with its deliveries."""

    record: InstanceRecord
    size: int
    sha256: str
    destinations: Sequence[str]
    deferred: Sequence[str] = ()


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)


class _Guarded:
    """One connection, used by one thread at a time."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.Lock()

    @contextmanager
    def use(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise SpoolClosed("the spool is closed")
            yield self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class Index:
    def __init__(self, path: Path) -> None:
        conn = _connect(path)
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise SpoolError(f"{path}: SQLite refused WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            upgrade = _upgrade(path, version)
            try:
                conn.executescript(
                    f"BEGIN IMMEDIATE; {upgrade} PRAGMA user_version={SCHEMA_VERSION};"
                )
            except sqlite3.Error as e:
                if version in (0, SCHEMA_VERSION):
                    raise
                # whatever failed (a bad statement, a constraint a migration breaks), a
                # SpoolError, not a DatabaseError: the index is sound, so it must not be set
                # aside and rebuilt (which would send everything again)
                raise SpoolError(f"{path}: migrating the index from schema {version}: {e}") from e
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        try:
            reader = _connect(path)
            reader.execute("PRAGMA query_only=ON")
        except BaseException:
            conn.close()
            raise
        self._writer = _Guarded(conn)
        self._reader = _Guarded(reader)

    def close(self) -> None:
        self._reader.close()
        self._writer.close()

    def _read(self) -> AbstractContextManager[sqlite3.Connection]:
        """The read-only connection, for statements that change nothing."""
        return self._reader.use()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._writer.use() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled back already (e.g. disk full)
                    conn.execute("ROLLBACK")
                raise

    # -- instances ------------------------------------------------------------------------------

    def get(self, sop_uid: str) -> tuple[SpooledInstance, str | None] | None:
        """The instance and its problem kind (None when healthy)."""
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {_I_COLS}, i.problem FROM instances i WHERE i.sop_instance_uid = ?",
                (sop_uid,),
            ).fetchone()
        return None if row is None else (_instance(row), row[11])

    def insert(
        self,
        record: InstanceRecord,
        size: int,
        sha256: str,
        destinations: Sequence[str],
        now: float,
        deferred: Sequence[str] = (),
    ) -> SpooledInstance:
        (result,) = self.insert_many([Row(record, size, sha256, destinations, deferred)], now)
        if isinstance(result, BaseException):
            raise result
        return result

    def insert_many(
        self, rows: Sequence[Row], now: float
    ) -> list[SpooledInstance | sqlite3.IntegrityError]:
        """Index `rows` in one transaction, each with its deliveries. A row that breaks a
        constraint is left out (its error in its place), the others kept; any other error
        rolls the whole transaction back and is raised."""
        out: list[SpooledInstance | sqlite3.IntegrityError] = []
        with self._write() as conn:
            for row in rows:
                conn.execute("SAVEPOINT row")
                try:
                    out.append(self._insert(conn, row, now))
                except sqlite3.IntegrityError as e:
                    conn.execute("ROLLBACK TO row")
                    out.append(e)
                conn.execute("RELEASE row")
        return out

    @staticmethod
    def _insert(conn: sqlite3.Connection, row: Row, now: float) -> SpooledInstance:
        record = row.record
        cur = conn.execute(
            "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_instance_uid,"
            " series_instance_uid, transfer_syntax_uid, instance_number, exam_token, size,"
            " sha256, accepted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.sop_instance_uid,
                record.sop_class_uid,
                record.study_instance_uid,
                record.series_instance_uid,
                record.transfer_syntax_uid,
                record.instance_number,
                record.exam_token,
                row.size,
                row.sha256,
                now,
            ),
        )
        seq = cur.lastrowid
        assert seq is not None
        conn.executemany(
            "INSERT INTO deliveries (seq, destination, state, next_attempt, updated_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [(seq, d, "pending", now, now) for d in row.destinations]
            + [(seq, d, "deferred", now, now) for d in row.deferred],
        )
        return SpooledInstance(record, seq=seq, size=row.size, sha256=row.sha256, accepted_at=now)

    def instances(self, study_uid: str | None = None) -> list[SpooledInstance]:
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_I_COLS} FROM instances i"
                " WHERE ?1 IS NULL OR i.study_instance_uid = ?1 ORDER BY i.seq",
                (study_uid,),
            ).fetchall()
        return [_instance(r) for r in rows]

    def locations(self) -> set[tuple[str, str]]:
        """(study UID, SOP Instance UID) of every indexed instance."""
        with self._read() as conn:
            rows = conn.execute("SELECT study_instance_uid, sop_instance_uid FROM instances")
            return {(r[0], r[1]) for r in rows}

    def to_check(self) -> list[tuple[SpooledInstance, str | None]]:
        """Instances that may still be sent, or that carry a problem: checked at open."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_I_COLS}, i.problem FROM instances i WHERE i.problem IS NOT NULL"
                " OR EXISTS (SELECT 1 FROM deliveries d WHERE d.seq = i.seq"
                "            AND d.state IN ('pending', 'sending', 'failed'))"
                " ORDER BY i.seq"
            ).fetchall()
        return [(_instance(r), r[11]) for r in rows]

    def set_problem(self, sop_uid: str, kind: str | None, detail: str | None) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE instances SET problem = ?, problem_detail = ? WHERE sop_instance_uid = ?",
                (kind, detail, sop_uid),
            )

    def problems(self) -> list[tuple[SpooledInstance, str, str]]:
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_I_COLS}, i.problem, i.problem_detail FROM instances i"
                " WHERE i.problem IS NOT NULL ORDER BY i.seq"
            ).fetchall()
        return [(_instance(r), r[11], r[12] or "") for r in rows]

    # -- deliveries -----------------------------------------------------------------------------

    def due(self, destination: str, now: float, limit: int) -> list[SpooledInstance]:
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {_I_COLS} FROM deliveries d JOIN instances i ON i.seq = d.seq"
                " WHERE d.destination = ? AND d.state = 'pending' AND d.next_attempt <= ?"
                " AND i.problem IS NULL ORDER BY d.seq LIMIT ?",
                (destination, now, limit),
            ).fetchall()
        return [_instance(r) for r in rows]

    def transition(
        self,
        sop_uids: Iterable[str],
        destination: str,
        from_states: tuple[str, ...],
        assignments: str,
        params: dict[str, Any],
    ) -> int:
        """Apply `assignments` to the rows in `from_states`, in one transaction.

        Rows in another state are left alone (e.g. a late retry never undoes a delivery). An
        instance or destination the index does not hold rolls the whole batch back.
        """
        states = ", ".join(f"'{s}'" for s in from_states)  # constants of this module
        changed = 0
        with self._write() as conn:
            for sop in sop_uids:
                seq_row = conn.execute(
                    "SELECT d.seq FROM deliveries d JOIN instances i ON i.seq = d.seq"
                    " WHERE i.sop_instance_uid = ? AND d.destination = ?",
                    (sop, destination),
                ).fetchone()
                if seq_row is None:
                    raise UnknownInstance(f"no delivery of {sop} to {destination!r} in the spool")
                cur = conn.execute(
                    f"UPDATE deliveries SET {assignments}, updated_at = :now"
                    f" WHERE seq = :seq AND destination = :dest AND state IN ({states})",
                    {**params, "seq": seq_row[0], "dest": destination},
                )
                changed += cur.rowcount
        return changed

    def add_destination(self, sop_uids: Iterable[str], destination: str, now: float) -> int:
        added = 0
        with self._write() as conn:
            for sop in sop_uids:
                row = conn.execute(
                    "SELECT seq FROM instances WHERE sop_instance_uid = ?", (sop,)
                ).fetchone()
                if row is None:
                    raise UnknownInstance(f"{sop} is not in the spool")
                cur = conn.execute(
                    "INSERT OR IGNORE INTO deliveries (seq, destination, state, next_attempt,"
                    " updated_at) VALUES (?, ?, 'pending', ?, ?)",
                    (row[0], destination, now, now),
                )
                added += cur.rowcount
        return added

    def release_deferred(self, exam_token: str, now: float) -> int:
        """The exam ended: its deferred deliveries become pending, in one transaction."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE deliveries SET state = 'pending', next_attempt = ?1, updated_at = ?1"
                " WHERE state = 'deferred'"
                " AND seq IN (SELECT seq FROM instances WHERE exam_token = ?2)",
                (now, exam_token),
            )
            return cur.rowcount

    def release_deferred_except(self, open_token: str | None, now: float) -> int:
        """At start: only the open exam may still hold deferred deliveries."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE deliveries SET state = 'pending', next_attempt = ?1, updated_at = ?1"
                " WHERE state = 'deferred' AND seq NOT IN"
                " (SELECT seq FROM instances WHERE exam_token IS ?2)",
                (now, open_token),
            )
            return cur.rowcount

    def rearm(self, destination: str | None, study_uid: str | None, now: float) -> int:
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE deliveries SET state = 'pending', next_attempt = :now, attempts = 0,"
                " updated_at = :now"
                " WHERE (state = 'failed' OR (state = 'pending' AND next_attempt > :now))"
                " AND (:dest IS NULL OR destination = :dest)"
                " AND (:study IS NULL OR seq IN"
                "      (SELECT seq FROM instances WHERE study_instance_uid = :study))",
                {"now": now, "dest": destination, "study": study_uid},
            )
            return cur.rowcount

    def reset_sending(self, now: float) -> int:
        """At open: a send interrupted by the stop is not acknowledged; send it again."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE deliveries SET state = 'pending', updated_at = ? WHERE state = 'sending'",
                (now,),
            )
            return cur.rowcount

    def clamp_next_attempt(self, latest: float, now: float) -> int:
        """At open: pull retries scheduled after `latest` (the clock stepped back) to `latest`."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE deliveries SET next_attempt = ?1, updated_at = ?2"
                " WHERE state = 'pending' AND next_attempt > ?1",
                (latest, now),
            )
            return cur.rowcount

    def deliveries(self, sop_uid: str) -> list[Delivery]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT i.sop_instance_uid, d.destination, d.state, d.attempts, d.next_attempt,"
                " d.last_error, d.warning, d.delivered_at, d.commitment"
                " FROM deliveries d JOIN instances i ON i.seq = d.seq"
                " WHERE i.sop_instance_uid = ? ORDER BY d.destination",
                (sop_uid,),
            ).fetchall()
        return [
            Delivery(
                sop_instance_uid=r[0],
                destination=r[1],
                state=DeliveryState(r[2]),
                attempts=r[3],
                next_attempt=r[4],
                last_error=r[5],
                warning=r[6],
                delivered_at=r[7],
                commitment=None if r[8] is None else CommitmentState(r[8]),
            )
            for r in rows
        ]

    def delete_settled(self, sop_uids: Iterable[str]) -> list[tuple[str, str]]:
        """Remove the rows of those instances whose every delivery is delivered (never one
        with a delivery still to make); the (study, SOP Instance UID) of those removed."""
        removed = []
        with self._write() as conn:
            for sop in sop_uids:
                row = conn.execute(
                    "SELECT seq, study_instance_uid FROM instances WHERE sop_instance_uid = ?"
                    " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.seq = instances.seq"
                    "                 AND d.state != 'delivered')",
                    (sop,),
                ).fetchone()
                if row is None:
                    continue
                conn.execute("DELETE FROM deliveries WHERE seq = ?", (row[0],))
                conn.execute("DELETE FROM instances WHERE seq = ?", (row[0],))
                removed.append((str(row[1]), sop))
        return removed

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """A read-only query (for summary.py), under the lock."""
        with self._read() as conn:
            return conn.execute(sql, params).fetchall()
