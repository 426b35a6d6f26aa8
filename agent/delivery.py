"""One destination's delivery loop: due instances in acceptance order, in batches over
associations kept open while instances keep coming (`associations` of them, each series on
one, so order within a series holds), with backoff on a down archive. Destinations never wait
for each other."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pydicom.uid import UID

from agent.config import Destination
from agent.net.outcome import Outcome
from agent.net.retry import Backoff
from agent.net.sender import Link, Outgoing, SendResult
from agent.net.staging import Staging
from agent.spool import Spool, SpooledInstance

log = logging.getLogger(__name__)
LINGER_S = 5.0  # an association idle this long is released (the next exam opens a new one)


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
        self._staging = Staging()
        if any(UID(ts).is_compressed for ts in destination.transfer_syntaxes):
            self._staging.warm()
        self._links = [
            Link(calling_ae, destination, self._staging) for _ in range(destination.associations)
        ]
        self._lane_of: dict[str, int] = {}  # series -> link, while the series has work due
        self._lanes = (
            ThreadPoolExecutor(len(self._links), f"send-{destination.name}")
            if len(self._links) > 1
            else None
        )
        self._last_sent = 0.0

    def wake(self) -> None:
        """New instances are due: cut the idle wait short (a backoff wait stays)."""
        self._wake.set()

    def retry_now(self) -> None:
        """A person asked to retry: end any backoff wait too."""
        self.status.hold_until = None
        self._wake.set()

    def run(self, stop: threading.Event, idle_poll_s: float = 1.0) -> None:
        try:
            while not stop.is_set():
                hold = self.status.hold_until
                if hold is not None and hold > time.time():
                    self.close()
                    self._wait(hold - time.time(), stop)
                    continue
                try:
                    sent = self.send_due()
                except Exception as e:  # a bug or a broken spool must not end delivery for good
                    log.exception("%s: delivery loop", self.destination.name)
                    self._hold(f"internal error: {type(e).__name__}")
                    continue
                if sent == 0:
                    idle = time.monotonic() - self._last_sent
                    if idle >= LINGER_S:
                        self.close()
                    self._wait(min(idle_poll_s, max(0.05, LINGER_S - idle)), stop)
        finally:
            self.close()
            if self._lanes is not None:
                self._lanes.shutdown()

    def close(self) -> None:
        """Release the associations and drop the staged copies (nothing left to send)."""
        for link in self._links:
            link.close()
        self._staging.clear()
        self._lane_of.clear()

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
        """Send one batch of due instances per association; return how many were attempted."""
        limit = self.destination.batch_size * len(self._links)
        due = self.spool.due(self.destination.name, time.time(), limit)
        if not due:
            return 0
        batches: list[list[Outgoing]] = [[] for _ in self._links]
        for item in due:
            series = item.record.series_instance_uid
            lane = self._lane_of.setdefault(series, len(self._lane_of) % len(self._links))
            batches[lane].append(outgoing(self.spool, item))
        opened = sum(link.opened for link in self._links)
        if self._lanes is None:
            results = self._links[0].send(batches[0])
        else:
            sent = self._lanes.map(Link.send, self._links, batches)
            results = [r for lane in sent for r in lane]
        self.status.associations += sum(link.opened for link in self._links) - opened
        self._record(results)
        self._last_sent = time.monotonic()
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
        for r in results:
            if r.verdict.outcome is not Outcome.RETRY:
                self._staging.discard(r.sop_instance_uid)
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


def outgoing(spool: Spool, item: SpooledInstance) -> Outgoing:
    """`item` as the sender takes it: its file is checked by the spool when it is sent."""
    rec = item.record
    return Outgoing(
        rec.sop_instance_uid,
        rec.sop_class_uid,
        rec.transfer_syntax_uid,
        lambda: spool.verified_path(item),
        rec.series_instance_uid,
    )
