"""The Conformance Statement (docs/conformance-statement.md) against the code: the file is what
the generator makes now, and its presentation-context tables are what goes on the wire (a
pynetdicom SCP records every context the agent's real code proposes) and what our own SCP
accepts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import CTImageStorage, XRayRadiationDoseSRStorage
from pynetdicom import AE, evt
from pynetdicom.pdu_primitives import SCP_SCU_RoleSelectionNegotiation
from pynetdicom.presentation import build_context

from agent import conformance
from agent.config import Destination, Peer, WorklistSettings
from agent.dicom import codecs
from agent.dicom.uids import UidFactory
from agent.docs_output import project_file
from agent.net.commitment import InstanceRef, ReportBook, new_request, request_commitment
from agent.net.echo import VERIFICATION, echo
from agent.net.scp import AgentScp, AllowedPeer, ScpSettings
from agent.net.sender import Outgoing, send_batch
from agent.worklist import query
from agent.worklist.client import find
from tests.loopback_scp import LoopbackScp
from tests.peers import storescp

STATEMENT = project_file(conformance.DOCUMENT)
Proposed = list[tuple[str, tuple[str, ...]]]


class RecordingScp(LoopbackScp):
    """Accepts Verification only; records the contexts of every association request."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Proposed] = []
        self._lock = threading.Lock()

    def contexts(self) -> list[tuple[str, list[str] | None]]:
        return [(VERIFICATION, None)]

    def handlers(self) -> list[evt.EventHandlerType]:
        return [(evt.EVT_REQUESTED, self._on_requested)]

    def _on_requested(self, event: evt.Event) -> None:
        proposed = [
            (str(cx.abstract_syntax), tuple(str(ts) for ts in cx.transfer_syntax))
            for cx in event.assoc.requestor.requested_contexts
        ]
        with self._lock:
            self.requests.append(proposed)

    def last(self) -> Proposed:
        with self._lock:
            assert self.requests, "no association request reached the SCP"
            return self.requests[-1]


@pytest.fixture
def scp() -> Iterator[RecordingScp]:
    with RecordingScp() as s:
        yield s


def table(heading: str) -> Proposed:
    return conformance.parse_context_table(STATEMENT.read_text(encoding="utf-8"), heading)


def test_statement_is_generated_from_the_code() -> None:
    assert STATEMENT.read_text(encoding="utf-8") == conformance.render(), (
        "docs/conformance-statement.md differs from the code: "
        "run `modality-agent conformance --write` and review the diff"
    )


def test_the_storage_contexts_on_the_wire_are_the_statements(scp: RecordingScp) -> None:
    documented = table("Proposed presentation contexts, storage:")
    order = list(dict.fromkeys(ts for _, (ts,) in documented))  # the statement's order
    dest = Destination(
        ae_title=scp.ae_title,
        host="127.0.0.1",
        port=scp.port,
        name="PACS",
        transfer_syntaxes=tuple(order),
    )
    batch = [
        Outgoing(f"2.25.{i}", sop, "1.2.840.10008.1.2.1", lambda: Path("/nonexistent"))
        for i, sop in enumerate((CTImageStorage, XRayRadiationDoseSRStorage, CTImageStorage))
    ]
    results = send_batch("CT_CONSOLE1", dest, batch)
    assert all(r.association_level or r.verdict.outcome.value == "fail" for r in results)
    producible = [(sop, ts) for sop, ts in documented if codecs.is_available(ts[0])]
    assert scp.last() == producible  # a syntax without its codec here is not proposed


def test_a_destination_proposes_its_own_subset_in_its_order(scp: RecordingScp) -> None:
    wanted = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.4.80")
    dest = Destination(
        ae_title=scp.ae_title,
        host="127.0.0.1",
        port=scp.port,
        name="PACS",
        transfer_syntaxes=wanted,
    )
    send_batch(
        "CT_CONSOLE1",
        dest,
        [Outgoing("2.25.1", CTImageStorage, wanted[0], lambda: Path("/nonexistent"))],
    )
    documented = {ts for sop, (ts,) in table("Proposed presentation contexts, storage:")}
    assert scp.last() == [(str(CTImageStorage), (ts,)) for ts in wanted]
    assert set(wanted) <= documented


def test_verification_worklist_and_commitment_contexts_on_the_wire(scp: RecordingScp) -> None:
    documented = dict(table("##### Verify, query the worklist"))
    peer = Peer(ae_title=scp.ae_title, host="127.0.0.1", port=scp.port)

    assert echo("CT_CONSOLE1", peer).ok
    assert scp.last() == [(VERIFICATION, documented[VERIFICATION])]

    settings = WorklistSettings(ae_title=scp.ae_title, host="127.0.0.1", port=scp.port)
    find("CT_CONSOLE1", settings, query.identifier(settings, query.Filter(), date.today()))
    ((sop, syntaxes),) = scp.last()
    assert documented[sop] == syntaxes

    request = new_request(
        "PACS", scp.ae_title, [InstanceRef(str(CTImageStorage), "2.25.7")], UidFactory(), 60
    )
    request_commitment("CT_CONSOLE1", peer, request, ReportBook())
    ((sop, syntaxes),) = scp.last()
    assert documented[sop] == syntaxes


def test_mpps_context_is_the_statements() -> None:
    from agent.mpps.sender import MPPS_SOP_CLASS, MPPS_SYNTAXES

    documented = dict(table("##### Verify, query the worklist"))
    assert documented[MPPS_SOP_CLASS] == tuple(MPPS_SYNTAXES)


def test_our_scp_accepts_what_the_statement_says(tmp_path: Path) -> None:
    documented = table("It accepts only:")
    every = list(dict.fromkeys([*codecs.available(), "1.2.840.10008.1.2.2"]))
    settings = ScpSettings("CT_CONSOLE1", 0, (AllowedPeer("ARCHIVE"),))
    with AgentScp(settings, ReportBook()) as ours:
        for sop, syntaxes in documented:
            ae = AE(ae_title="ARCHIVE")
            # the archive proposes each syntax on its own, taking the SCP role for commitment
            contexts = [build_context(sop, ts) for ts in every]
            roles: list[Any] = [] if sop == VERIFICATION else [_role(sop)]
            assoc = ae.associate(
                "127.0.0.1", ours.port, contexts, ae_title="CT_CONSOLE1", ext_neg=roles
            )
            assert assoc.is_established
            accepted = {cx.transfer_syntax[0] for cx in assoc.accepted_contexts}
            assoc.release()
            assert accepted == set(syntaxes), sop


def _role(sop: str) -> SCP_SCU_RoleSelectionNegotiation:
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = sop
    role.scu_role = False
    role.scp_role = True
    return role


def test_the_template_and_the_generated_parts_match() -> None:
    text = conformance.render()
    assert "{{" not in text
    for heading in ("## 5. Media Interchange", "## 6. Support of Character Sets", "TLS 1.2"):
        assert heading in text


# DCMTK's names (storescp -d) for the UIDs of the statement's storage table
DCMTK_NAMES = {
    "CTImageStorage": str(CTImageStorage),
    "XRayRadiationDoseSRStorage": str(XRayRadiationDoseSRStorage),
    "LittleEndianImplicit": "1.2.840.10008.1.2",
    "LittleEndianExplicit": "1.2.840.10008.1.2.1",
    "DeflatedLittleEndianExplicit": "1.2.840.10008.1.2.1.99",
    "JPEGLSLossless": "1.2.840.10008.1.2.4.80",
    "JPEG2000LosslessOnly": "1.2.840.10008.1.2.4.90",
    "RLELossless": "1.2.840.10008.1.2.5",
    "JPEGLossless:Non-hierarchical-1stOrderPrediction": "1.2.840.10008.1.2.4.70",
}


def dcmtk_request(log: str) -> tuple[Proposed, dict[str, str]]:
    """The contexts and the header lines of the last A-ASSOCIATE-RQ in a `storescp -d` log."""
    block = log.rsplit("BEGIN A-ASSOCIATE-RQ", 1)[1].split("END A-ASSOCIATE-RQ", 1)[0]
    block = block.split("\n", 1)[1].rsplit("\n", 1)[0]  # without the ==== rules
    proposed: Proposed = []
    header: dict[str, str] = {}
    for raw in block.splitlines():
        line = raw.removeprefix("D:").strip()
        if line.startswith("Abstract Syntax: ="):
            proposed.append((DCMTK_NAMES[line.split("=", 1)[1]], ()))
        elif line.startswith("=") and proposed:
            sop, syntaxes = proposed[-1]
            proposed[-1] = (sop, (*syntaxes, DCMTK_NAMES[line[1:]]))
        elif ":" in line and not proposed:
            key, _, value = line.partition(":")
            header[key.strip()] = value.strip()
    return proposed, header


def test_dcmtk_storescp_sees_the_statements_contexts_and_identity(tmp_path: Path) -> None:
    documented = table("Proposed presentation contexts, storage:")
    order = tuple(dict.fromkeys(ts for _, (ts,) in documented))
    with storescp(tmp_path / "archive", extra=["-d"]) as port:
        dest = Destination(
            ae_title="ARCHIVE", host="127.0.0.1", port=port, name="PACS", transfer_syntaxes=order
        )
        batch = [
            Outgoing(f"2.25.{i}", sop, "1.2.840.10008.1.2.1", lambda: tmp_path / "absent.dcm")
            for i, sop in enumerate((CTImageStorage, XRayRadiationDoseSRStorage))
        ]
        send_batch("CT_CONSOLE1", dest, batch)
    log = (tmp_path / f"storescp-{port}.log").read_text(errors="replace")
    proposed, header = dcmtk_request(log)
    # storescp -d shows each context with its one syntax, as the statement says
    expected = [(sop, ts) for sop, ts in documented if codecs.is_available(ts[0])]
    assert proposed == expected
    policies = STATEMENT.read_text(encoding="utf-8")
    assert (
        f"| Implementation Class UID (association) | {header['Their Implementation Class UID']}"
        in policies
    )
    version = header["Their Implementation Version Name"]
    assert f"| Implementation Version Name (association) | {version} |" in policies
    assert f"(default {header['Their Max PDU Receive Size']})" in policies
