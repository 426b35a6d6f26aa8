"""The agent's own SCP against DCMTK's echoscu: who may call it (calling AE title, host), our
called AE title required, the association limit, and TLS (mutual with a CA; TLS 1.1 refused)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from pynetdicom import AE

from agent.config import TlsSettings
from agent.net.commitment import ReportBook
from agent.net.scp import (
    CALLED_AE_NOT_RECOGNISED,
    CALLING_AE_NOT_RECOGNISED,
    VERIFICATION,
    AgentScp,
    AllowedPeer,
    ScpSettings,
    admit,
)
from tests.certs import Pki, make_pki
from tests.peers import require

OURS = "CT_AGENT"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def scp_for() -> Iterator[list[AgentScp]]:
    """Started SCPs, stopped at the end of the test."""
    started: list[AgentScp] = []
    yield started
    for scp in started:
        scp.stop()


def start(
    started: list[AgentScp], *peers: AllowedPeer, tls: TlsSettings | None = None, most: int = 4
) -> AgentScp:
    settings = ScpSettings(OURS, 0, peers, host="127.0.0.1", tls=tls, max_associations=most)
    scp = AgentScp(settings, ReportBook()).start()
    started.append(scp)
    return scp


def echoscu(port: int, calling: str, called: str = OURS, tls: Sequence[str] = ()) -> bool:
    """DCMTK's C-ECHO; whether it succeeded."""
    (binary,) = require("echoscu")
    done = subprocess.run(
        [binary, "-aet", calling, "-aec", called, "-to", "10", *tls, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    return done.returncode == 0


def test_a_known_calling_ae_title_is_accepted(scp_for: list[AgentScp]) -> None:
    scp = start(scp_for, AllowedPeer("PACS"))
    assert echoscu(scp.port, "PACS")
    assert scp.rejected == 0


def test_an_unknown_calling_ae_title_is_rejected(scp_for: list[AgentScp]) -> None:
    scp = start(scp_for, AllowedPeer("PACS"))
    assert not echoscu(scp.port, "UNKNOWN")
    assert scp.rejected == 1


def test_a_wrong_called_ae_title_is_rejected(scp_for: list[AgentScp]) -> None:
    scp = start(scp_for, AllowedPeer("PACS"))
    assert not echoscu(scp.port, "PACS", called="SOMEONE_ELSE")
    assert scp.rejected == 1


def test_a_known_ae_title_from_another_host_is_rejected(scp_for: list[AgentScp]) -> None:
    elsewhere = start(scp_for, AllowedPeer("PACS", host="192.0.2.7"))  # TEST-NET-1
    assert not echoscu(elsewhere.port, "PACS")
    here = start(scp_for, AllowedPeer("PACS", host="127.0.0.1"))
    assert echoscu(here.port, "PACS")


def test_only_so_many_associations_at_once(scp_for: list[AgentScp]) -> None:
    scp = start(scp_for, AllowedPeer("PACS"), most=1)
    ae = AE(ae_title="PACS")
    ae.add_requested_context(VERIFICATION)
    held = ae.associate("127.0.0.1", scp.port, ae_title=OURS)
    try:
        assert held.is_established
        assert not echoscu(scp.port, "PACS")  # rejected-transient: local limit exceeded
    finally:
        held.release()
    assert echoscu(scp.port, "PACS")


def tls_args(pki: Pki, with_certificate: bool) -> list[str]:
    own = ["+tls", str(pki.client.key), str(pki.client.cert)] if with_certificate else ["+tla"]
    return [*own, "+cf", str(pki.ca), "-rc"]


def test_mutual_tls_with_dcmtk(scp_for: list[AgentScp], pki: Pki) -> None:
    tls = TlsSettings(ca_file=pki.ca, cert_file=pki.server.cert, key_file=pki.server.key)
    scp = start(scp_for, AllowedPeer("PACS"), tls=tls)
    assert echoscu(scp.port, "PACS", tls=tls_args(pki, with_certificate=True))
    assert not echoscu(scp.port, "PACS", tls=tls_args(pki, with_certificate=False))
    assert not echoscu(scp.port, "PACS")  # no TLS at all
    assert echoscu(scp.port, "PACS", tls=tls_args(pki, with_certificate=True))  # still serving


def test_our_scp_refuses_tls_1_1(scp_for: list[AgentScp], pki: Pki, tmp_path: Path) -> None:
    (openssl,) = require("openssl")
    tls = TlsSettings(cert_file=pki.server.cert, key_file=pki.server.key)
    scp = start(scp_for, AllowedPeer("PACS"), tls=tls)
    old = subprocess.run(
        [
            openssl,
            "s_client",
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
            "-connect",
            f"127.0.0.1:{scp.port}",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    assert old.returncode != 0
    # the server, not only the client, refused: the same client at TLS 1.2 gets through
    good = subprocess.run(
        [
            openssl,
            "s_client",
            "-tls1_2",
            "-CAfile",
            str(pki.ca),
            "-connect",
            f"127.0.0.1:{scp.port}",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    assert b"Verify return code: 0 (ok)" in good.stdout
    assert echoscu(scp.port, "PACS", tls=["+tla", "+cf", str(pki.ca), "-rc"])


def test_admit_decides_from_titles_and_hosts() -> None:
    allowed: dict[str, frozenset[str] | None] = {"PACS": None, "VNA": frozenset({"10.0.0.5"})}
    assert admit("PACS", OURS, "10.9.9.9", OURS, allowed) is None
    assert admit("PACS  ", OURS + " ", "10.9.9.9", OURS, allowed) is None  # padding is no name
    assert admit("VNA", OURS, "10.0.0.5", OURS, allowed) is None
    assert admit("VNA", OURS, "10.0.0.6", OURS, allowed) == (
        CALLING_AE_NOT_RECOGNISED,
        "'VNA' may not call from 10.0.0.6",
    )
    rejected = admit("X" * 16, OURS, "10.9.9.9", OURS, allowed)
    assert rejected is not None and rejected[0] == CALLING_AE_NOT_RECOGNISED
    rejected = admit("PACS", "OTHER", "10.9.9.9", OURS, allowed)
    assert rejected is not None and rejected[0] == CALLED_AE_NOT_RECOGNISED
