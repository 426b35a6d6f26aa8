"""C-ECHO (Verification) to a configured peer: the field engineer's first check."""

from __future__ import annotations

import time
from dataclasses import dataclass

from pynetdicom.presentation import build_context

from agent.config import Peer
from agent.net.association import open_association
from agent.net.outcome import store_verdict

VERIFICATION = "1.2.840.10008.1.1"


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    seconds: float
    error: str | None


def echo(calling_ae: str, peer: Peer) -> EchoResult:
    started = time.monotonic()
    opened = open_association(calling_ae, peer, [build_context(VERIFICATION)])
    if opened.assoc is None:
        assert opened.verdict is not None
        return EchoResult(False, time.monotonic() - started, opened.verdict.reason)
    try:
        status = opened.assoc.send_c_echo()
    finally:
        if opened.assoc.is_established:
            opened.assoc.release()
    code = int(status.Status) if status and "Status" in status else None
    ok = code == 0
    error = None if ok else store_verdict(code).reason
    return EchoResult(ok, time.monotonic() - started, error)
