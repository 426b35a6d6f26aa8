"""TLS (PS3.15 BCP 195) on the sending path, against real peers: DCMTK `storescp +tls` with
certificates the tests make (tests/certs.py), and `openssl s_server` offering TLS 1.1 only.
Success with the right CA and with mutual TLS; refusal, with a message that says what was
wrong, for a wrong CA, an expired server certificate, a missing client certificate and a
TLS 1.1-only peer."""

from __future__ import annotations

import contextlib
import ssl
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from agent.config import Destination, TlsSettings
from agent.dicom import files
from agent.net.outcome import Outcome
from agent.net.sender import Outgoing, SendResult, send_batch
from agent.net.tls import MINIMUM_VERSION, client_tls_context, server_tls_context
from tests import factory
from tests.certs import Pair, Pki, make_pki
from tests.peers import CT_IMAGE_STORAGE, archived, free_port, require, storescp, wait_port

EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_storescp_args(server: Pair, client_ca: Path | None = None) -> list[str]:
    """storescp's TLS options: our server pair; with `client_ca`, mutual TLS."""
    args = ["+tls", str(server.key), str(server.cert), "-pw"]
    if client_ca is None:
        return [*args, "-ic"]  # storescp requires a client certificate by default
    return [*args, "+cf", str(client_ca), "-rc"]


def destination(port: int, tls: TlsSettings) -> Destination:
    return Destination(
        ae_title="ARCHIVE",
        host="127.0.0.1",
        port=port,
        tls=tls,
        name="PACS",
        transfer_syntaxes=(EXPLICIT,),
        connect_timeout_s=5,
        acse_timeout_s=5,
        dimse_timeout_s=5,
    )


_FILES = tempfile.TemporaryDirectory(prefix="outgoing-")  # removed when the tests end


def outgoing(images: Sequence[Dataset]) -> list[Outgoing]:
    """What the sender takes, for images not in a spool: Part 10 files (Explicit VR LE)."""
    out = []
    for ds in images:
        path = Path(_FILES.name) / f"{ds.SOPInstanceUID}.dcm"
        path.write_bytes(files.encode(ds))
        out.append(
            Outgoing(str(ds.SOPInstanceUID), CT_IMAGE_STORAGE, EXPLICIT, partial(Path, path))
        )
    return out


def send(port: int, tls: TlsSettings, count: int = 2) -> list[SendResult]:
    """Real CT images from the mock scanner through the real sender."""
    return send_batch("CT_TEST", destination(port, tls), outgoing(factory.ct_images(count)))


def refusal(results: Sequence[SendResult]) -> str:
    """The one reason every instance failed with; the refusal is permanent and not the
    instance's fault."""
    assert {r.verdict.outcome for r in results} == {Outcome.FAIL}
    assert all(r.association_level for r in results)
    (reason,) = {r.verdict.reason for r in results}
    return reason


def test_the_right_ca_delivers_real_images(pki: Pki, tmp_path: Path) -> None:
    with storescp(tmp_path / "archive", extra=tls_storescp_args(pki.server)) as port:
        results = send(port, pki.client_tls(), 3)
    assert [r.verdict.outcome for r in results] == [Outcome.OK] * 3
    assert {str(ds.SOPInstanceUID) for ds in archived(tmp_path / "archive")} == {
        r.sop_instance_uid for r in results
    }


def test_mutual_tls_delivers_real_images(pki: Pki, tmp_path: Path) -> None:
    args = tls_storescp_args(pki.server, client_ca=pki.ca)
    with storescp(tmp_path / "archive", extra=args) as port:
        results = send(port, pki.client_tls(mutual=True))
    assert [r.verdict.outcome for r in results] == [Outcome.OK] * 2
    assert len(archived(tmp_path / "archive")) == 2


def test_mutual_tls_without_our_certificate_is_refused(pki: Pki, tmp_path: Path) -> None:
    args = tls_storescp_args(pki.server, client_ca=pki.ca)
    with storescp(tmp_path / "archive", extra=args) as port:
        reason = refusal(send(port, pki.client_tls(mutual=False)))
    assert "refused our certificate" in reason
    assert archived(tmp_path / "archive") == []


def test_a_wrong_ca_is_refused_as_untrusted(pki: Pki, tmp_path: Path) -> None:
    with storescp(tmp_path / "archive", extra=tls_storescp_args(pki.server)) as port:
        reason = refusal(send(port, pki.client_tls(ca=pki.other_ca)))
    assert "is not trusted" in reason and str(pki.other_ca) in reason
    assert f"127.0.0.1:{port}" in reason
    assert archived(tmp_path / "archive") == []


def test_a_server_certificate_from_another_ca_is_refused(pki: Pki, tmp_path: Path) -> None:
    with storescp(tmp_path / "archive", extra=tls_storescp_args(pki.other_server)) as port:
        reason = refusal(send(port, pki.client_tls()))
    assert "is not trusted" in reason


def test_an_expired_server_certificate_is_refused(pki: Pki, tmp_path: Path) -> None:
    with storescp(tmp_path / "archive", extra=tls_storescp_args(pki.expired_server)) as port:
        reason = refusal(send(port, pki.client_tls()))
    assert "has expired" in reason
    assert archived(tmp_path / "archive") == []


@contextlib.contextmanager
def tls11_only_server(server: Pair, log: Path) -> Iterator[int]:
    """`openssl s_server` offering TLS 1.1 and nothing else (no storescp profile can, with
    OpenSSL 3); it never gets as far as DICOM."""
    (openssl,) = require("openssl")
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                openssl,
                "s_server",
                "-tls1_1",
                "-cipher",
                "DEFAULT@SECLEVEL=0",
                "-key",
                str(server.key),
                "-cert",
                str(server.cert),
                "-accept",
                f"127.0.0.1:{port}",
                "-www",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_port(port, proc)
            yield port
        finally:
            proc.terminate()
            proc.wait(10)


def test_a_tls11_only_peer_is_refused(pki: Pki, tmp_path: Path) -> None:
    with tls11_only_server(pki.server, tmp_path / "s_server.log") as port:
        reason = refusal(send(port, pki.client_tls()))
    assert "does not offer TLS 1.2 or later" in reason


def test_a_peer_without_tls_is_refused(pki: Pki, tmp_path: Path) -> None:
    with storescp(tmp_path / "archive") as port:
        results = send(port, pki.client_tls())
    # the peer cut the handshake short: it may be a passing fault, so worth a retry
    assert {r.verdict.outcome for r in results} == {Outcome.RETRY}
    assert all("is TLS enabled on that port" in r.verdict.reason for r in results)
    assert archived(tmp_path / "archive") == []


def test_contexts_are_bcp195(pki: Pki) -> None:
    client = client_tls_context(pki.client_tls(mutual=True))
    assert client.minimum_version == MINIMUM_VERSION == ssl.TLSVersion.TLSv1_2
    assert client.verify_mode == ssl.CERT_REQUIRED and not client.check_hostname
    server = server_tls_context(TlsSettings(pki.ca, pki.server.cert, pki.server.key))
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == ssl.CERT_REQUIRED  # a CA given: mutual TLS
    one_way = server_tls_context(TlsSettings(None, pki.server.cert, pki.server.key))
    assert one_way.verify_mode == ssl.CERT_NONE
    with pytest.raises(ValueError, match="cert_file"):
        server_tls_context(TlsSettings(pki.ca))


def test_the_host_name_is_checked_when_configured(pki: Pki, tmp_path: Path) -> None:
    """The server certificate names 127.0.0.1 in its subjectAltName."""
    with storescp(tmp_path / "archive", extra=tls_storescp_args(pki.server)) as port:
        checked = TlsSettings(ca_file=pki.ca, check_hostname=True)
        assert [r.verdict.outcome for r in send(port, checked, 1)] == [Outcome.OK]
