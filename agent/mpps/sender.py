"""Delivery of the MPPS outbox to the RIS, in order, on one association per round.

Statuses (PS3.4 F.7.2, PS3.7 C): success and the attribute warnings take a message off the
outbox; an N-CREATE answered 0111 (duplicate SOP instance) too, since it means an earlier
attempt arrived and only its answer was lost (IHE SWF). A refusal that will not change (an
invalid or missing attribute, a step that may no longer be updated, an unknown step) sets the
message aside with an alarm, so that the exam's later messages still go. Anything else (no
connection, a timeout, an abort, out of resources) ends the round: the same message is tried
again first next time, so the order the RIS sees is the order the messages were made in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.association import Association
from pynetdicom.presentation import build_context

from agent.config import Peer
from agent.mpps.outbox import N_CREATE, MppsMessage, MppsOutbox, OutboxError
from agent.net.association import open_association
from agent.net.outcome import Outcome, Verdict

MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"

_OK = {0x0000: "success", 0x0001: "warning: attribute list error", 0x0107: "warning: attribute"
       " list error", 0x0116: "warning: attribute value out of range"}  # fmt: skip
_FAIL = {
    0x0105: "no such attribute",
    0x0106: "invalid attribute value",
    0x0110: "the step may no longer be updated",  # for an N-SET (F.7.2.2.4)
    0x0112: "no such step at the RIS",
    0x0117: "invalid object instance",
    0x0118: "no such SOP class",
    0x0120: "missing attribute",
    0x0121: "missing attribute value",
    0x0122: "SOP class not supported",
    0x0124: "not authorized",
}


def mpps_verdict(kind: str, status: int | None) -> Verdict:
    """The outcome of one N-CREATE or N-SET answered `status` (None: no answer)."""
    if status is None:
        return Verdict(Outcome.RETRY, "no answer from the RIS")
    if status in _OK:
        return Verdict(Outcome.OK, _OK[status], status)
    if status == 0x0111 and kind == N_CREATE:
        return Verdict(Outcome.OK, "the RIS already has this step (an earlier attempt)", status)
    if status == 0x0110 and kind == N_CREATE:
        return Verdict(Outcome.RETRY, "processing failure at the RIS", status)
    if status in _FAIL:
        return Verdict(Outcome.FAIL, f"refused by the RIS: {_FAIL[status]}", status)
    if 0xA700 <= status <= 0xA7FF or status == 0x0213:
        return Verdict(Outcome.RETRY, "the RIS is out of resources", status)
    return Verdict(Outcome.FAIL, f"refused by the RIS with status 0x{status:04X}", status)


@dataclass
class MppsRound:
    """What one round did: messages taken, set aside (with why), and why it stopped early."""

    taken: int = 0
    set_aside: list[str] = field(default_factory=list)
    stopped: Verdict | None = None  # RETRY: try again later; None: the outbox is empty


def deliver(outbox: MppsOutbox, calling_ae: str, peer: Peer) -> MppsRound:
    result = MppsRound()
    pending = outbox.pending()
    if not pending:
        return result
    contexts = [build_context(MPPS_SOP_CLASS, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
    opened = open_association(calling_ae, peer, contexts)
    if opened.assoc is None:
        assert opened.verdict is not None
        result.stopped = opened.verdict
        return result
    assoc = opened.assoc
    try:
        for message in pending:
            if isinstance(message, OutboxError):
                outbox.fail(_number(message))
                result.set_aside.append(f"{message} (unreadable)")
                continue
            verdict = _send(assoc, message)
            if verdict.outcome is Outcome.OK:
                outbox.done(message)
                result.taken += 1
            elif verdict.outcome is Outcome.FAIL:
                outbox.fail(message.number)
                result.set_aside.append(f"{message.kind} {message.name}: {verdict.reason}")
            else:
                result.stopped = verdict
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return result


def _send(assoc: Association, message: MppsMessage) -> Verdict:
    if not assoc.is_established:
        return Verdict(Outcome.RETRY, "the RIS closed the association")
    if message.kind == N_CREATE:
        status, _ = assoc.send_n_create(message.dataset, MPPS_SOP_CLASS, message.sop_instance_uid)
    else:
        status, _ = assoc.send_n_set(message.dataset, MPPS_SOP_CLASS, message.sop_instance_uid)
    code = int(status.Status) if status is not None and "Status" in status else None
    return mpps_verdict(message.kind, code)


def _number(error: OutboxError) -> int:
    return int(str(error).split()[2].rstrip(":"))
