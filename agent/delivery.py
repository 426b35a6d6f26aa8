"""One destination's delivery loop: due instances in acceptance order, in batches over one
association each, with backoff on a down archive. Destinations never wait for each other."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.config import Destination
from agent.net.outcome import Outcome
from agent.net.retry import Backoff
from agent.net.sender import Outgoing, SendResult, send_batch
from agent.spool import Spool, SpooledInstance

log = logging.getLogger(__name__)


@dataclass
class SenderStatus:
    """What the loop knows beyond the spool: for `queue` and the alarms."""

    failures_in_a_row: int = 0
    hold_until: float | None = None  # wall clock; None when not backing off
    last_error: str | None = None
    associations: int = 0


class DestinationSender:
    def __init__(
        self,
        calling_ae: str,
        destination: Destination,
        spool: Spool,
        backoff: Backoff | None = None,
        on_delivery: Callable[[SendResult], None] | None = None,
    ) -> None:
        self.calling_ae = calling_ae
        self.destination = destination
        self.spool = spool
        self.backoff = backoff or Backoff(destination.retry_initial_s, destination.retry_max_s)
        self.status = SenderStatus()
        self._on_delivery = on_delivery
        self._wake = threading.Event()

    def wake(self) -> None:
        """New instances are due: cut the idle wait short (a backoff wait stays)."""
        self._wake.set()

    def retry_now(self) -> None:
        """A person asked to retry: end any backoff wait too."""
        self.status.hold_until = None
        self._wake.set()

    def run(self, stop: threading.Event, idle_poll_s: float = 1.0) -> None:
        while not stop.is_set():
            hold = self.status.hold_until
            if hold is not None and hold > time.time():
                self._wait(hold - time.time(), stop)
                continue
            try:
                sent = self.send_due()
            except Exception as e:  # a bug or a broken spool must not end delivery for good
                log.exception("%s: delivery loop", self.destination.name)
                self._hold(f"internal error: {type(e).__name__}")
                continue
            if sent == 0:
                self._wait(idle_poll_s, stop)

    def _wait(self, seconds: float, stop: threading.Event) -> None:
        self._wake.wait(max(0.0, seconds))
        self._wake.clear()

    def _hold(self, reason: str) -> float:
        """Back off the whole destination; return the time of the next attempt."""
        self.status.failures_in_a_row += 1
        delay = self.backoff.delay(self.status.failures_in_a_row)
        self.status.hold_until = time.time() + delay
        self.status.last_error = reason
        log.warning("%s: %s; next attempt in %.1f s", self.destination.name, reason, delay)
        return self.status.hold_until

    def send_due(self) -> int:
        """Send one batch of due instances; return how many were attempted."""
        due = self.spool.due(self.destination.name, time.time(), self.destination.batch_size)
        if not due:
            return 0
        self.status.associations += 1
        results = send_batch(
            self.calling_ae, self.destination, [_outgoing(self.spool, i) for i in due]
        )
        self._record(results)
        return len(results)

    def _record(self, results: list[SendResult]) -> None:
        name = self.destination.name
        ok = [r for r in results if r.verdict.outcome is Outcome.OK]
        plain = [r.sop_instance_uid for r in ok if not r.verdict.status]
        if plain:
            self.spool.mark_delivered(plain, name)
        for r in ok:
            if r.verdict.status:  # a warning (B000, B006, B007, ...): delivered, and said so
                self.spool.mark_delivered([r.sop_instance_uid], name, r.verdict.reason)
        for r in results:
            if r.verdict.outcome is Outcome.FAIL:
                self.spool.mark_failed([r.sop_instance_uid], name, r.verdict.reason)
        retry = [r for r in results if r.verdict.outcome is Outcome.RETRY]
        if retry and (not ok or any(r.association_level for r in retry)):
            # the archive or the link is the problem: the whole destination waits
            next_attempt = self._hold(retry[0].verdict.reason)
            by_reason: dict[str, list[str]] = {}
            for r in retry:
                by_reason.setdefault(r.verdict.reason, []).append(r.sop_instance_uid)
            for reason, uids in by_reason.items():
                self.spool.mark_retry(uids, name, reason, next_attempt)
        else:
            for r in retry:  # this instance only: it waits, the others go on
                self._retry_later(r)
            if ok:
                self.status.failures_in_a_row = 0
                self.status.last_error = None
        if self._on_delivery is not None:
            for r in results:
                self._on_delivery(r)

    def _retry_later(self, result: SendResult) -> None:
        name = self.destination.name
        attempts = next(
            (
                d.attempts
                for d in self.spool.deliveries(result.sop_instance_uid)
                if d.destination == name
            ),
            0,
        )
        when = time.time() + self.backoff.delay(attempts + 1)
        self.spool.mark_retry([result.sop_instance_uid], name, result.verdict.reason, when)


def _outgoing(spool: Spool, item: SpooledInstance) -> Outgoing:
    rec = item.record
    return Outgoing(
        rec.sop_instance_uid, rec.sop_class_uid, rec.transfer_syntax_uid, lambda: spool.read(item)
    )
