"""Deliver a batch of spooled instances to one destination over one association."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pynetdicom.association import Association

from agent.config import Destination
from agent.dicom import codecs, files
from agent.net.association import open_association
from agent.net.contexts import best_accepted, proposed_contexts, usable_syntaxes
from agent.net.outcome import Outcome, Verdict, store_verdict
from agent.spool import SpoolError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outgoing:
    """One spooled instance to send."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str  # as stored
    load: Callable[[], bytes]  # the Part 10 bytes, integrity-checked by the spool


@dataclass(frozen=True)
class SendResult:
    """What became of one instance."""

    sop_instance_uid: str
    verdict: Verdict
    transfer_syntax_uid: str | None = None  # what it was sent in
    # the association failed or was lost, not this instance: the destination backs off
    association_level: bool = False


def send_batch(calling_ae: str, dest: Destination, batch: Sequence[Outgoing]) -> list[SendResult]:
    """Send `batch` over one association; one `SendResult` per instance, in batch order."""
    if not batch:
        return []
    syntaxes = usable_syntaxes(dest.transfer_syntaxes)
    if not syntaxes:
        why = Verdict(Outcome.FAIL, f"none of {dest.name}'s transfer syntaxes can be produced here")
        return [SendResult(o.sop_instance_uid, why) for o in batch]
    contexts = proposed_contexts((o.sop_class_uid for o in batch), syntaxes)
    opened = open_association(calling_ae, dest, contexts, dest.max_pdu)
    if opened.assoc is None:
        assert opened.verdict is not None
        log.warning("%s: %s", dest.name, opened.verdict.reason)
        return [SendResult(o.sop_instance_uid, opened.verdict, None, True) for o in batch]
    assoc = opened.assoc
    results: list[SendResult] = []
    try:
        for item in batch:
            if not assoc.is_established:
                lost = Verdict(Outcome.RETRY, "association lost before this instance was sent")
                results.append(SendResult(item.sop_instance_uid, lost, None, True))
                continue
            results.append(_store_one(assoc, item, syntaxes))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def _store_one(assoc: Association, item: Outgoing, syntaxes: Sequence[str]) -> SendResult:
    ts = best_accepted(assoc, item.sop_class_uid, syntaxes)
    if ts is None:
        why = Verdict(
            Outcome.FAIL, f"the archive accepted no context for SOP class {item.sop_class_uid}"
        )
        return SendResult(item.sop_instance_uid, why)
    try:
        # decoded from bytes in the target syntax, so that pynetdicom sees a consistent encoding
        ds = files.decode(codecs.transcode_bytes(item.load(), ts))
    except (OSError, codecs.CodecError, SpoolError, ValueError) as e:
        why = Verdict(Outcome.FAIL, f"cannot prepare the instance: {e}")
        return SendResult(item.sop_instance_uid, why)
    try:
        status = assoc.send_c_store(ds)
    except RuntimeError:  # the association ended under us (abort, peer closed)
        lost = Verdict(Outcome.RETRY, "association lost while sending this instance")
        return SendResult(item.sop_instance_uid, lost, ts, True)
    except (AttributeError, ValueError, OSError) as e:  # pynetdicom's "cannot encode" family
        log.exception("C-STORE of %s could not be sent", item.sop_instance_uid)
        return SendResult(item.sop_instance_uid, Verdict(Outcome.FAIL, f"cannot send: {e}"))
    code = int(status.Status) if status and "Status" in status else None
    verdict = store_verdict(code)
    if code is None:  # timeout or abort: pynetdicom has aborted the association
        return SendResult(item.sop_instance_uid, verdict, ts, True)
    if verdict.outcome is not Outcome.OK or code != 0:
        log.info("C-STORE %s: %s", item.sop_instance_uid, verdict.reason)
    return SendResult(item.sop_instance_uid, verdict, ts)
