"""The spool index migrates from an older schema at open (an upgraded package's first start),
keeping every instance and its delivery state; a newer schema, a missing migration and a failed
one are refused without touching the index (a failed migration, whatever the SQLite error, is
not a damaged index: the spool must not set it aside and rebuild it, which would send
everything again)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.spool import DeliveryState, Spool, SpoolError
from agent.spool import index as spool_index
from agent.spool.index import Index
from tests.test_spool import blob, rec

States = dict[str, list[tuple[str, DeliveryState]]]
CURRENT = spool_index.SCHEMA_VERSION
ADD_NOTE = "ALTER TABLE instances ADD COLUMN note TEXT;"


def states(spool: Spool) -> States:
    return {
        i.record.sop_instance_uid: [
            (d.destination, d.state) for d in spool.deliveries(i.record.sop_instance_uid)
        ]
        for i in spool.instances()
    }


def user_version(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def columns(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [row[1] for row in conn.execute("PRAGMA table_info(instances)")]


def new_schema(monkeypatch: pytest.MonkeyPatch, steps: int, migrations: dict[int, str]) -> None:
    """The code as a release `steps` schemas ahead, with these migrations, would have it."""
    monkeypatch.setattr(spool_index, "SCHEMA_VERSION", CURRENT + steps)
    monkeypatch.setattr(spool_index, "MIGRATIONS", migrations)


@pytest.fixture
def spool_now(tmp_path: Path) -> tuple[Path, States]:
    """A spool at the current schema: three instances, one delivered, two pending."""
    root = tmp_path / "spool"
    with Spool(root) as spool:
        for n in (1, 2, 3):
            spool.accept(rec(n), blob(n), ["PACS"])
        spool.mark_sending([rec(1).sop_instance_uid], "PACS")
        spool.mark_delivered([rec(1).sop_instance_uid], "PACS")
        before = states(spool)
    assert user_version(root / "index.sqlite3") == CURRENT
    return root, before


@pytest.fixture
def index_now(tmp_path: Path) -> Path:
    db = tmp_path / "index.sqlite3"
    Index(db).close()
    return db


def test_an_older_index_is_migrated_with_its_instances_and_states(
    spool_now: tuple[Path, States], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, before = spool_now
    new_schema(monkeypatch, 1, {CURRENT: ADD_NOTE})
    with Spool(root) as spool:
        assert states(spool) == before
        assert [spool.read(i) for i in spool.instances()] == [blob(n) for n in (1, 2, 3)]
    assert user_version(root / "index.sqlite3") == CURRENT + 1
    assert "note" in columns(root / "index.sqlite3")


def test_a_newer_index_is_refused_naming_the_file(index_now: Path) -> None:
    with sqlite3.connect(index_now) as conn:
        conn.execute(f"PRAGMA user_version={CURRENT + 1}")
    with pytest.raises(SpoolError, match=r"index\.sqlite3: index schema \d+ is newer.*downgrade"):
        Index(index_now)
    assert user_version(index_now) == CURRENT + 1


def test_a_missing_migration_is_refused_and_the_index_left_alone(
    index_now: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new_schema(monkeypatch, 2, {CURRENT: ADD_NOTE})
    with pytest.raises(SpoolError, match=f"no migration from schema {CURRENT + 1}"):
        Index(index_now)
    assert user_version(index_now) == CURRENT
    assert "note" not in columns(index_now)


def test_a_failing_migration_changes_nothing(
    index_now: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    new_schema(monkeypatch, 1, {CURRENT: ADD_NOTE + " ALTER TABLE nowhere ADD x;"})
    with pytest.raises(SpoolError, match=f"migrating the index from schema {CURRENT}: .*nowhere"):
        Index(index_now)
    assert user_version(index_now) == CURRENT
    assert "note" not in columns(index_now)


def test_a_failing_migration_stops_the_spool_without_a_rebuild(
    spool_now: tuple[Path, States], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, before = spool_now
    new_schema(monkeypatch, 1, {CURRENT: "ALTER TABLE nowhere ADD x;"})
    with pytest.raises(SpoolError, match="migrating the index"):
        Spool(root)
    assert not (root / "damaged").exists()
    monkeypatch.undo()
    with Spool(root) as spool:
        assert states(spool) == before


def test_migrations_without_a_final_semicolon_do_not_run_together(
    spool_now: tuple[Path, States], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, before = spool_now
    new_schema(
        monkeypatch,
        2,
        {
            CURRENT: "ALTER TABLE instances ADD COLUMN note TEXT",
            CURRENT + 1: "ALTER TABLE instances ADD COLUMN origin TEXT",
        },
    )
    with Spool(root) as spool:
        assert states(spool) == before
    assert user_version(root / "index.sqlite3") == CURRENT + 2
    assert {"note", "origin"} <= set(columns(root / "index.sqlite3"))


def test_a_migration_breaking_a_constraint_stops_the_spool_without_a_rebuild(
    spool_now: tuple[Path, States], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, before = spool_now
    # the three instances share their study: a UNIQUE index on it raises IntegrityError
    unique_study = "CREATE UNIQUE INDEX one_per_study ON instances (study_instance_uid);"
    new_schema(monkeypatch, 1, {CURRENT: unique_study})
    with pytest.raises(SpoolError, match=f"migrating the index from schema {CURRENT}: .*UNIQUE"):
        Spool(root)
    assert not (root / "damaged").exists()
    assert [p for p in (root / "orphans").rglob("*") if p.is_file()] == []
    assert len(list((root / "instances").rglob("*.dcm"))) == 3
    assert user_version(root / "index.sqlite3") == CURRENT
    monkeypatch.undo()
    with Spool(root) as spool:
        assert states(spool) == before
