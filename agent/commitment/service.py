"""Storage Commitment in the daemon: when requests are made, and what their results do.

For each destination with `storage_commitment = true`, a thread looks every few seconds for
studies whose images that destination has all acknowledged and that are not all committed,
and asks for the uncommitted ones in one request (a later addition to the study gets a request
of its own). The request is kept on disk before its N-ACTION goes out (agent.commitment.store)
and the instances are marked requested in the spool. The report comes on the same association
or on a new one to the agent's SCP (agent.net.scp); either way it reaches the ReportBook, which
calls `_settled` once:

- committed instances are marked so in the spool; `queue` says `committed` once all are;
- instances the archive reports failed are sent again (the spool makes them pending), then
  asked for again, with a `commitment_failed` alarm naming the reason;
- no report before `commitment_timeout`: a `commitment_timeout` alarm, and the instances are
  asked for again in a new request (a fresh Transaction UID).

An N-ACTION that cannot be sent is retried with backoff (alarm `commitment_unreachable`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agent.alarms import Alarms
from agent.commitment.store import RequestStore
from agent.config import Config, Destination
from agent.dicom.uids import UidFactory
from agent.net.commitment import (
    CommitmentResult,
    InstanceRef,
    ReportBook,
    State,
    new_request,
    request_commitment,
)
from agent.net.outcome import Outcome
from agent.net.retry import Backoff
from agent.net.scp import AllowedPeer
from agent.spool import Spool
from agent.spool.model import CommitmentState, DeliveryState

log = logging.getLogger(__name__)
SCAN_S = 5.0  # how often delivered studies are looked at
LINGER_S = 5.0  # how long a report is awaited on the request's own association


class CommitmentService:
    def __init__(
        self,
        cfg: Config,
        spool: Spool,
        uids: UidFactory,
        alarms: Alarms,
        changed: Callable[[], None],
        resend: Callable[[str], None],
        backoff: Backoff | None = None,
    ) -> None:
        self.cfg = cfg
        self.spool = spool
        self.uids = uids
        self.alarms = alarms
        self.changed = changed  # `wait` and the queue: something moved
        self.resend_hook = resend  # wake the destination's sender: instances to send again
        self.backoff = backoff or Backoff(2.0, 300.0)
        self.destinations = {d.name: d for d in cfg.destinations if d.storage_commitment}
        self.requests = RequestStore(cfg.agent.spool_dir / "commitment")
        self.book = ReportBook(on_result=self._settled)
        self._lock = threading.Lock()
        self._open: dict[str, tuple[str, str]] = {}  # Transaction UID -> (destination, study)
        self._failures: dict[str, int] = {}
        self._hold_until: dict[str, float] = {}
        self._wake = threading.Event()
        for name in self.destinations:  # requests made before a restart: their reports count
            for study, request in self.requests.pending(name):
                self._open[request.transaction_uid] = (name, study)
                self.book.expect(request)

    def allowed_peers(self) -> tuple[AllowedPeer, ...]:
        """Who may call the agent's SCP: every configured peer (for C-ECHO), and the AE
        titles named to report for a destination."""
        titles = {p.ae_title for p in self.cfg.peers().values()}
        for d in self.cfg.destinations:
            titles.update(d.commitment_report_ae_titles)
        return tuple(AllowedPeer(t) for t in sorted(titles))

    def wake(self) -> None:
        self._wake.set()

    def run(self, stopping: threading.Event) -> None:
        while not stopping.is_set():
            self.book.expire()
            for dest in self.destinations.values():
                if self._hold_until.get(dest.name, 0.0) > time.monotonic():
                    continue
                try:
                    self._request_due(dest)
                except Exception as e:  # a bug must not end commitment for good
                    log.exception("storage commitment for %s", dest.name)
                    self._failed(dest.name, f"internal error: {type(e).__name__}")
            self._wake.wait(SCAN_S)
            self._wake.clear()

    # -- requests ---------------------------------------------------------------------------

    def _busy(self, destination: str, study: str) -> bool:
        with self._lock:
            return (destination, study) in self._open.values()

    def _request_due(self, dest: Destination) -> None:
        for study in self.spool.summary():
            entry = next((d for d in study.destinations if d.name == dest.name), None)
            uid = study.study_instance_uid
            if entry is None or entry.state != "delivered" or self._busy(dest.name, uid):
                continue
            refs, stale = self._uncommitted(dest.name, uid)
            if stale:  # requested before a crash that lost the request: asked again
                self.spool.forget_commitment([r.sop_instance_uid for r in stale], dest.name)
                refs += stale
            if refs and not self._ask(dest, uid, refs):
                return

    def _uncommitted(
        self, destination: str, study: str
    ) -> tuple[list[InstanceRef], list[InstanceRef]]:
        """Delivered and not asked for; and those marked requested by no known request."""
        refs: list[InstanceRef] = []
        stale: list[InstanceRef] = []
        for inst in self.spool.instances(study):
            for d in self.spool.deliveries(inst.sop_instance_uid):
                if d.destination != destination or d.state is not DeliveryState.DELIVERED:
                    continue
                ref = InstanceRef(inst.record.sop_class_uid, inst.sop_instance_uid)
                if d.commitment is None:
                    refs.append(ref)
                elif d.commitment is CommitmentState.REQUESTED:
                    stale.append(ref)
        return refs, stale

    def _ask(self, dest: Destination, study: str, refs: list[InstanceRef]) -> bool:
        request = new_request(
            dest.name,
            dest.ae_title,
            refs,
            self.uids,
            dest.commitment_timeout_s,
            also_from=dest.commitment_report_ae_titles,
        )
        txn = request.transaction_uid
        self.requests.keep(study, request)  # before the N-ACTION: a report may come at once
        with self._lock:
            self._open[txn] = (dest.name, study)
        sops = [r.sop_instance_uid for r in refs]
        self.spool.mark_commitment_requested(sops, dest.name, txn)
        verdict = request_commitment(self.cfg.agent.ae_title, dest, request, self.book, LINGER_S)
        if verdict.outcome is Outcome.OK:
            self._reachable(dest.name)
            self.changed()
            return True
        with self._lock:
            self._open.pop(txn, None)
        self.spool.forget_commitment(sops, dest.name)
        self.requests.drop(dest.name, txn)
        self._failed(dest.name, verdict.reason)
        return False

    def _failed(self, destination: str, reason: str) -> None:
        n = self._failures[destination] = self._failures.get(destination, 0) + 1
        delay = self.backoff.delay(n)
        self._hold_until[destination] = time.monotonic() + delay
        log.warning("storage commitment to %s: %s; again in %.0f s", destination, reason, delay)
        self.alarms.raise_(
            "commitment_unreachable",
            f"storage commitment cannot be asked of {destination}: {reason}",
            destination,
        )

    def _reachable(self, destination: str) -> None:
        self._failures.pop(destination, None)
        self._hold_until.pop(destination, None)
        self.alarms.clear("commitment_unreachable", destination)

    # -- results ----------------------------------------------------------------------------

    def _settled(self, result: CommitmentResult) -> None:
        """The report (or the deadline) for one request: from the SCP's or the request's
        association, or the scan thread's `expire`; once per request."""
        txn = result.request.transaction_uid
        with self._lock:
            where = self._open.pop(txn, None)
        if where is None:
            return
        dest, study = where
        committed = [r.sop_instance_uid for r in result.committed]
        if committed:
            self.spool.mark_committed(committed, dest)
        if result.state is State.FAILED:
            failed = [f.ref.sop_instance_uid for f in result.failed]
            reason = result.verdict.reason
            self.spool.resend(failed, dest, f"not committed by the archive: {reason}")
            log.error("storage commitment by %s: %s; sending them again", dest, reason)
            self.alarms.raise_(
                "commitment_failed",
                f"{dest} did not commit {len(failed)} image(s) of study {study}: {reason}; "
                "they are sent again",
                dest,
            )
            self.resend_hook(dest)
        elif result.state is State.TIMED_OUT:
            uncommitted = [r.sop_instance_uid for r in result.request.instances]
            self.spool.forget_commitment(uncommitted, dest)
            self.alarms.raise_(
                "commitment_timeout",
                f"{dest} sent no storage commitment report for study {study} in "
                f"{self.destinations[dest].commitment_timeout_s:g} s; asking again",
                dest,
            )
        else:
            self.alarms.clear("commitment_failed", dest)
            self.alarms.clear("commitment_timeout", dest)
        self.requests.drop(dest, txn)
        self.changed()
        self.wake()
