"""Deliver batches of spooled instances to one destination over one association, kept open
from batch to batch while instances keep coming (`Link`). The association is our own storage
association (`store_scu`), not pynetdicom's: see there why."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from agent.config import Destination
from agent.dicom import codecs
from agent.net.contexts import best_accepted, proposed_contexts, usable_syntaxes
from agent.net.outcome import Outcome, Verdict, store_verdict
from agent.net.pacing import Choice, Pace, Plan
from agent.net.staging import Staging
from agent.net.store_scu import (
    AssociationLost,
    NoResponse,
    StoreAssociation,
    open_store_association,
)
from agent.spool import SpoolError

log = logging.getLogger(__name__)
PREPARE_TIMEOUT_S = 300.0  # a check or transcoding not done by then is lost, not slow


@dataclass(frozen=True)
class Outgoing:
    """One spooled instance to send."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str  # as stored
    source: Callable[[], Path]  # the Part 10 file, integrity-checked by the spool
    series_instance_uid: str = ""  # instances of one series go over one association


@dataclass(frozen=True)
class SendResult:
    """What became of one instance."""

    sop_instance_uid: str
    verdict: Verdict
    transfer_syntax_uid: str | None = None  # what it was sent in
    # the association failed or was lost, not this instance: the destination backs off
    association_level: bool = False


class Link:
    """One association to a destination, opened when needed and reused by later batches
    until `close` (the sender closes it when the destination goes idle)."""

    def __init__(self, calling_ae: str, dest: Destination, staging: Staging | None = None):
        self.calling_ae = calling_ae
        self.dest = dest
        self.staging = staging or Staging()
        self.opened = 0  # associations opened, for `queue`
        self._assoc: StoreAssociation | None = None
        self._sop_classes: frozenset[str] = frozenset()
        self.pace = Pace()  # this destination's link, as the sends show it

    def close(self) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is not None:
            assoc.release()

    def send(self, batch: Sequence[Outgoing]) -> list[SendResult]:
        """One `SendResult` per instance, in batch order."""
        if not batch:
            return []
        syntaxes = usable_syntaxes(self.dest.transfer_syntaxes)
        if not syntaxes:
            why = f"none of {self.dest.name}'s transfer syntaxes can be produced here"
            return [SendResult(o.sop_instance_uid, Verdict(Outcome.FAIL, why)) for o in batch]
        classes = frozenset(o.sop_class_uid for o in batch)
        reused = self._assoc is not None and not self._assoc.peer_left()
        if reused and not classes <= self._sop_classes:
            self.close()
            reused = False
        if not reused:
            failed = self._open(classes, syntaxes, batch)
            if failed:
                return failed
        results = self._send_on(batch, syntaxes)
        if reused and results[0].association_level:
            # the archive closed the idle association as our first store went: a new one
            self.close()
            failed = self._open(classes, syntaxes, batch)
            results = failed or self._send_on(batch, syntaxes)
        if self._assoc is not None and not self._assoc.is_established:
            self._assoc = None
        return results

    def _open(
        self, classes: frozenset[str], syntaxes: Sequence[str], batch: Sequence[Outgoing]
    ) -> list[SendResult]:
        """Open the association; [] when done, else the batch's association-level results."""
        self.close()
        contexts = proposed_contexts(sorted(classes), syntaxes)
        self.opened += 1
        assoc, verdict = open_store_association(
            self.calling_ae, self.dest, contexts, self.dest.max_pdu
        )
        if assoc is None:
            assert verdict is not None
            log.warning("%s: %s", self.dest.name, verdict.reason)
            return [SendResult(o.sop_instance_uid, verdict, None, True) for o in batch]
        self._assoc, self._sop_classes = assoc, classes
        return []

    def _send_on(self, batch: Sequence[Outgoing], syntaxes: Sequence[str]) -> list[SendResult]:
        assoc = self._assoc
        assert assoc is not None
        accepted = {(cx.abstract_syntax, cx.transfer_syntax) for cx in assoc.accepted_contexts}
        results: list[SendResult | None] = [None] * len(batch)
        chosen: list[tuple[int, Choice]] = []
        for n, item in enumerate(batch):
            ts = best_accepted(accepted, item.sop_class_uid, syntaxes)
            if ts is None:
                why = f"the archive accepted no context for SOP class {item.sop_class_uid}"
                results[n] = SendResult(item.sop_instance_uid, Verdict(Outcome.FAIL, why))
                continue
            stored_too = (item.sop_class_uid, item.transfer_syntax_uid) in accepted
            choice = Choice(
                item.sop_instance_uid, item.transfer_syntax_uid, ts, stored_too, item.source
            )
            chosen.append((n, choice))
        plan = Plan(self.staging, [c for _, c in chosen], self.pace, self.dest.adaptive_compression)
        for k, (n, _) in enumerate(chosen):
            item = batch[n]
            if not assoc.is_established:
                lost = Verdict(Outcome.RETRY, "association lost before this instance was sent")
                results[n] = SendResult(item.sop_instance_uid, lost, None, True)
            else:
                ts, prepared, stored = plan.take(k)
                result = _store_one(assoc, item, ts, prepared, self.pace)
                if stored is not None and _not_sent(result) and assoc.is_established:
                    # the archive took the stored syntax too: a failed copy costs nothing
                    log.warning(
                        "%s: %s; sent as stored", item.sop_instance_uid, result.verdict.reason
                    )
                    result = _store_one(assoc, item, *stored, self.pace)
                results[n] = result
        return [r for r in results if r is not None]


def send_batch(calling_ae: str, dest: Destination, batch: Sequence[Outgoing]) -> list[SendResult]:
    """Send `batch` over one association of its own, released at the end."""
    link = Link(calling_ae, dest)
    try:
        return link.send(batch)
    finally:
        link.close()
        link.staging.clear()


def _not_sent(result: SendResult) -> bool:
    """The instance's file could not be had or sent as it was; the association is fine."""
    return (
        result.verdict.outcome is not Outcome.OK
        and result.transfer_syntax_uid is None
        and not result.association_level
    )


def _unprepared(item: Outgoing, e: Exception) -> SendResult:
    why = Verdict(Outcome.FAIL, f"cannot prepare the instance: {e}")
    return SendResult(item.sop_instance_uid, why)


def _store_one(
    assoc: StoreAssociation, item: Outgoing, ts: str, staged: Future[Path], pace: Pace
) -> SendResult:
    try:
        path = staged.result(timeout=PREPARE_TIMEOUT_S)
    except TimeoutError:  # a pool that lost the job: cancelled, the next attempt stages anew
        staged.cancel()
        late = f"the file to send was not ready within {PREPARE_TIMEOUT_S:.0f} s"
        return SendResult(item.sop_instance_uid, Verdict(Outcome.RETRY, late))
    except (OSError, SpoolError, codecs.CodecError, ValueError) as e:
        return _unprepared(item, e)
    except Exception as e:  # a worker that died: this instance waits, the others go on
        log.exception("transcoding %s to %s", item.sop_instance_uid, ts)
        why = Verdict(Outcome.RETRY, f"transcoding failed: {type(e).__name__}: {e}")
        return SendResult(item.sop_instance_uid, why)
    context = assoc.context_for(item.sop_class_uid, ts)
    assert context is not None  # ts was chosen among the accepted contexts
    started = time.monotonic()
    try:
        code = assoc.store(path, context, item.sop_instance_uid)
        pace.stored(time.monotonic() - started)
    except NoResponse:  # the association is aborted
        return SendResult(item.sop_instance_uid, store_verdict(None), ts, True)
    except AssociationLost as e:
        lost = Verdict(Outcome.RETRY, f"association lost while sending this instance: {e}")
        return SendResult(item.sop_instance_uid, lost, ts, True)
    except (OSError, ValueError) as e:  # the file cannot be read or sent as it is
        log.warning("C-STORE of %s not sent: %s", item.sop_instance_uid, e)
        return SendResult(item.sop_instance_uid, Verdict(Outcome.FAIL, f"cannot send: {e}"))
    verdict = store_verdict(code)
    if verdict.outcome is not Outcome.OK or code != 0:
        log.info("C-STORE %s: %s", item.sop_instance_uid, verdict.reason)
    return SendResult(item.sop_instance_uid, verdict, ts)
