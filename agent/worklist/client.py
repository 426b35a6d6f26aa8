"""The C-FIND SCU of the Modality Worklist Information Model - FIND (PS3.4 K.6).

One query, one association (opened by `agent.net.association`, TLS as configured): pending
answers are read into items as they come; at `max_items` the query is cancelled (C-CANCEL) and
the list is marked truncated; past `query_timeout` it is cancelled, then aborted, and counts as
no answer. A response that cannot be read is counted, never raised.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_FIND_RSP
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

from agent.config.model import WorklistSettings
from agent.net.association import open_association
from agent.net.outcome import Outcome, Verdict
from agent.worklist.item import WorklistItem, parse

log = logging.getLogger(__name__)

PENDING = (0xFF00, 0xFF01)
SUCCESS, CANCELLED = 0x0000, 0xFE00
ABORT_GRACE_S = 5.0  # after a C-CANCEL, how long the SCP has to stop sending
FAILURES = {
    0xA700: "out of resources",
    0xA900: "identifier does not match SOP class",
    0x0122: "SOP class not supported",
}


QUERY_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)  # proposed, in one context


@dataclass
class FindResult:
    items: list[WorklistItem] = field(default_factory=list)
    verdict: Verdict | None = None  # None: the RIS answered completely (or up to max_items)
    truncated: bool = False  # cancelled at max_items: more items exist
    bad_answers: int = 0  # responses that could not be read
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.verdict is None


def find(calling_ae: str, settings: WorklistSettings, request: Dataset) -> FindResult:
    started = time.monotonic()
    result = FindResult()
    context = build_context(ModalityWorklistInformationFind, list(QUERY_SYNTAXES))
    opened = open_association(calling_ae, settings, [context])
    if opened.assoc is None:
        result.verdict = opened.verdict
        result.seconds = time.monotonic() - started
        return result
    assoc = opened.assoc
    try:
        _query(assoc, settings, request, result, started)
    finally:
        if assoc.is_established:
            assoc.release()
    result.seconds = time.monotonic() - started
    log.info(
        "worklist query: %d item(s)%s in %.2f s%s",
        len(result.items),
        " (truncated)" if result.truncated else "",
        result.seconds,
        f"; {result.verdict.reason}" if result.verdict else "",
    )
    if result.bad_answers:
        log.warning("worklist query: %d answer(s) could not be read", result.bad_answers)
    return result


def _query(
    assoc: Association,
    settings: WorklistSettings,
    request: Dataset,
    result: FindResult,
    started: float,
) -> None:
    (cx,) = [c for c in assoc.accepted_contexts if c.abstract_syntax == context_uid()]
    implicit = cx.transfer_syntax[0] == ImplicitVRLittleEndian
    # each response identifier's bytes as received, taken before pynetdicom decodes (and,
    # logging them, converts) its own copy: the items are read from these bytes alone
    received: deque[bytes | None] = deque()

    def on_message(event: evt.Event) -> None:
        message = event.message
        if isinstance(message, C_FIND_RSP):
            data = message.data_set
            received.append(data.getvalue() if data is not None else None)

    assoc.bind(evt.EVT_DIMSE_RECV, on_message)
    deadline = started + settings.query_timeout_s
    cancelled_at: float | None = None
    timed_out = False
    responses = assoc.send_c_find(request, ModalityWorklistInformationFind, msg_id=1)
    for status, _ in responses:
        data = received.popleft() if received else None
        if not status or "Status" not in status:  # DIMSE timeout or abort
            result.verdict = Verdict(Outcome.RETRY, "the RIS stopped answering (timeout or abort)")
            return
        code = int(status.Status)
        now = time.monotonic()
        if code in PENDING:
            if cancelled_at is None:
                _take(data, implicit, result)
                if len(result.items) >= settings.max_items:
                    result.truncated = True
                elif now > deadline:
                    timed_out = True
                if result.truncated or timed_out:
                    cancelled_at = now
                    assoc.send_c_cancel(1, cx.context_id)
            elif now > cancelled_at + ABORT_GRACE_S:  # it ignores the cancel
                assoc.abort()
                break
            continue
        if code == SUCCESS or (code == CANCELLED and cancelled_at is not None):
            break
        meaning = FAILURES.get(code, "cancelled" if code == CANCELLED else "unable to process")
        result.verdict = Verdict(
            Outcome.RETRY if code == 0xA700 else Outcome.FAIL,
            f"the RIS answered 0x{code:04X} ({meaning})",
        )
        return
    if timed_out:
        result.verdict = Verdict(
            Outcome.RETRY, f"no complete answer within {settings.query_timeout_s:g} s"
        )


def _take(data: bytes | None, implicit: bool, result: FindResult) -> None:
    if not data:
        result.bad_answers += 1
        return
    try:
        result.items.append(parse(data, implicit))
    except Exception:  # any answer, however broken, is counted and skipped
        result.bad_answers += 1
        log.debug("unreadable worklist answer", exc_info=True)


def context_uid() -> str:
    return str(ModalityWorklistInformationFind)
