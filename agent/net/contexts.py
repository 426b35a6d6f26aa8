"""Presentation contexts: only the SOP classes in the batch, one context per transfer syntax.

An acceptor picks one transfer syntax per context whatever the order it was proposed in, so
proposing each syntax in its own context is how the destination's preference is honoured.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from pynetdicom.presentation import PresentationContext, build_context

from agent.dicom import codecs

log = logging.getLogger(__name__)
MAX_CONTEXTS = 128  # PS3.8: presentation context IDs are odd numbers 1..255


def usable_syntaxes(preferred: Sequence[str]) -> tuple[str, ...]:
    """The configured syntaxes this installation can produce, in the configured order."""
    usable = []
    for uid in preferred:
        reason = codecs.unavailable_reason(uid)
        if reason is None:
            usable.append(uid)
        else:
            log.warning("not proposing %s: %s", uid, reason)
    return tuple(usable)


def proposed_contexts(
    sop_classes: Iterable[str], syntaxes: Sequence[str]
) -> list[PresentationContext]:
    contexts = [build_context(sop, ts) for sop in dict.fromkeys(sop_classes) for ts in syntaxes]
    if len(contexts) > MAX_CONTEXTS:
        raise ValueError(f"{len(contexts)} presentation contexts needed, at most {MAX_CONTEXTS}")
    return contexts


def best_accepted(
    accepted: Iterable[tuple[str, str]], sop_class: str, syntaxes: Sequence[str]
) -> str | None:
    """The most preferred transfer syntax among the `accepted` (abstract syntax, transfer
    syntax) pairs for `sop_class`, if any."""
    taken = {ts for abstract, ts in accepted if abstract == sop_class}
    return next((ts for ts in syntaxes if ts in taken), None)
