"""Every attempt to deliver ends in one of three outcomes, decided by a table of our own.

pynetdicom's status categories call A7xx (out of resources: worth a retry), A9xx and Cxxx all
"Failure"; SPEC §6 wants them apart, so the map lives here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.Enum):
    OK = "ok"  # the peer has the instance (success or warning)
    RETRY = "retry"  # transient: try again later with backoff
    FAIL = "fail"  # permanent: park as failed, shown, retryable by hand


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str  # plain words, for `queue` and the logs
    status: int | None = None  # the DIMSE status, when there was one


# Specific statuses first (PS3.4 Annex B.2.3 and PS3.7 Annex C), then ranges.
_EXACT: dict[int, tuple[Outcome, str]] = {
    0x0000: (Outcome.OK, "success"),
    0x0001: (Outcome.OK, "warning: attribute list error"),
    0x0107: (Outcome.OK, "warning: attribute list error"),
    0x0116: (Outcome.OK, "warning: attribute value out of range"),
    0xB000: (Outcome.OK, "warning: coercion of data elements"),
    0xB006: (Outcome.OK, "warning: elements discarded"),
    0xB007: (Outcome.OK, "warning: data set does not match SOP class"),
    0x0110: (Outcome.RETRY, "processing failure at the archive"),
    # not a C-STORE status in PS3.4, but archives send it for an instance they already hold,
    # e.g. when our earlier attempt succeeded and its answer was lost
    0x0111: (Outcome.OK, "warning: the archive already has this instance"),
    0x0117: (Outcome.FAIL, "invalid SOP instance"),
    0x0122: (Outcome.FAIL, "SOP class not supported by the archive"),
    0x0124: (Outcome.FAIL, "refused: not authorised"),
    0x0210: (Outcome.RETRY, "duplicate invocation"),
    0x0211: (Outcome.FAIL, "unrecognised operation"),
    0x0212: (Outcome.FAIL, "mistyped argument"),
    0x0213: (Outcome.RETRY, "resource limitation at the archive"),
    0xFE00: (Outcome.RETRY, "cancelled by the archive"),
}
_RANGES: list[tuple[int, int, Outcome, str]] = [
    (0xA700, 0xA7FF, Outcome.RETRY, "refused: out of resources"),
    (0xA900, 0xA9FF, Outcome.FAIL, "error: data set does not match SOP class"),
    (0xC000, 0xCFFF, Outcome.FAIL, "error: cannot understand"),
    (0xB000, 0xBFFF, Outcome.OK, "warning"),
]


def store_verdict(status: int | None) -> Verdict:
    """The outcome of one C-STORE from its response status (None: no response at all)."""
    if status is None:
        return Verdict(Outcome.RETRY, "no response from the archive (timeout or abort)")
    if status in _EXACT:
        outcome, reason = _EXACT[status]
        return Verdict(outcome, f"{reason} (0x{status:04X})", status)
    for low, high, outcome, reason in _RANGES:
        if low <= status <= high:
            return Verdict(outcome, f"{reason} (0x{status:04X})", status)
    # Unknown failure codes: a person looks at it rather than a silent retry loop.
    return Verdict(Outcome.FAIL, f"failure status 0x{status:04X}", status)


# N-CREATE / N-SET (PS3.7 Annex C, PS3.4 F.7.2): the statuses that differ from C-STORE's
_N_EXACT: dict[int, tuple[Outcome, str]] = {
    0x0001: (Outcome.OK, "warning: requested optional attributes are not supported"),
    0x0105: (Outcome.FAIL, "no such attribute"),
    0x0106: (Outcome.FAIL, "invalid attribute value"),
    0x0110: (Outcome.FAIL, "processing failure: the step may no longer be updated"),
    0x0112: (Outcome.FAIL, "no such SOP instance at the peer"),
    0x0118: (Outcome.FAIL, "no such SOP class"),
    0x0120: (Outcome.FAIL, "missing attribute"),
    0x0121: (Outcome.FAIL, "missing attribute value"),
}


def n_service_verdict(operation: str, status: int | None, *, repeated: bool = False) -> Verdict:
    """The outcome of one N-CREATE or N-SET (`operation`) from its status. `repeated`: the
    same message was sent before, its answer lost; then a duplicate SOP instance (0111) on an
    N-CREATE, or a step no longer updatable (0110) on an N-SET, means the peer has it (IHE
    SWF)."""
    if status is None:
        return Verdict(Outcome.RETRY, "no response from the peer (timeout or abort)")
    if status == 0x0111 and operation == "N-CREATE":
        return Verdict(Outcome.OK, "the peer already has this instance (0x0111)", status)
    if status == 0x0110 and operation == "N-CREATE":
        return Verdict(Outcome.RETRY, "processing failure at the peer (0x0110)", status)
    if status == 0x0110 and repeated:
        return Verdict(Outcome.OK, "the peer had it already: the answer was lost (0x0110)", status)
    if status in _N_EXACT:
        outcome, reason = _N_EXACT[status]
        return Verdict(outcome, f"{reason} (0x{status:04X})", status)
    return store_verdict(status)
