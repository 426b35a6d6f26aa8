"""The agent's own SCP (`listen_port`): Verification, and the Storage Commitment Push Model
reports (N-EVENT-REPORT) that destinations send on a new association. Nothing else.

Access control, in one place (`admit`): the called AE title must be ours; the calling AE title
must be a configured peer's, and from that peer's host when one is given. A few associations
at a time at most. Values from the peer are checked (UIDs) and handed on as typed objects;
none becomes a path or a query. TLS (BCP 195) when configured, mutual with a CA.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType

from pynetdicom import AE, evt
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.transport import ThreadedAssociationServer

from agent.config import TlsSettings
from agent.net.association import set_nodelay
from agent.net.commitment import PUSH_MODEL, ReportBook, answer_event_report
from agent.net.echo import VERIFICATION
from agent.net.tls import server_tls_context

__all__ = ["VERIFICATION", "AgentScp", "AllowedPeer", "ScpSettings", "admit"]

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ: rejected-permanent, by the service user, with the reason (PS3.8 9.3.4)
CALLING_AE_NOT_RECOGNISED = 0x03
CALLED_AE_NOT_RECOGNISED = 0x07


@dataclass(frozen=True)
class AllowedPeer:
    """A peer that may call us: its AE title and, optionally, the host it must call from."""

    ae_title: str
    host: str | None = None  # a name or an address; None: any host


@dataclass(frozen=True)
class ScpSettings:
    ae_title: str  # ours: the called AE title required
    port: int  # 0: the kernel picks one (tests)
    peers: tuple[AllowedPeer, ...]
    host: str = ""  # the address to listen on; "": every interface
    tls: TlsSettings | None = None
    max_associations: int = 4
    timeout_s: float = 30.0  # ACSE, DIMSE and idle network timeout


def admit(
    calling_ae: str,
    called_ae: str,
    address: str,
    ours: str,
    allowed: dict[str, frozenset[str] | None],
) -> tuple[int, str] | None:
    """None to accept; else the A-ASSOCIATE-RJ reason and why in words (pure).
    `allowed`: AE title -> addresses it may call from (None: any)."""
    if called_ae.strip() != ours:
        return CALLED_AE_NOT_RECOGNISED, f"called AE title {called_ae.strip()[:16]!r} is not ours"
    calling = calling_ae.strip()
    if calling not in allowed:
        return CALLING_AE_NOT_RECOGNISED, f"calling AE title {calling[:16]!r} is not configured"
    hosts = allowed[calling]
    if hosts is not None and address not in hosts:
        return CALLING_AE_NOT_RECOGNISED, f"{calling!r} may not call from {address}"
    return None


def _addresses(host: str) -> frozenset[str]:
    """Every address `host` names (a name is resolved once, when the SCP starts)."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return frozenset(str(info[4][0]) for info in infos)


@dataclass
class AgentScp:
    """`with AgentScp(settings, book) as scp:` listens on `scp.port`; reports go to `book`."""

    settings: ScpSettings
    book: ReportBook
    rejected: int = 0  # associations refused by `admit`, for status and tests
    _allowed: dict[str, frozenset[str] | None] = field(default_factory=dict, repr=False)
    _ae: AE | None = field(default=None, repr=False)
    _server: ThreadedAssociationServer | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def port(self) -> int:
        assert self._server is not None, "the SCP is not running"
        return int(self._server.server_address[1])

    def start(self) -> AgentScp:
        s = self.settings
        self._allowed = _allowed(s.peers)
        ae = AE(ae_title=s.ae_title)
        # pynetdicom's own checks too, so that the titles stay closed should our handler fail
        ae.require_called_aet = True
        ae.require_calling_aet = sorted(self._allowed)
        ae.maximum_associations = s.max_associations
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = s.timeout_s
        ae.add_supported_context(VERIFICATION)
        # the reporter is the SCP of Storage Commitment, we its SCU, on its association
        ae.add_supported_context(PUSH_MODEL, scu_role=False, scp_role=True)
        ssl_context = server_tls_context(s.tls, s.timeout_s) if s.tls is not None else None
        handlers: list[evt.EventHandlerType] = [
            (evt.EVT_CONN_OPEN, set_nodelay),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_N_EVENT_REPORT, self._on_event_report),
        ]
        server = ae.start_server(
            (s.host, s.port), block=False, evt_handlers=handlers, ssl_context=ssl_context
        )
        assert server is not None  # a non-blocking start returns the server
        self._ae, self._server = ae, server
        log.info("listening on port %d as %s (%s)", self.port, s.ae_title, _tls_words(s.tls))
        return self

    def stop(self) -> None:
        if self._ae is not None:
            self._ae.shutdown()
        self._ae = self._server = None

    def __enter__(self) -> AgentScp:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        try:
            rq = assoc.requestor.primitive
            assert isinstance(rq, A_ASSOCIATE)
            verdict = admit(
                str(rq.calling_ae_title),
                str(rq.called_ae_title),
                str(assoc.requestor.address),
                self.settings.ae_title,
                self._allowed,
            )
        except Exception:  # never let a request through unchecked
            log.exception("cannot check an association request")
            verdict = (CALLING_AE_NOT_RECOGNISED, "the request could not be checked")
        if verdict is None:
            return
        reason, words = verdict
        log.warning("association from %s rejected: %s", assoc.requestor.address, words)
        with self._lock:
            self.rejected += 1
        assoc.acse.send_reject(0x01, 0x01, reason)
        assoc.kill()

    def _on_event_report(self, event: evt.Event) -> tuple[int, None]:
        reporter = str(event.assoc.requestor.ae_title)
        return answer_event_report(self.book, event, reporter, same_association=False), None


def _allowed(peers: Iterable[AllowedPeer]) -> dict[str, frozenset[str] | None]:
    """AE title -> the addresses it may call from; None: any. A title listed once without a
    host may call from anywhere."""
    allowed: dict[str, frozenset[str] | None] = {}
    for p in peers:
        title = p.ae_title.strip()
        if p.host is None or (title in allowed and allowed[title] is None):
            allowed[title] = None
        else:
            allowed[title] = (allowed.get(title) or frozenset()) | _addresses(p.host)
    return allowed


def _tls_words(tls: TlsSettings | None) -> str:
    if tls is None:
        return "no TLS"
    return "TLS, client certificates required" if tls.ca_file is not None else "TLS"
