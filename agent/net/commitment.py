"""Storage Commitment Push Model SCU (PS3.4 Annex J, IHE RAD-10).

N-ACTION "request storage commitment" with a fresh Transaction UID listing the instances a
destination acknowledged; the N-EVENT-REPORT may come on the same association or on a new one
to our own SCP (`agent.net.scp`), from the destination's AE title or one it names. Either way
it goes to a `ReportBook`, which matches it to its request by Transaction UID and settles the
request once: committed, some failed (with the peer's reasons), or timed out.

State is small and typed: a `CommitmentRequest` is what the caller persists (JSON) before
sending, and gives back to `ReportBook.expect` after a restart. Nothing here writes to disk.
"""

from __future__ import annotations

import enum
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import N_EVENT_REPORT
from pynetdicom.presentation import build_context

from agent.config import Peer
from agent.dicom.uids import UidFactory, is_valid_uid
from agent.net.association import open_association
from agent.net.outcome import Outcome, Verdict

log = logging.getLogger(__name__)

PUSH_MODEL = "1.2.840.10008.1.20.1"  # Storage Commitment Push Model SOP Class
PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"  # its well-known SOP Instance
ACTION_REQUEST_COMMITMENT = 1  # Action Type ID
EVENT_ALL_COMMITTED = 1  # Event Type IDs of the N-EVENT-REPORT
EVENT_SOME_FAILED = 2

# N-EVENT-REPORT response statuses we answer (PS3.7 10.1.1.1.8)
STATUS_SUCCESS = 0x0000
STATUS_NO_SUCH_INSTANCE = 0x0112  # not the well-known Storage Commitment instance
STATUS_NO_SUCH_EVENT_TYPE = 0x0113
STATUS_INVALID_ARGUMENT = 0x0115  # unknown Transaction UID, or not from its destination

# Failure Reason (0008,1197) values, PS3.3 C.14.1.1
FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0119: "class/instance conflict",
    0x0122: "referenced SOP class not supported",
    0x0131: "duplicate transaction UID",
    0x0213: "resource limitation",
}


@dataclass(frozen=True)
class InstanceRef:
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class CommitmentRequest:
    """One N-ACTION: what the caller persists until its result comes (or it times out)."""

    transaction_uid: str
    destination: str  # the destination's name in the config
    instances: tuple[InstanceRef, ...]
    reporters: frozenset[str]  # AE titles whose N-EVENT-REPORT for it is accepted
    deadline: float  # wall-clock seconds (time.time()) after which it has timed out

    def to_json(self) -> str:
        return json.dumps(
            {
                "transaction_uid": self.transaction_uid,
                "destination": self.destination,
                "instances": [[i.sop_class_uid, i.sop_instance_uid] for i in self.instances],
                "reporters": sorted(self.reporters),
                "deadline": self.deadline,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> CommitmentRequest:
        raw: dict[str, Any] = json.loads(text)
        return cls(
            transaction_uid=str(raw["transaction_uid"]),
            destination=str(raw["destination"]),
            instances=tuple(InstanceRef(str(c), str(i)) for c, i in raw["instances"]),
            reporters=frozenset(str(a) for a in raw["reporters"]),
            deadline=float(raw["deadline"]),
        )


def new_request(
    destination: str,
    ae_title: str,
    instances: Iterable[InstanceRef],
    uids: UidFactory,
    timeout_s: float,
    *,
    also_from: Iterable[str] = (),
    now: float | None = None,
) -> CommitmentRequest:
    """A request to the destination named `destination` (AE title `ae_title`, whose reports
    may also come from the AE titles `also_from`), with a fresh Transaction UID: one per
    N-ACTION, a retry included."""
    refs = tuple(dict.fromkeys(instances))
    if not refs:
        raise ValueError("a storage commitment request lists at least one instance")
    return CommitmentRequest(
        transaction_uid=uids.new(),
        destination=destination,
        instances=refs,
        reporters=frozenset(a.strip() for a in (ae_title, *also_from)),
        deadline=(time.time() if now is None else now) + timeout_s,
    )


@dataclass(frozen=True)
class FailedInstance:
    ref: InstanceRef
    reason: int | None  # Failure Reason; None: the report did not mention the instance

    @property
    def reason_text(self) -> str:
        if self.reason is None:
            return "not mentioned in the report"
        words = FAILURE_REASONS.get(self.reason, "failure")
        return f"{words} (0x{self.reason:04X})"


@dataclass(frozen=True)
class CommitmentReport:
    """An N-EVENT-REPORT as received, its values checked, not yet matched to a request."""

    transaction_uid: str
    reporter: str  # the AE title it came from
    committed: tuple[InstanceRef, ...]
    failed: tuple[FailedInstance, ...]
    same_association: bool


class ReportError(ValueError):
    """An N-EVENT-REPORT that is not a well-formed storage commitment result."""


def _refs(ds: Dataset, keyword: str) -> list[tuple[InstanceRef, int | None]]:
    out = []
    for item in ds.get(keyword, None) or []:
        sop_class = str(item.get("ReferencedSOPClassUID", ""))
        sop_instance = str(item.get("ReferencedSOPInstanceUID", ""))
        if not (is_valid_uid(sop_class) and is_valid_uid(sop_instance)):
            raise ReportError(f"{keyword} has an item without valid UIDs")
        reason = item.get("FailureReason", None)
        out.append((InstanceRef(sop_class, sop_instance), None if reason is None else int(reason)))
    return out


def parse_report(
    event_type_id: int, ds: Dataset | None, reporter: str, same_association: bool
) -> CommitmentReport:
    """The typed report from an N-EVENT-REPORT's Event Type ID and Event Information."""
    if event_type_id not in (EVENT_ALL_COMMITTED, EVENT_SOME_FAILED):
        raise ReportError(f"event type {event_type_id} is not a storage commitment result")
    if ds is None:
        raise ReportError("the report has no event information")
    uid = str(ds.get("TransactionUID", ""))
    if not is_valid_uid(uid):
        raise ReportError("the report has no valid Transaction UID")
    failed = _refs(ds, "FailedSOPSequence")
    return CommitmentReport(
        transaction_uid=uid,
        reporter=reporter.strip(),
        committed=tuple(ref for ref, _ in _refs(ds, "ReferencedSOPSequence")),
        failed=tuple(FailedInstance(ref, 0x0110 if r is None else r) for ref, r in failed),
        same_association=same_association,
    )


def action_information(request: CommitmentRequest) -> Dataset:
    """The N-ACTION's Action Information: Transaction UID and Referenced SOP Sequence."""
    ds = Dataset()
    ds.TransactionUID = request.transaction_uid
    items = []
    for ref in request.instances:
        item = Dataset()
        item.ReferencedSOPClassUID = ref.sop_class_uid
        item.ReferencedSOPInstanceUID = ref.sop_instance_uid
        items.append(item)
    ds.ReferencedSOPSequence = items
    return ds


class State(enum.Enum):
    COMMITTED = "committed"  # every instance
    FAILED = "failed"  # some instances failed: send them again, then commit them again
    TIMED_OUT = "timed-out"  # no report before the deadline: request again


@dataclass(frozen=True)
class CommitmentResult:
    request: CommitmentRequest
    state: State
    committed: tuple[InstanceRef, ...] = ()
    failed: tuple[FailedInstance, ...] = ()  # of the request's instances only
    report: CommitmentReport | None = None

    @property
    def verdict(self) -> Verdict:
        n = len(self.request.instances)
        if self.state is State.COMMITTED:
            return Verdict(Outcome.OK, f"{n} instances committed")
        if self.state is State.TIMED_OUT:
            return Verdict(Outcome.RETRY, "no storage commitment report before the deadline")
        reasons = sorted({f.reason_text for f in self.failed})
        return Verdict(
            Outcome.FAIL, f"{len(self.failed)} of {n} not committed: {'; '.join(reasons)}"
        )


def match(request: CommitmentRequest, report: CommitmentReport) -> CommitmentResult:
    """The result of `request` given its report (pure). An instance reported both committed
    and failed counts as failed; one the report does not mention, as failed too."""
    asked = set(request.instances)
    failed = {f.ref: f for f in report.failed if f.ref in asked}
    committed = tuple(r for r in request.instances if r in set(report.committed) - failed.keys())
    missing = [
        FailedInstance(r, None) for r in request.instances if r not in failed and r not in committed
    ]
    all_failed = tuple(failed[r] for r in request.instances if r in failed) + tuple(missing)
    state = State.COMMITTED if not all_failed else State.FAILED
    return CommitmentResult(request, state, committed, all_failed, report)


SETTLED_KEPT = 256  # results kept for `ReportBook.wait`, newest first


@dataclass
class ReportBook:
    """The requests awaiting a report, by Transaction UID; thread-safe. `on_result` is called
    once per request when it settles (from the thread that delivered the report, or the one
    that called `expire`); exceptions from it are logged, the report is still answered."""

    on_result: Callable[[CommitmentResult], None] | None = None
    clock: Callable[[], float] = time.time
    _pending: dict[str, CommitmentRequest] = field(default_factory=dict, repr=False)
    _settled: OrderedDict[str, CommitmentResult] = field(default_factory=OrderedDict, repr=False)
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def _settle(self, result: CommitmentResult) -> None:  # with the lock held
        del self._pending[result.request.transaction_uid]
        self._settled[result.request.transaction_uid] = result
        while len(self._settled) > SETTLED_KEPT:
            self._settled.popitem(last=False)
        self._changed.notify_all()

    def expect(self, request: CommitmentRequest) -> None:
        """Await a report for `request` (before its N-ACTION is sent, and after a restart)."""
        with self._changed:
            self._pending[request.transaction_uid] = request

    def forget(self, transaction_uid: str) -> None:
        with self._changed:
            self._pending.pop(transaction_uid, None)
            self._settled.pop(transaction_uid, None)

    def pending(self) -> list[CommitmentRequest]:
        with self._changed:
            return list(self._pending.values())

    def deliver(self, report: CommitmentReport) -> int:
        """Match `report` to its request; the status to answer the N-EVENT-REPORT with."""
        with self._changed:
            request = self._pending.get(report.transaction_uid)
            if request is None or report.reporter not in request.reporters:
                why = "unknown transaction" if request is None else "not from its destination"
                log.warning(
                    "storage commitment report from %r ignored: %s", report.reporter[:16], why
                )
                return STATUS_INVALID_ARGUMENT
            result = match(request, report)
            self._settle(result)
        log.info("storage commitment %s: %s", request.destination, result.verdict.reason)
        self._notify(result)
        return STATUS_SUCCESS

    def expire(self, now: float | None = None) -> list[CommitmentResult]:
        """Settle every request past its deadline (at `now`, default the clock) as timed out."""
        now = self.clock() if now is None else now
        with self._changed:
            late = [r for r in self._pending.values() if r.deadline <= now]
            results = [CommitmentResult(r, State.TIMED_OUT) for r in late]
            for r in results:
                self._settle(r)
        for r in results:
            log.warning("storage commitment %s: %s", r.request.destination, r.verdict.reason)
            self._notify(r)
        return results

    def wait(self, transaction_uid: str, timeout_s: float) -> CommitmentResult | None:
        """The result once settled (and forgotten here), or None after `timeout_s`."""
        with self._changed:
            if not self._changed.wait_for(
                lambda: transaction_uid in self._settled, max(0.0, timeout_s)
            ):
                return None
            return self._settled.pop(transaction_uid)

    def wait_settled(
        self, transaction_uid: str, timeout_s: float, give_up: Callable[[], bool]
    ) -> bool:
        """Whether the request settled within `timeout_s` (or before `give_up()`); the result
        stays for `wait`."""
        with self._changed:
            self._changed.wait_for(
                lambda: transaction_uid not in self._pending or give_up(), max(0.0, timeout_s)
            )
            return transaction_uid not in self._pending

    def _notify(self, result: CommitmentResult) -> None:
        if self.on_result is None:
            return
        try:
            self.on_result(result)
        except Exception:
            log.exception("storage commitment result handler failed")


def _action_verdict(status: int | None, where: str) -> Verdict:
    if status is None:
        return Verdict(Outcome.RETRY, f"no answer to the N-ACTION from {where}")
    if status == 0x0000:
        return Verdict(Outcome.OK, "storage commitment requested", status)
    if status in (0x0110, 0x0210, 0x0213) or 0xA700 <= status <= 0xA7FF:
        return Verdict(Outcome.RETRY, f"{where} cannot take the request now", status)
    return Verdict(Outcome.FAIL, f"{where} refused the request (0x{status:04X})", status)


def request_commitment(
    calling_ae: str,
    peer: Peer,
    request: CommitmentRequest,
    book: ReportBook,
    linger_s: float = 0.0,
) -> Verdict:
    """Send `request`'s N-ACTION to `peer`. OK: the peer took it; its report will reach
    `book` (on this association while it stays open, `linger_s` at most, or via our SCP).
    Not OK: `book` no longer expects it; the caller retries later with a new request."""
    where = f"{peer.ae_title}@{peer.host}:{peer.port}"
    opened = open_association(calling_ae, peer, [build_context(PUSH_MODEL)])
    if opened.assoc is None:
        assert opened.verdict is not None
        return opened.verdict
    assoc = opened.assoc

    def on_report(event: evt.Event) -> tuple[int, None]:
        return answer_event_report(book, event, peer.ae_title, same_association=True), None

    assoc.bind(evt.EVT_N_EVENT_REPORT, on_report)
    book.expect(request)
    try:
        try:
            status, _reply = assoc.send_n_action(
                action_information(request),
                ACTION_REQUEST_COMMITMENT,
                PUSH_MODEL,
                PUSH_MODEL_INSTANCE,
            )
        except (RuntimeError, ValueError) as e:  # lost under us, or no context for it
            book.forget(request.transaction_uid)
            return Verdict(Outcome.RETRY, f"cannot send the N-ACTION to {where}: {e}")
        verdict = _action_verdict(int(status.Status) if "Status" in status else None, where)
        if verdict.outcome is not Outcome.OK:
            book.forget(request.transaction_uid)
            return verdict
        if linger_s > 0:
            book.wait_settled(request.transaction_uid, linger_s, lambda: not assoc.is_established)
        return verdict
    finally:
        if assoc.is_established:
            assoc.release()


def commit(
    calling_ae: str,
    peer: Peer,
    request: CommitmentRequest,
    book: ReportBook,
    linger_s: float = 0.0,
) -> CommitmentResult | Verdict:
    """Request and wait for the result until `request.deadline`: the result, or the verdict
    of an N-ACTION that could not be made."""
    verdict = request_commitment(calling_ae, peer, request, book, linger_s)
    if verdict.outcome is not Outcome.OK:
        return verdict
    result = book.wait(request.transaction_uid, request.deadline - book.clock())
    if result is None:  # settled now either way: timed out, or reported just in time
        book.expire(now=max(book.clock(), request.deadline))
        result = book.wait(request.transaction_uid, 0)
    assert result is not None
    return result


def answer_event_report(
    book: ReportBook, event: evt.Event, reporter: str, same_association: bool
) -> int:
    """The status for an N-EVENT-REPORT (from `reporter`), its report handed to `book`; for
    this association and for our SCP's (`agent.net.scp`)."""
    req = cast(N_EVENT_REPORT, event.request)
    event_type = int(req.EventTypeID or 0)
    if str(req.AffectedSOPInstanceUID) != PUSH_MODEL_INSTANCE:
        return STATUS_NO_SUCH_INSTANCE
    try:
        report = parse_report(event_type, event.event_information, reporter, same_association)
    except ReportError as e:
        log.warning("storage commitment report from %r refused: %s", reporter[:16], e)
        bad_type = event_type not in (EVENT_ALL_COMMITTED, EVENT_SOME_FAILED)
        return STATUS_NO_SUCH_EVENT_TYPE if bad_type else STATUS_INVALID_ARGUMENT
    return book.deliver(report)
