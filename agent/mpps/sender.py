"""Delivery of the MPPS outbox to the RIS, in order, on one association per round.

Statuses (agent.net.outcome.n_service_verdict): success and the warnings take a message off
the outbox; so does an N-CREATE answered 0111 (duplicate SOP instance), and a repeated N-SET
answered 0110, since both mean an earlier attempt arrived and only its answer was lost (IHE
SWF). A refusal that will not change (an invalid or missing attribute, an unknown step) sets
the message aside with an alarm, and with it the later messages of a step whose N-CREATE was
set aside; the other steps' messages still go. Anything else (no connection, a timeout, an
abort, out of resources) ends the round: the same message is tried again first next time, so
the order the RIS sees is the order the messages were made in; after MAX_ATTEMPTS such answers
to one message it is set aside, so that one message the RIS chokes on cannot hold back every
later exam's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.association import Association
from pynetdicom.presentation import build_context

from agent.config import Peer
from agent.mpps.outbox import N_CREATE, MppsMessage, MppsOutbox, OutboxError
from agent.net.association import open_association
from agent.net.outcome import Outcome, Verdict, n_service_verdict

MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"
MPPS_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)  # proposed, in one context
MAX_ATTEMPTS = 5  # a message the RIS answered with a transient failure this often is set aside


@dataclass
class MppsRound:
    """What one round did: messages taken, set aside (with why), and why it stopped early."""

    taken: int = 0
    set_aside: list[str] = field(default_factory=list)
    stopped: Verdict | None = None  # RETRY: try again later; None: the outbox is empty


def deliver(outbox: MppsOutbox, calling_ae: str, peer: Peer) -> MppsRound:
    """One round: every pending message in order, on one association. One round at a time
    per outbox (a periodic round and a `retry` never send the same message twice at once)."""
    with outbox.round_lock:
        return _round(outbox, calling_ae, peer)


def _round(outbox: MppsOutbox, calling_ae: str, peer: Peer) -> MppsRound:
    result = MppsRound()
    try:
        pending = outbox.pending()
    except OSError as e:  # cannot read now (EIO, EMFILE...): nothing is set aside for that
        result.stopped = Verdict(Outcome.RETRY, f"the MPPS outbox cannot be read: {e.strerror}")
        return result
    if not pending:
        return result
    contexts = [build_context(MPPS_SOP_CLASS, list(MPPS_SYNTAXES))]
    opened = open_association(calling_ae, peer, contexts)
    if opened.assoc is None:
        assert opened.verdict is not None
        result.stopped = opened.verdict
        return result
    assoc = opened.assoc
    orphaned: set[str] = set()  # steps whose N-CREATE was set aside: their N-SETs follow it
    try:
        for message in pending:
            if isinstance(message, OutboxError):
                outbox.fail(message.number)
                result.set_aside.append(f"{message} (damaged)")
                continue
            if message.sop_instance_uid in orphaned:
                outbox.fail(message.number)
                result.set_aside.append(f"{message.kind} {message.name}: its N-CREATE failed")
                continue
            verdict = _send(outbox, assoc, message)
            if verdict.outcome is Outcome.RETRY:
                attempts = outbox.attempts[message.number] = outbox.attempts[message.number] + 1
                if attempts < MAX_ATTEMPTS:
                    result.stopped = verdict
                    break
                verdict = Verdict(Outcome.FAIL, f"{verdict.reason}, {attempts} times")
            if verdict.outcome is Outcome.OK:
                outbox.done(message)
                result.taken += 1
            else:
                outbox.fail(message.number)
                result.set_aside.append(f"{message.kind} {message.name}: {verdict.reason}")
                if message.kind == N_CREATE:
                    orphaned.add(message.sop_instance_uid)
    finally:
        if assoc.is_established:
            assoc.release()
    return result


def _send(outbox: MppsOutbox, assoc: Association, message: MppsMessage) -> Verdict:
    if not assoc.is_established:
        return Verdict(Outcome.RETRY, "the RIS closed the association")
    repeated = outbox.attempted(message)
    outbox.mark_attempted(message)
    try:
        if message.kind == N_CREATE:
            status, _ = assoc.send_n_create(
                message.dataset, MPPS_SOP_CLASS, message.sop_instance_uid
            )
        else:
            status, _ = assoc.send_n_set(message.dataset, MPPS_SOP_CLASS, message.sop_instance_uid)
    except Exception as e:  # e.g. a data set pynetdicom cannot encode: this message only
        return Verdict(Outcome.FAIL, f"cannot be sent: {type(e).__name__}: {e}")
    code = int(status.Status) if status is not None and "Status" in status else None
    return n_service_verdict(message.kind, code, repeated=repeated)
