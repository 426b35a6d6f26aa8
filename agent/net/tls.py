"""TLS for DICOM associations (PS3.15 Annex B, BCP 195 profile): contexts for our outgoing
associations and for our own SCP, and plain words for why a handshake failed.

TLS 1.2 or later only; the peer's certificate is always verified against the configured CA
(the host name only when `check_hostname`, as DICOM peers are often reached by IP address).
A failed handshake happens inside pynetdicom's threads, which log it and report only "not
connected"; our contexts make sockets that keep the handshake's error (`SSLContext.
sslsocket_class`, a documented hook) so that `tls_failure` can say what was wrong.
"""

from __future__ import annotations

import socket
import ssl
from typing import Any

from agent.config import TlsSettings
from agent.net.outcome import Outcome, Verdict

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
#: TLS 1.2 suites (OpenSSL cipher list); TLS 1.3 suites are OpenSSL's defaults, all AEAD
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!eNULL:!MD5:!SHA1"
# OpenSSL verify codes (X509_V_ERR_*) for a chain that does not lead to our CA
_UNTRUSTED = {2, 18, 19, 20, 21, 27}
_EXPIRED, _NOT_YET_VALID, _HOSTNAME_MISMATCH, _IP_MISMATCH = 10, 9, 62, 64
# what OpenSSL calls an offer of, or an alert about, a protocol version we do not take
_OLD_PROTOCOL = {
    "UNSUPPORTED_PROTOCOL",
    "TLSV1_ALERT_PROTOCOL_VERSION",
    "WRONG_VERSION_NUMBER",
    "NO_PROTOCOLS_AVAILABLE",
    "WRONG_SSL_VERSION",
}
# alerts by which a server says it did not take our client certificate (or its absence)
_OUR_CERT_REFUSED = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "SSLV3_ALERT_BAD_CERTIFICATE",
    "TLSV1_ALERT_UNKNOWN_CA",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
    "SSLV3_ALERT_HANDSHAKE_FAILURE",
    "TLSV1_ALERT_ACCESS_DENIED",
}


class _WitnessSocket(ssl.SSLSocket):
    """An SSLSocket that leaves the first TLS error it meets on its context."""

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except OSError as e:  # SSLError, or the connection reset mid-handshake
            _remember(self.context, e)
            raise

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        # TLS 1.3: a server refuses our certificate only after our side of the handshake is done
        try:
            return super().recv(buflen, flags)
        except ssl.SSLError as e:
            _remember(self.context, e)
            raise


def _remember(ctx: ssl.SSLContext, error: Exception) -> None:
    if isinstance(ctx, WitnessContext) and ctx.failure is None:
        ctx.failure = error


class WitnessContext(ssl.SSLContext):
    """An SSLContext whose sockets record the first TLS error in `failure` (one context per
    association, so that the error is that association's)."""

    failure: Exception | None = None
    handshake_timeout_s: float | None = None  # server side: bound a silent client's handshake

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        if not kwargs.get("server_side") or self.handshake_timeout_s is None:
            return super().wrap_socket(sock, *args, **kwargs)
        # pynetdicom handshakes in its accept loop: a client that never speaks must not stall it
        before = sock.gettimeout()
        sock.settimeout(self.handshake_timeout_s)
        wrapped = super().wrap_socket(sock, *args, **kwargs)
        wrapped.settimeout(before)
        return wrapped


def _base(purpose: int, tls: TlsSettings) -> WitnessContext:
    ctx = WitnessContext(purpose)
    ctx.sslsocket_class = _WitnessSocket
    ctx.minimum_version = MINIMUM_VERSION
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.set_ciphers(CIPHERS)
    return ctx


def client_tls_context(tls: TlsSettings) -> WitnessContext:
    """For an association we open: TLS 1.2 or later, the peer's certificate verified against
    `ca_file` (the system's CAs without one), our certificate presented when configured."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT, tls)
    ctx.check_hostname = tls.check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if tls.ca_file is not None:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if tls.cert_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    return ctx


def server_tls_context(tls: TlsSettings, handshake_timeout_s: float = 10.0) -> WitnessContext:
    """For our own SCP: our certificate and key (required); with `ca_file`, mutual TLS: every
    client must present a certificate issued by that CA."""
    if tls.cert_file is None:
        raise ValueError("a TLS server needs cert_file (and key_file)")
    ctx = _base(ssl.PROTOCOL_TLS_SERVER, tls)
    ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    if tls.ca_file is not None:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.handshake_timeout_s = handshake_timeout_s
    return ctx


def tls_verdict(error: BaseException, where: str, tls: TlsSettings | None = None) -> Verdict:
    """What a TLS failure with the peer `where` means: a refusal (certificate, protocol
    version) is permanent until a person changes a certificate or the config; a connection
    lost during the handshake is worth a retry."""
    if isinstance(error, ssl.SSLError) and not isinstance(error, ssl.SSLEOFError):
        return Verdict(Outcome.FAIL, describe(error, where, tls))
    return Verdict(Outcome.RETRY, describe(error, where, tls))


def describe(error: BaseException, where: str, tls: TlsSettings | None = None) -> str:
    """Plain words for a TLS failure with the peer `where`."""
    ca = f" ({tls.ca_file})" if tls is not None and tls.ca_file is not None else ""
    if isinstance(error, ssl.SSLCertVerificationError):
        code = error.verify_code
        detail = error.verify_message
        if code == _EXPIRED:
            return f"TLS: the certificate of {where} has expired ({detail})"
        if code == _NOT_YET_VALID:
            return f"TLS: the certificate of {where} is not valid yet ({detail})"
        if code in (_HOSTNAME_MISMATCH, _IP_MISMATCH):
            return f"TLS: the certificate of {where} does not name that host ({detail})"
        if code in _UNTRUSTED:
            return (
                f"TLS: the certificate of {where} is not trusted: it was not issued by our CA"
                f"{ca} ({detail})"
            )
        return f"TLS: the certificate of {where} was refused ({detail})"
    reason = getattr(error, "reason", None)
    if reason in _OLD_PROTOCOL:
        return (
            f"TLS: {where} does not offer TLS 1.2 or later (an older protocol version, or no "
            f"TLS at all), refused by the BCP 195 profile ({reason})"
        )
    if reason in _OUR_CERT_REFUSED:
        return f"TLS: {where} refused our certificate or its absence ({reason})"
    if not isinstance(error, ssl.SSLError) or isinstance(error, ssl.SSLEOFError):
        return (
            f"TLS: {where} closed the connection during the TLS handshake; is TLS enabled on "
            f"that port? ({error})"
        )
    return f"TLS: handshake with {where} failed ({error})"


def tls_failure(ctx: ssl.SSLContext | None) -> Exception | None:
    """The TLS error that a socket of `ctx` met, if any."""
    return ctx.failure if isinstance(ctx, WitnessContext) else None
