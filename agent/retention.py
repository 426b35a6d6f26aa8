"""Retention (SPEC §5): delivered studies are kept for `retention_days`, and within
`spool_budget_mb`, then purged oldest first. Never purged: an instance with a delivery still
to make (pending, deferred, sending, failed), one not yet committed where its destination wants
storage commitment, the open exam's study, a study with a damaged instance.

A study is purged when its last delivery (or commitment) is older than `retention_days`
(0: as soon as it is settled), or, while the spool holds more than `spool_budget_mb`, the
settled studies oldest first until it does not. Each purge is in the audit trail.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.spool import Spool
from agent.spool.model import StudySummary

log = logging.getLogger(__name__)
MB = 1024 * 1024
CHECK_S = 600.0  # how often retention looks, besides when asked (disk low)


@dataclass(frozen=True)
class RetentionPolicy:
    retention_days: float  # a settled study is kept this long after its last delivery
    budget_mb: int  # 0: no size budget
    committing: frozenset[str]  # destinations whose images must be committed first


@dataclass(frozen=True)
class Purged:
    study_instance_uid: str
    instances: int
    why: str  # "age" or "budget"


def settled(study: StudySummary, policy: RetentionPolicy) -> bool:
    """Everything sent where it goes (and committed where that is wanted), nothing damaged."""
    if study.problems:
        return False
    for d in study.destinations:
        done = ("committed",) if d.name in policy.committing else ("delivered", "committed")
        if d.state not in done:
            return False
    return bool(study.destinations)


def choose(
    studies: list[StudySummary],
    last_delivered: dict[str, float],
    sizes: dict[str, int],
    policy: RetentionPolicy,
    now: float,
    keep: Callable[[StudySummary], bool],
) -> list[tuple[StudySummary, str]]:
    """The studies to purge, and why. Pure: the decision, apart from doing it."""
    candidates = sorted(
        (s for s in studies if settled(s, policy) and not keep(s)),
        key=lambda s: last_delivered.get(s.study_instance_uid, 0.0),
    )
    chosen: list[tuple[StudySummary, str]] = []
    cutoff = now - policy.retention_days * 86400
    total = sum(sizes.values())
    for s in candidates:
        uid = s.study_instance_uid
        if last_delivered.get(uid, now) <= cutoff:
            chosen.append((s, "age"))
        elif policy.budget_mb and total > policy.budget_mb * MB:
            chosen.append((s, "budget"))
        else:
            continue
        total -= sizes.get(uid, 0)
    return chosen


class Retention:
    def __init__(
        self,
        spool: Spool,
        policy: RetentionPolicy,
        keep: Callable[[StudySummary], bool],
        on_purged: Callable[[Purged], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spool = spool
        self.policy = policy
        self.keep = keep  # e.g. the open exam's study
        self.on_purged = on_purged
        self.clock = clock
        self._wake = threading.Event()
        self._lock = threading.Lock()

    def wake(self) -> None:
        self._wake.set()

    def run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                self.purge_due()
            except Exception:  # a bug must not end retention, nor the daemon
                log.exception("retention")
            self._wake.wait(CHECK_S)
            self._wake.clear()

    def purge_due(self) -> list[Purged]:
        with self._lock:
            chosen = choose(
                self.spool.summary(),
                self.spool.last_delivered(),
                self.spool.size_bytes(),
                self.policy,
                self.clock(),
                self.keep,
            )
            done = []
            for study, why in chosen:
                uid = study.study_instance_uid
                n = self.spool.purge(self.spool.instances(uid))
                purged = Purged(uid, n, why)
                log.info("retention: study %s purged (%d instances, %s)", uid, n, why)
                self.on_purged(purged)
                done.append(purged)
            return done
