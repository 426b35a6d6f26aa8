"""Our storage association (agent/net/store_scu.py) on the wire: fragmentation checked byte for
byte by DCMTK storescp and pynetdicom, the File Meta checks, and, against a raw-socket acceptor
(tests/raw_peer.py), the protocol faults, negotiations and releases no real peer can be made to
produce on demand. Whatever goes wrong, an association-level fault is retried, our A-ABORT goes
out where PS3.8 wants it, the sending thread comes back, and nothing accepted is lost."""

from __future__ import annotations

import dataclasses
import re
import select
import socket
import struct
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import TypeVar, cast

import numpy as np
import pydicom
import pytest
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import A_ASSOCIATE_RJ

from agent.config import Destination, TlsSettings
from agent.delivery import DestinationSender, outgoing
from agent.dicom import files
from agent.net import sender, staging
from agent.net.association import describe_rejection, where_of
from agent.net.contexts import proposed_contexts
from agent.net.outcome import Outcome, Verdict, store_verdict
from agent.net.pacing import Pace
from agent.net.retry import Backoff
from agent.net.sender import Link, Outgoing, SendResult, send_batch
from agent.net.staging import transcode_file
from agent.net.store_scu import (
    AcceptedContext,
    StoreAssociation,
    open_store_association,
    read_file_meta,
)
from agent.spool import DeliveryState, Spool, SpooledInstance
from tests import factory
from tests.loopback_scp import LoopbackScp
from tests.peers import CT_IMAGE_STORAGE, storescp
from tests.raw_peer import (
    ABORT_PDU,
    C_ECHO_RSP,
    P_DATA,
    RELEASE_RP_PDU,
    RELEASE_RQ_PDU,
    Connection,
    RawPeer,
    associate_rj,
    pdu,
    store_rsp,
)

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
RLE = "1.2.840.10008.1.2.5"
JPEG_LS = "1.2.840.10008.1.2.4.80"
TIMEOUT_S = 1.0  # ACSE and DIMSE timeouts of the raw-peer tests
STUCK_S = 60.0  # a sending thread not back by then is stuck

T = TypeVar("T")
PENDING, DELIVERED = DeliveryState.PENDING, DeliveryState.DELIVERED


def destination(
    port: int, syntaxes: tuple[str, ...] = (EXPLICIT,), *, timeout: float = 5
) -> Destination:
    return Destination(
        ae_title="ARCHIVE",
        host="127.0.0.1",
        port=port,
        name="PACS",
        transfer_syntaxes=syntaxes,
        default=True,
        connect_timeout_s=5,
        acse_timeout_s=timeout,
        dimse_timeout_s=timeout,
    )


def data_set_of(path: Path) -> bytes:
    """The bytes after the File Meta Information, located by pydicom (not by store_scu)."""
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    return path.read_bytes()[144 + int(meta.FileMetaInformationGroupLength) :]


def in_time(work: Callable[[], T]) -> T:
    """`work()` on a thread of its own, which must come back: the sender is never stuck."""
    out: list[T] = []
    thread = threading.Thread(target=lambda: out.append(work()), daemon=True)
    thread.start()
    thread.join(STUCK_S)
    assert not thread.is_alive(), "the sending thread is stuck"
    assert out, "the sending thread raised"
    return out[0]


# -- 1. fragmentation, checked byte for byte by real peers


@pytest.mark.parametrize("max_pdu", [4096, 131072])
@pytest.mark.parametrize("ts", [EXPLICIT, JPEG_LS], ids=["explicit", "jpeg-ls"])
def test_storescp_receives_every_data_set_byte_for_byte(
    ts: str, max_pdu: int, tmp_path: Path
) -> None:
    """storescp -pdu takes PDUs no longer than `max_pdu`, and +B writes the data set exactly as
    it came; JPEG-LS goes out as the staged (transcoded) file."""
    images = factory.ct_images(2)
    spool, accepted = factory.spooled(tmp_path / "spool", images)
    extra = ["-pdu", str(max_pdu), "+B"]
    with storescp(tmp_path / "archive", syntaxes=[ts], extra=extra) as port:
        batch = [outgoing(spool, i) for i in accepted]
        results = in_time(lambda: send_batch("CT_TEST", destination(port, (ts,)), batch))
    assert [r.verdict.outcome for r in results] == [Outcome.OK] * 2
    assert [r.transfer_syntax_uid for r in results] == [ts] * 2
    received = {
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f
        for f in (tmp_path / "archive").iterdir()
    }
    assert set(received) == {i.sop_instance_uid for i in accepted}
    originals = {str(ds.SOPInstanceUID): ds.pixel_array for ds in images}
    for inst in accepted:
        sent = spool.verified_path(inst)
        if ts != inst.record.transfer_syntax_uid:
            sent = tmp_path / f"{inst.sop_instance_uid}.staged.dcm"
            transcode_file(str(spool.verified_path(inst)), ts, str(sent))
        got = received[inst.sop_instance_uid]
        assert data_set_of(got) == data_set_of(sent)
        out = pydicom.dcmread(got)
        assert out.file_meta.TransferSyntaxUID == ts
        assert np.array_equal(out.pixel_array, originals[inst.sop_instance_uid])


class UnlimitedSCP(LoopbackScp):
    """pynetdicom with maximum_pdu_size 0: "no limit" in its A-ASSOCIATE-AC (PS3.8 D.1); it
    keeps each data set as it arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.data_sets: dict[str, bytes] = {}

    def start(self, port: int = 0) -> UnlimitedSCP:
        super().start(port)
        assert self._ae is not None
        self._ae.maximum_pdu_size = 0  # read as each association is accepted
        return self

    def contexts(self) -> list[tuple[str, list[str] | None]]:
        return [(CT_IMAGE_STORAGE, [EXPLICIT])]

    def handlers(self) -> list[evt.EventHandlerType]:
        return [(evt.EVT_C_STORE, self._keep)]

    def _keep(self, event: evt.Event) -> int:
        request = event.request
        assert isinstance(request, C_STORE) and request.DataSet is not None
        self.data_sets[str(request.AffectedSOPInstanceUID)] = request.DataSet.getvalue()
        return 0x0000


def test_a_peer_setting_no_maximum_length_gets_each_data_set_whole(tmp_path: Path) -> None:
    spool, accepted = factory.spooled(tmp_path / "spool", factory.ct_images(2))
    with UnlimitedSCP() as scp:
        batch = [outgoing(spool, i) for i in accepted]
        results = in_time(lambda: send_batch("CT_TEST", destination(scp.port), batch))
    assert [r.verdict.outcome for r in results] == [Outcome.OK] * 2
    for inst in accepted:
        assert scp.data_sets[inst.sop_instance_uid] == data_set_of(spool.verified_path(inst))


@pytest.mark.parametrize("max_pdu", [128, 4096])
def test_no_pdu_is_longer_than_the_peer_takes_not_even_the_command(
    max_pdu: int, tmp_path: Path
) -> None:
    """PS3.8 9.3.5: every P-DATA-TF PDU, the command's included (about 180 bytes here), fits
    the acceptor's maximum length; the message arrives whole."""
    messages = []

    def script(conn: Connection) -> None:
        conn.accept(max_pdu=max_pdu)
        messages.extend(conn.serve())

    images = factory.ct_images(1)
    path = tmp_path / "ct.dcm"
    path.write_bytes(files.encode(images[0]))
    with RawPeer(script) as peer:
        assoc, verdict = open_store_association(
            "CT_TEST",
            destination(peer.port),
            proposed_contexts([CT_IMAGE_STORAGE], [EXPLICIT]),
            16384,
        )
        assert assoc is not None, verdict
        (context,) = assoc.accepted_contexts
        assert in_time(lambda: assoc.store(path, context, str(images[0].SOPInstanceUID))) == 0
        assoc.release()
        peer.finished()
    (message,) = messages
    assert max(message.pdu_lengths) <= max_pdu
    assert message.data_set == data_set_of(path)
    assert message.command.AffectedSOPInstanceUID == images[0].SOPInstanceUID


# -- 2. the File Meta Information of the file to send


def _with_group_length(part10: bytes, extra: bytes) -> bytes:
    """`part10` with `extra` appended to its File Meta, the group length grown to match."""
    (length,) = struct.unpack_from("<I", part10, 140)
    end = 144 + length
    head = part10[:140] + struct.pack("<I", length + len(extra))
    return head + part10[144:end] + extra + part10[end:]


def _not_part10(good: bytes) -> bytes:
    return good[132 + 12 :]  # no preamble, no DICM


def _no_group_length(good: bytes) -> bytes:
    return good[:132] + good[144:]


def _cut_short(good: bytes) -> bytes:
    (length,) = struct.unpack_from("<I", good, 140)
    return good[: 144 + length - 10]


def _long_vr_header_cut(good: bytes) -> bytes:
    # (0002,0102) OB whose 4-byte length the group length leaves out
    return _with_group_length(good, struct.pack("<HH2sH", 2, 0x0102, b"OB", 0) + b"\0\0")


def _another_syntax(good: bytes) -> bytes:
    explicit = EXPLICIT.encode() + b"\0"
    assert good.count(explicit) == 1
    return good.replace(explicit, RLE.encode() + b"\0")


MALFORMED = {
    "not-part-10": (_not_part10, "not a DICOM Part 10 file"),
    "no-group-length": (_no_group_length, "no group length (0002,0000)"),
    "cut-short": (_cut_short, "cut short"),
    "long-vr-header-cut": (_long_vr_header_cut, "malformed"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_read_file_meta_says_what_is_wrong(name: str, tmp_path: Path) -> None:
    spoil, words = MALFORMED[name]
    path = tmp_path / "bad.dcm"
    path.write_bytes(spoil(files.encode(factory.ct_images(1)[0])))
    with path.open("rb") as f, pytest.raises(ValueError, match=re.escape(words)):
        read_file_meta(f)


def test_read_file_meta_finds_the_data_set_and_names(tmp_path: Path) -> None:
    (ds,) = factory.ct_images(1)
    path = tmp_path / "ct.dcm"
    path.write_bytes(files.encode(ds))
    with path.open("rb") as f:
        stored = read_file_meta(f)
    assert path.read_bytes()[stored.data_set_offset :] == data_set_of(path)
    assert stored.transfer_syntax_uid == EXPLICIT
    assert stored.sop_class_uid == CT_IMAGE_STORAGE
    assert stored.sop_instance_uid == ds.SOPInstanceUID


@pytest.mark.parametrize("name", [*MALFORMED, "another-syntax"])
def test_an_unsendable_file_fails_alone_and_the_batch_goes_on(name: str, tmp_path: Path) -> None:
    """The bad instance FAILS with "cannot send: ..." before anything of it goes out, and the
    next instance of the batch goes over the same association."""
    spoil, words = MALFORMED.get(name, (_another_syntax, f"the file is in {RLE}"))
    images = factory.ct_images(2)
    spool, accepted = factory.spooled(tmp_path / "spool", images)
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(spoil(spool.verified_path(accepted[0]).read_bytes()))
    rec = accepted[0].record
    batch = [
        Outgoing(rec.sop_instance_uid, rec.sop_class_uid, EXPLICIT, lambda: bad),
        outgoing(spool, accepted[1]),
    ]
    with storescp(tmp_path / "archive", syntaxes=[EXPLICIT]) as port:
        link = Link("CT_TEST", destination(port))
        try:
            results = in_time(lambda: link.send(batch))
        finally:
            link.close()
            link.staging.clear()
    assert results[0].verdict.outcome is Outcome.FAIL
    assert not results[0].association_level
    assert results[0].verdict.reason.startswith("cannot send: ")
    assert words in results[0].verdict.reason
    assert results[1].verdict.outcome is Outcome.OK
    assert link.opened == 1
    (stored,) = [p for p in (tmp_path / "archive").iterdir() if p.is_file()]
    assert pydicom.dcmread(stored).SOPInstanceUID == accepted[1].sop_instance_uid


# -- 3. protocol faults no real peer can be told to produce


def sender_for(
    port: int, spool: Spool, *, batch_size: int = 100
) -> tuple[DestinationSender, list[SendResult]]:
    results: list[SendResult] = []
    dest = dataclasses.replace(destination(port, timeout=TIMEOUT_S), batch_size=batch_size)
    sender = DestinationSender("CT_TEST", dest, spool, Backoff(5, 60), results.append)
    return sender, results


def states(spool: Spool, accepted: list[SpooledInstance]) -> list[DeliveryState]:
    return [
        next(d.state for d in spool.deliveries(i.sop_instance_uid) if d.destination == "PACS")
        for i in accepted
    ]


def first_then(fault: Callable[[Connection], None]) -> Callable[[Connection], None]:
    """Accept, answer the first C-STORE with success, then `fault` on the second."""

    def script(conn: Connection) -> None:
        conn.accept()
        first = conn.read_message()
        conn.send_command(first.pdvs[0][0], store_rsp(first.command, 0x0000))
        fault(conn)

    return script


def _answer(conn: Connection, **changes: object) -> None:
    message = conn.read_message()
    conn.send_command(message.pdvs[0][0], store_rsp(message.command, 0x0000, **changes))


def wrong_message_id(conn: Connection) -> None:
    message = conn.read_message()
    rsp = store_rsp(
        message.command, 0x0000, MessageIDBeingRespondedTo=message.command.MessageID + 1
    )
    conn.send_command(message.pdvs[0][0], rsp)


def cut_command(conn: Connection) -> None:
    """A C-STORE-RSP whose last element, the status, announces 2 bytes and has one."""
    message = conn.read_message()
    rsp = store_rsp(message.command, 0x0000)
    conn.send_command(message.pdvs[0][0], rsp[:-1])


def echo_response(conn: Connection) -> None:
    _answer(conn, CommandField=C_ECHO_RSP)


def data_set_announced(conn: Connection) -> None:
    _answer(conn, CommandDataSetType=0x0000)


def release_request(conn: Connection) -> None:
    conn.read_message()
    conn.send(RELEASE_RQ_PDU)


def abort_mid_data_set(conn: Connection) -> None:
    conn.read_message(data_set_pdus=1)
    conn.send(ABORT_PDU)


def close_mid_response(conn: Connection) -> None:
    message = conn.read_message()
    rsp = store_rsp(message.command, 0x0000)
    conn.send(pdu(P_DATA, rsp)[:9])
    conn.sock.shutdown(socket.SHUT_WR)


def huge_pdu(conn: Connection) -> None:
    conn.read_message()
    conn.send(struct.pack(">BBI", P_DATA, 0, 100 * 1024 * 1024))


def silence(conn: Connection) -> None:
    conn.read_message()


def trickle(conn: Connection) -> None:
    """A response one byte at a time, each well within the timeout, the whole far beyond it:
    the DIMSE timeout bounds the whole response, not each read."""
    conn.read_message()
    stop = threading.Event()  # never set: its wait paces the bytes
    for byte in pdu(P_DATA, bytes(100)):
        try:
            conn.send(bytes([byte]))
        except OSError:  # we gave up and closed
            return
        stop.wait(TIMEOUT_S / 4)


FAULTS = {
    # fault: (script, words of the second instance's verdict, whether we send an A-ABORT)
    "wrong-message-id": (wrong_message_id, "something else than our C-STORE", True),
    "echo-response": (echo_response, "something else than our C-STORE", True),
    "cut-command": (cut_command, "a command element longer than its command set", True),
    "data-set-announced": (data_set_announced, "a data set with a C-STORE response", True),
    "release-request": (release_request, "asked to release during an operation", True),
    "abort-mid-data-set": (abort_mid_data_set, "aborted the association", False),
    "close-mid-response": (close_mid_response, "closed the connection", True),
    "100-mb-pdu": (huge_pdu, "a PDU of 104857600 bytes", True),
    "silence": (silence, store_verdict(None).reason, True),
    "trickle": (trickle, store_verdict(None).reason, True),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_protocol_fault_is_retried_and_nothing_is_lost(fault: str, tmp_path: Path) -> None:
    script, words, we_abort = FAULTS[fault]
    spool, accepted = factory.spooled(tmp_path / "spool", factory.ct_images(3))
    with RawPeer(first_then(script)) as peer:
        sender, results = sender_for(peer.port, spool)
        assert in_time(sender.send_due) == 3
        (conn,) = peer.finished()
    assert states(spool, accepted) == [DELIVERED, PENDING, PENDING]
    assert [r.verdict.outcome for r in results] == [Outcome.OK, Outcome.RETRY, Outcome.RETRY]
    assert words in results[1].verdict.reason
    assert results[1].association_level and results[2].association_level
    assert "association lost" in results[2].verdict.reason
    # the destination backs off; every instance is still in the spool
    assert sender.status.hold_until is not None and sender.status.failures_in_a_row == 1
    assert all(spool.read(i) for i in accepted)
    assert conn.closed_by_requestor
    assert (ABORT_PDU in conn.after) is we_abort
    assert RELEASE_RQ_PDU not in conn.after


@pytest.mark.parametrize("split", ["two-pdvs", "two-pdus"])
def test_a_response_in_fragments_is_read_whole(split: str, tmp_path: Path) -> None:
    """A C-STORE-RSP command set in two PDVs (of one PDU or of two) is one response; its
    status, a warning here, is the one read."""

    def script(conn: Connection) -> None:
        conn.accept()
        conn.serve(lambda _m: 0xB000, split=2, per_pdu=split == "two-pdus")

    spool, accepted = factory.spooled(tmp_path / "spool", factory.ct_images(2))
    with RawPeer(script) as peer:
        sender, results = sender_for(peer.port, spool)
        assert in_time(sender.send_due) == 2
        sender.close()
        (conn,) = peer.finished()
    assert states(spool, accepted) == [DELIVERED, DELIVERED]
    assert [r.verdict.status for r in results] == [0xB000, 0xB000]
    assert conn.after == []  # released, answered


# -- 4. negotiation


def open_on(
    peer: RawPeer, syntaxes: tuple[str, ...] = (EXPLICIT,)
) -> tuple[StoreAssociation | None, Verdict | None]:
    contexts = proposed_contexts([CT_IMAGE_STORAGE], syntaxes)
    dest = destination(peer.port, syntaxes, timeout=TIMEOUT_S)
    return in_time(lambda: open_store_association("CT_TEST", dest, contexts, 16384))


def test_the_context_the_acceptor_took_carries_the_c_store(tmp_path: Path) -> None:
    """Proposed: 1 JPEG-LS, 3 Explicit VR, 5 Implicit VR; only 3 is accepted, so the C-STORE
    goes in Explicit VR on context 3, the file as spooled."""
    messages = []

    def script(conn: Connection) -> None:
        proposed = {
            cx.context_id: str(cx.transfer_syntax[0])
            for cx in conn.rq.presentation_context_definition_list
        }
        assert proposed == {1: JPEG_LS, 3: EXPLICIT, 5: IMPLICIT}
        conn.accept({1: None, 3: EXPLICIT, 5: None})
        messages.extend(conn.serve())

    spool, accepted = factory.spooled(tmp_path / "spool", factory.ct_images(1))
    with RawPeer(script) as peer:
        dest = destination(peer.port, (JPEG_LS, EXPLICIT, IMPLICIT))
        (result,) = in_time(lambda: send_batch("CT_TEST", dest, [outgoing(spool, accepted[0])]))
        peer.finished()
    assert result.verdict.outcome is Outcome.OK and result.transfer_syntax_uid == EXPLICIT
    (message,) = messages
    assert message.context_ids == {3}
    assert message.data_set == data_set_of(spool.verified_path(accepted[0]))


def test_a_context_we_never_proposed_is_ignored() -> None:
    """An AC naming context 7 (never proposed) in Explicit VR beside 3 in Implicit VR: only 3
    counts; an AC with only such contexts accepts nothing."""
    with RawPeer(lambda conn: conn.accept({1: None, 3: IMPLICIT, 7: EXPLICIT})) as peer:
        assoc, verdict = open_on(peer, (EXPLICIT, IMPLICIT))
        assert assoc is not None, verdict
        assert assoc.accepted_contexts == [AcceptedContext(3, CT_IMAGE_STORAGE, IMPLICIT)]
        assert assoc.context_for(CT_IMAGE_STORAGE, EXPLICIT) is None
        assoc.release()
        peer.finished()

    def only_unproposed(conn: Connection) -> None:
        conn.accept({7: EXPLICIT})
        assert conn.serve() == []

    with RawPeer(only_unproposed) as peer:
        assoc, verdict = open_on(peer)
        (conn,) = peer.finished()
    assert assoc is None and verdict is not None
    assert verdict.outcome is Outcome.FAIL
    assert "accepted none of the proposed presentation contexts" in verdict.reason
    assert conn.after == []  # released, not aborted


@pytest.mark.parametrize(
    ("result", "outcome"), [(1, Outcome.FAIL), (2, Outcome.RETRY)], ids=["permanent", "transient"]
)
def test_a_rejection_is_told_in_pynetdicoms_words(result: int, outcome: Outcome) -> None:
    rj_pdu = associate_rj(result, 1, 3)  # service user: calling AE title not recognised

    with RawPeer(lambda conn: conn.send(rj_pdu)) as peer:
        assoc, verdict = open_on(peer)
        peer.finished()
    rj = A_ASSOCIATE_RJ()
    rj.decode(rj_pdu)
    assert assoc is None
    assert verdict == describe_rejection(where_of(destination(peer.port)), rj)
    assert verdict.outcome is outcome
    assert "Calling AE title not recognised" in verdict.reason


GARBAGE = {
    "close": b"",
    # a web server's answer as far as we read it (a PDU header announcing 1.4 GB); no more,
    # or our close with bytes unread resets the connection before the peer reads our A-ABORT
    "http": b"HTTP/1",
    "abort": ABORT_PDU,
    "release-rp": RELEASE_RP_PDU,
    "short-ac": pdu(2, b"\x00\x01"),
    "ac-of-garbage": pdu(2, bytes(range(80))),
    "short-rj": pdu(3, b"\x00"),
    "rj-of-unknown-result": associate_rj(9, 9, 9),
    "silence": None,
}


@pytest.mark.parametrize("answer", GARBAGE)
def test_an_answer_that_is_no_answer_is_retried(answer: str) -> None:
    def script(conn: Connection) -> None:
        data = GARBAGE[answer]
        if data is not None:
            conn.send(data)
            conn.sock.shutdown(socket.SHUT_WR)

    with RawPeer(script) as peer:
        assoc, verdict = open_on(peer)
        (conn,) = peer.finished()
    assert assoc is None and verdict is not None
    assert verdict.outcome is Outcome.RETRY
    where = where_of(destination(peer.port))
    assert verdict.reason == f"{where} aborted or timed out during association"
    # an A-ABORT is not answered with another (PS3.8 9.2: AA-3); anything else is aborted
    assert conn.after == ([] if answer == "abort" else [ABORT_PDU])


def test_a_tiny_maximum_length_is_refused_not_looped_on() -> None:
    with RawPeer(lambda conn: conn.accept(max_pdu=6)) as peer:
        assoc, verdict = open_on(peer)
        (conn,) = peer.finished()
    assert assoc is None and verdict is not None and verdict.outcome is Outcome.FAIL
    assert "at most 6 bytes" in verdict.reason
    assert conn.after == [ABORT_PDU]


# -- 5. release, and a peer leaving an idle association


def released_with(script: Callable[[Connection], None]) -> Connection:
    """Open, release, and what the peer read after `script` returned."""
    with RawPeer(script) as peer:
        assoc, verdict = open_on(peer)
        assert assoc is not None, verdict
        in_time(assoc.release)
        assert not assoc.is_established and assoc.fileno() == -1
        (conn,) = peer.finished()
    return conn


def test_release_answered_closes_cleanly() -> None:
    def script(conn: Connection) -> None:
        conn.accept()
        assert conn.serve() == []  # returns on our A-RELEASE-RQ, answered with an RP

    assert released_with(script).after == []


def test_release_unanswered_is_aborted_after_the_acse_timeout() -> None:
    def script(conn: Connection) -> None:
        conn.accept()
        assert conn.read_pdu() == RELEASE_RQ_PDU

    assert released_with(script).after == [ABORT_PDU]


def test_release_collision_is_answered_by_us_first() -> None:
    """A release collision (PS3.8 7.2): both ask to release; the requestor sends its RP
    first, then the acceptor."""

    def script(conn: Connection) -> None:
        conn.accept()
        assert conn.read_pdu() == RELEASE_RQ_PDU
        conn.send(RELEASE_RQ_PDU)
        assert conn.read_pdu() == RELEASE_RP_PDU
        conn.send(RELEASE_RP_PDU)

    assert released_with(script).after == []


@pytest.mark.parametrize("leaving", ["release", "close", "abort"])
def test_the_peer_leaving_an_idle_association_is_noticed(leaving: str) -> None:
    go = threading.Event()

    def script(conn: Connection) -> None:
        conn.accept()
        assert go.wait(STUCK_S)
        if leaving == "release":
            conn.send(RELEASE_RQ_PDU)  # and waits for our RP (read by `drain`)
            return
        if leaving == "abort":
            conn.send(ABORT_PDU)
        conn.sock.shutdown(socket.SHUT_WR)

    with RawPeer(script) as peer:
        assoc, verdict = open_on(peer)
        assert assoc is not None, verdict
        assert not assoc.peer_left()
        go.set()
        readable, _, _ = select.select([assoc], [], [], STUCK_S)
        assert readable == [assoc]
        assert assoc.peer_left()
        assert not assoc.is_established
        assoc.release()  # nothing more goes out
        (conn,) = peer.finished()
    assert conn.after == ([RELEASE_RP_PDU] if leaving == "release" else [])


def test_a_tls_setup_that_cannot_be_made_fails_before_connecting(tmp_path: Path) -> None:
    """Our own CA file missing: a person must fix the config, no retry, no connection made."""
    tls = TlsSettings(ca_file=tmp_path / "missing-ca.pem")
    with RawPeer(silence) as peer:
        dest = dataclasses.replace(destination(peer.port), tls=tls)
        assoc, verdict = open_store_association(
            "CT_TEST", dest, proposed_contexts([CT_IMAGE_STORAGE], [EXPLICIT]), 16384
        )
        assert assoc is None and verdict is not None
        assert verdict.outcome is Outcome.FAIL and "TLS setup" in verdict.reason
        assert list(peer.finished()) == []  # never connected


def test_a_transcoding_lost_by_its_pool_ends_its_future() -> None:
    """A job cancelled with a broken pool: the staged copy fails instead of never ending."""
    job: Future[float] = Future()
    job.cancel()
    staged: Future[Path] = Future()
    staging._settle(job, staged, Path("/nowhere"), cast(ProcessPoolExecutor, None), None)
    assert isinstance(staged.exception(timeout=0), RuntimeError)


def test_a_file_never_ready_is_retried_not_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sender, "PREPARE_TIMEOUT_S", 0.05)
    never: Future[Path] = Future()
    item = Outgoing("1.2.3", CT_IMAGE_STORAGE, EXPLICIT, lambda: Path("/"))
    assoc = cast(StoreAssociation, object())  # not reached
    result = sender._store_one(assoc, item, EXPLICIT, never, Pace())
    assert result.verdict.outcome is Outcome.RETRY and "not ready" in result.verdict.reason
    assert never.cancelled()  # so that the next attempt stages the file anew
