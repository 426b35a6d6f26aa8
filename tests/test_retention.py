"""Retention: which studies go (age, budget), which never do (anything left to send or to be
committed, the open exam, a damaged instance), the purge itself in the spool, and a purge cut
short by a crash finished at the next open."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.retention import MB, Purged, Retention, RetentionPolicy, choose
from agent.spool import Spool
from agent.spool.model import DestinationSummary, StudySummary
from tests.test_spool import STUDY, STUDY2, Clock, blob, rec

DAY = 86400.0


def study(uid: str, *states: str, problems: int = 0, tokens: tuple[str, ...] = ()) -> StudySummary:
    dests = tuple(
        DestinationSummary(f"D{i}", s, 0, 1, 1, 0, 0, 0, None, None) for i, s in enumerate(states)
    )
    return StudySummary(uid, 1, problems, tokens, dests)


def policy(
    days: float = 7, budget_mb: int = 0, committing: tuple[str, ...] = ()
) -> RetentionPolicy:
    return RetentionPolicy(days, budget_mb, frozenset(committing))


def test_only_settled_studies_past_their_time_go_oldest_first() -> None:
    now = 100 * DAY
    studies = [
        study("old", "delivered"),
        study("older", "delivered", "committed"),
        study("recent", "delivered"),
        study("pending", "pending"),
        study("failed", "delivered", "failed"),
        study("damaged", "delivered", problems=1),
        study("open", "delivered", tokens=("T-open",)),
    ]
    last = {s.study_instance_uid: now - 30 * DAY for s in studies}
    last["older"] = now - 40 * DAY
    last["recent"] = now - 1 * DAY
    chosen = choose(studies, last, {}, policy(7), now, lambda s: "T-open" in s.exam_tokens)
    assert [(s.study_instance_uid, why) for s, why in chosen] == [("older", "age"), ("old", "age")]


def test_a_destination_that_commits_keeps_a_delivered_study_until_committed() -> None:
    s = study("s", "delivered")
    assert choose([s], {"s": 0.0}, {}, policy(0, committing=("D0",)), DAY, lambda _: False) == []
    c = study("c", "committed")
    assert choose([c], {"c": 0.0}, {}, policy(0, committing=("D0",)), DAY, lambda _: False)


def test_over_budget_the_oldest_settled_go_until_under() -> None:
    now = 10 * DAY
    studies = [study(u, "delivered") for u in ("a", "b", "c")]
    last = {"a": now - 3 * DAY, "b": now - 2 * DAY, "c": now - 1 * DAY}  # all within 7 days
    sizes = {"a": 40 * MB, "b": 40 * MB, "c": 40 * MB}
    chosen = choose(studies, last, sizes, policy(7, budget_mb=50), now, lambda _: False)
    assert [(s.study_instance_uid, why) for s, why in chosen] == [("a", "budget"), ("b", "budget")]


def _spool_with_two_studies(root: Path, clock: Clock) -> Spool:
    spool = Spool(root, clock=clock)
    for n in (1, 2):
        spool.accept(rec(n), blob(n), ["PACS"])
    spool.accept(rec(3, STUDY2), blob(3), ["PACS"])
    spool.mark_delivered([rec(1).sop_instance_uid, rec(2).sop_instance_uid], "PACS")
    return spool


def test_purge_removes_rows_and_files_and_never_an_instance_left_to_send(tmp_path: Path) -> None:
    clock = Clock()
    spool = _spool_with_two_studies(tmp_path / "spool", clock)
    try:
        everything = spool.instances(STUDY) + spool.instances(STUDY2)
        assert spool.purge(everything) == 2  # the third is still pending
        assert spool.instances(STUDY) == [] and len(spool.instances(STUDY2)) == 1
        assert not (tmp_path / "spool" / "instances" / STUDY).exists()
        assert (tmp_path / "spool" / "instances" / STUDY2).is_dir()
        assert [s.study_instance_uid for s in spool.summary()] == [STUDY2]
    finally:
        spool.close()


def test_a_purge_cut_short_is_finished_at_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state a crash after the rows were removed and before the files were leaves: the
    intent and the files (the crash is an exception raised at the first file's removal). The
    next open removes the files; nothing is called an orphan."""
    clock = Clock()
    root = tmp_path / "spool"
    spool = _spool_with_two_studies(root, clock)
    instances = spool.instances(STUDY)
    real_unlink = Path.unlink
    calls = 0

    def crash_on_files(self: Path, missing_ok: bool = False) -> None:
        nonlocal calls
        if self.suffix == ".dcm":
            calls += 1
            raise KeyboardInterrupt("killed")  # not an OSError: nothing handles it
        real_unlink(self, missing_ok)

    with monkeypatch.context() as m:
        m.setattr(Path, "unlink", crash_on_files)
        with pytest.raises(KeyboardInterrupt):
            spool.purge(instances)
    spool.close()
    assert calls == 1 and list((root / "purging").glob("*.json"))
    reopened = Spool(root, clock=clock)
    try:
        assert reopened.problems == [] and reopened.recovery.orphans_moved == ()
        assert not (root / "instances" / STUDY).exists()
        assert not list((root / "purging").glob("*.json"))
        assert len(reopened.instances(STUDY2)) == 1
    finally:
        reopened.close()


def test_retention_purges_what_is_due_and_reports_it(tmp_path: Path) -> None:
    clock = Clock()
    spool = _spool_with_two_studies(tmp_path / "spool", clock)
    purged: list[Purged] = []
    try:
        retention = Retention(spool, policy(1), lambda _: False, purged.append, clock=clock)
        assert retention.purge_due() == []  # delivered just now
        clock.t += 2 * DAY
        (done,) = retention.purge_due()
        assert (done.study_instance_uid, done.instances, done.why) == (STUDY, 2, "age")
        assert purged == [done]
    finally:
        spool.close()
