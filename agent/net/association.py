"""Opening an association to a peer: TCP_NODELAY, TLS where configured, and a plain-words
verdict when it cannot be had (refused, TLS refused, rejected, aborted, nothing acceptable)."""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.presentation import PresentationContext

from agent.config import Peer
from agent.net.outcome import Outcome, Verdict
from agent.net.tls import client_tls_context, tls_failure, tls_verdict

__all__ = [
    "Opened",
    "aborted",
    "client_tls_context",
    "describe_rejection",
    "not_connected",
    "nothing_accepted",
    "open_association",
    "quiet",
    "set_nodelay",
    "tls_setup_failed",
    "where_of",
]


def set_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler. Nagle's algorithm with delayed ACKs caps a C-STORE stream at
    ~38 images/s on loopback; every association socket of ours turns it off."""
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_PER_MESSAGE = (evt.EVT_PDU_SENT, evt.EVT_PDU_RECV, evt.EVT_DIMSE_SENT, evt.EVT_DIMSE_RECV)


def quiet(assoc: Association) -> None:
    """Unbind pynetdicom's standard per-PDU and per-message log handlers unless its logger is
    at DEBUG: they build their lines for every PDU and message (taking the association's lock,
    and for a C-STORE request copying its data set) even when nothing is logged. Per
    association: our SCP and an engineer debugging keep them."""
    if logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        return
    for event in _PER_MESSAGE:
        bound = cast(list[tuple[Callable[..., Any], Any]], assoc.get_handlers(event))
        for handler, _ in list(bound):
            if getattr(handler, "__module__", "") == "pynetdicom._handlers":
                assoc.unbind(event, handler)


def where_of(peer: Peer) -> str:
    """How the logs and verdicts name a peer."""
    return f"{peer.ae_title}@{peer.host}:{peer.port}"


# Why an association could not be had: one wording for pynetdicom's associations and for
# our storage association (store_scu.py), so that the logs and `queue` read the same.


def tls_setup_failed(where: str, error: Exception) -> Verdict:
    """Our own certificate, key or CA file: a person must fix the config."""
    return Verdict(Outcome.FAIL, f"TLS setup for {where} failed: {error}")


def not_connected(where: str) -> Verdict:
    return Verdict(Outcome.RETRY, f"cannot connect to {where}")


def nothing_accepted(where: str) -> Verdict:
    return Verdict(Outcome.FAIL, f"{where} accepted none of the proposed presentation contexts")


def aborted(where: str) -> Verdict:
    return Verdict(Outcome.RETRY, f"{where} aborted or timed out during association")


def describe_rejection(where: str, rj: A_ASSOCIATE_RJ) -> Verdict:
    """A permanent rejection fails; a transient one is retried (PS3.8 9.3.4)."""
    outcome = Outcome.FAIL if rj.result == 0x01 else Outcome.RETRY
    return Verdict(outcome, f"{where} rejected the association ({rj.result_str}: {rj.reason_str})")


@dataclass
class Opened:
    """The result of `open_association`: an association, or why there is none."""

    assoc: Association | None
    verdict: Verdict | None  # None when established


def open_association(
    calling_ae: str,
    peer: Peer,
    contexts: Sequence[PresentationContext],
    max_pdu: int = 131072,
) -> Opened:
    ae = AE(ae_title=calling_ae)
    ae.requested_contexts = list(contexts)
    ae.connection_timeout = peer.connect_timeout_s
    ae.acse_timeout = peer.acse_timeout_s
    ae.dimse_timeout = peer.dimse_timeout_s
    ae.network_timeout = max(peer.dimse_timeout_s, peer.acse_timeout_s)
    seen: dict[str, bool] = {"connected": False, "answered": False}
    rejection: list[A_ASSOCIATE_RJ] = []

    def on_open(event: evt.Event) -> None:
        seen["connected"] = True
        set_nodelay(event)

    def on_answer(event: evt.Event) -> None:
        seen["answered"] = True

    def on_pdu(event: evt.Event) -> None:
        # pynetdicom may report a rejection as an abort when the peer closes the connection
        # right after its A-ASSOCIATE-RJ; the PDU itself tells what happened.
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            rejection.append(event.pdu)

    where = where_of(peer)
    ctx: ssl.SSLContext | None = None
    tls_args: tuple[ssl.SSLContext, str] | None = None
    if peer.tls is not None:
        try:
            ctx = client_tls_context(peer.tls)
        except (OSError, ssl.SSLError) as e:
            return Opened(None, tls_setup_failed(where, e))
        # no server name (and no SNI) unless the host name is checked: peers are often IPs
        tls_args = (ctx, cast(str, peer.host if peer.tls.check_hostname else None))
    assoc = ae.associate(
        peer.host,
        peer.port,
        ae_title=peer.ae_title,
        max_pdu=max_pdu,
        tls_args=tls_args,
        evt_handlers=[
            (evt.EVT_CONN_OPEN, on_open),
            (evt.EVT_ACCEPTED, on_answer),
            (evt.EVT_PDU_RECV, on_pdu),
        ],
    )
    if assoc.is_established:
        assoc.unbind(evt.EVT_PDU_RECV, on_pdu)
        quiet(assoc)
        return Opened(assoc, None)
    tls_error = tls_failure(ctx)
    if tls_error is not None:
        return Opened(None, tls_verdict(tls_error, where, peer.tls))
    if not seen["connected"]:
        return Opened(None, not_connected(where))
    if rejection:
        return Opened(None, describe_rejection(where, rejection[0]))
    if seen["answered"] and not assoc.accepted_contexts:
        return Opened(None, nothing_accepted(where))
    return Opened(None, aborted(where))
