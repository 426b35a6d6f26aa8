"""Opening an association to a peer: TCP_NODELAY, TLS where configured, and a plain-words
verdict when it cannot be had (refused, rejected, aborted, nothing acceptable)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from agent.config import Peer, TlsSettings
from agent.net.outcome import Outcome, Verdict


def set_nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler. Nagle's algorithm with delayed ACKs caps a C-STORE stream at
    ~38 images/s on loopback; every association socket of ours turns it off."""
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def client_tls_context(tls: TlsSettings) -> ssl.SSLContext:
    """TLS 1.2 or later, the peer's certificate verified against our CA (BCP 195)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = tls.check_hostname
    if tls.cert_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    return ctx


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

    def on_open(event: evt.Event) -> None:
        seen["connected"] = True
        set_nodelay(event)

    def on_answer(event: evt.Event) -> None:
        seen["answered"] = True

    tls_args = None
    if peer.tls is not None:
        try:
            ctx = client_tls_context(peer.tls)
        except (OSError, ssl.SSLError) as e:
            return Opened(None, Verdict(Outcome.FAIL, f"TLS setup failed: {e}"))
        tls_args = (ctx, peer.host if peer.tls.check_hostname else None)
    assoc = ae.associate(
        peer.host,
        peer.port,
        ae_title=peer.ae_title,
        max_pdu=max_pdu,
        tls_args=tls_args,
        evt_handlers=[(evt.EVT_CONN_OPEN, on_open), (evt.EVT_ACCEPTED, on_answer)],
    )
    if assoc.is_established:
        return Opened(assoc, None)
    where = f"{peer.ae_title}@{peer.host}:{peer.port}"
    if not seen["connected"]:
        return Opened(None, Verdict(Outcome.RETRY, f"cannot connect to {where}"))
    if assoc.is_rejected:
        rj = assoc.acceptor.primitive
        result = getattr(rj, "result", None)
        detail = f"{getattr(rj, 'result_str', '')}: {getattr(rj, 'reason_str', '')}".strip(": ")
        if result == 0x01:
            return Opened(None, Verdict(Outcome.FAIL, f"{where} rejected the association ({detail})"))
        return Opened(None, Verdict(Outcome.RETRY, f"{where} rejected the association ({detail})"))
    if seen["answered"] and not assoc.accepted_contexts:
        return Opened(
            None,
            Verdict(Outcome.FAIL, f"{where} accepted none of the proposed presentation contexts"),
        )
    return Opened(None, Verdict(Outcome.RETRY, f"{where} aborted or timed out during association"))
