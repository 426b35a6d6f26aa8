"""A scripted DICOM acceptor on a raw socket, for the protocol faults no real peer can be made
to produce (a wrong Message ID, a release request under an operation, a 100 MB PDU header...).

`with RawPeer(script) as peer:` listens on `peer.port` (loopback). For each connection it
reads the A-ASSOCIATE-RQ, then runs `script(conn)`; once the script returns it reads whatever
the requestor still sends until the requestor closes, so that a test sees our A-ABORT or
A-RELEASE-RQ/RP in `conn.after`. It never uses store_scu's own codecs: PDUs are built here or
by pynetdicom, command sets by pydicom (through pynetdicom's dsutils).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from types import TracebackType
from typing import Self

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA = 1, 2, 3, 4
RELEASE_RQ, RELEASE_RP, ABORT = 5, 6, 7
RELEASE_RQ_PDU = bytes([RELEASE_RQ, 0, 0, 0, 0, 4, 0, 0, 0, 0])
RELEASE_RP_PDU = bytes([RELEASE_RP, 0, 0, 0, 0, 4, 0, 0, 0, 0])
ABORT_PDU = bytes([ABORT, 0, 0, 0, 0, 4, 0, 0, 0, 0])
C_STORE_RSP, C_ECHO_RSP = 0x8001, 0x8030
ACCEPT_ALL = None
PEER_IMPLEMENTATION_UID = "1.2.826.0.1.3680043.10.999.77"
DRAIN_LIMIT_S = 30.0  # how long the peer waits for the requestor to close at most


def pdu(kind: int, body: bytes) -> bytes:
    return struct.pack(">BBI", kind, 0, len(body)) + body


def pdv(context_id: int, control: int, value: bytes) -> bytes:
    return struct.pack(">IBB", len(value) + 2, context_id, control) + value


def command_set(**elements: object) -> bytes:
    """A command set from keywords (CommandField=..., Status=...), Implicit VR Little Endian,
    with its Command Group Length."""
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    body = encode(ds, True, True)
    assert body is not None
    length = Dataset()
    length.CommandGroupLength = len(body)
    head = encode(length, True, True)
    assert head is not None
    return head + body


def store_rsp(request: Dataset, status: int, **changes: object) -> bytes:
    """The C-STORE-RSP command set answering `request` with `status`; `changes` override."""
    fields: dict[str, object] = {
        "AffectedSOPClassUID": request.AffectedSOPClassUID,
        "CommandField": C_STORE_RSP,
        "MessageIDBeingRespondedTo": request.MessageID,
        "CommandDataSetType": 0x0101,
        "Status": status,
        "AffectedSOPInstanceUID": request.AffectedSOPInstanceUID,
    }
    return command_set(**{**fields, **changes})


@dataclass
class Message:
    """One DIMSE message as received: its PDVs, command set and data set."""

    pdvs: list[tuple[int, int, bytes]]  # (context ID, message control header, value)
    pdu_lengths: list[int]
    command: Dataset
    data_set: bytes

    @property
    def context_ids(self) -> set[int]:
        return {cx for cx, _, _ in self.pdvs}


@dataclass
class Connection:
    sock: socket.socket
    rq: A_ASSOCIATE = field(default_factory=A_ASSOCIATE)  # the requestor's, once read
    after: list[bytes] = field(default_factory=list)  # PDUs read after the script, to EOF
    closed_by_requestor: bool = False
    _unread: bytes = b""

    # -- reading

    def read_exactly(self, n: int) -> bytes:
        data = bytearray(self._unread[:n])
        self._unread = self._unread[n:]
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError("the requestor closed the connection")
            data += chunk
        return bytes(data)

    def read_pdu(self) -> bytes:
        header = self.read_exactly(6)
        (length,) = struct.unpack(">I", header[2:])
        return header + self.read_exactly(length)

    def read_message(self, *, data_set_pdus: int | None = None) -> Message:
        """The next whole message; with `data_set_pdus`, stop after that many P-DATA PDUs
        carrying data set fragments (the rest stays unread)."""
        pdvs: list[tuple[int, int, bytes]] = []
        lengths: list[int] = []
        command, data = bytearray(), bytearray()
        command_done = data_done = False
        data_pdus = 0
        while not (command_done and data_done):
            raw = self.read_pdu()
            assert raw[0] == P_DATA, f"expected a P-DATA-TF PDU, got type 0x{raw[0]:02X}"
            lengths.append(len(raw) - 6)
            pos = 6
            carried_data = False
            while pos < len(raw):
                length, cx, control = struct.unpack_from(">IBB", raw, pos)
                value = raw[pos + 6 : pos + 4 + length]
                pdvs.append((cx, control, value))
                if control & 1:
                    command += value
                    if control & 2:
                        command_done = True
                        cmd = decode(BytesIO(bytes(command)), True, True)
                        data_done = cmd.CommandDataSetType == 0x0101
                else:
                    carried_data = True
                    data += value
                    data_done = bool(control & 2)
                pos += 4 + length
            data_pdus += carried_data
            if data_set_pdus is not None and data_pdus >= data_set_pdus:
                break
        return Message(pdvs, lengths, decode(BytesIO(bytes(command)), True, True), bytes(data))

    # -- answering

    def accept(
        self,
        results: dict[int, str | None] | None = ACCEPT_ALL,
        *,
        max_pdu: int = 16384,
    ) -> None:
        """An A-ASSOCIATE-AC: `results` maps context IDs to the transfer syntax accepted
        (None: refused, "transfer syntaxes not supported"); ACCEPT_ALL takes every proposed
        context in its first syntax."""
        self.send(associate_ac(self.rq, results, max_pdu))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_command(
        self, context_id: int, command: bytes, *, split: int = 1, per_pdu: bool = False
    ) -> None:
        """`command` as `split` PDVs, in one P-DATA-TF PDU or (`per_pdu`) one PDU each."""
        step = -(-len(command) // split)
        parts = [command[i : i + step] for i in range(0, len(command), step)]
        items = [
            pdv(context_id, 0x01 | (0x02 if i == len(parts) - 1 else 0), part)
            for i, part in enumerate(parts)
        ]
        self.send(
            b"".join(pdu(P_DATA, item) for item in items)
            if per_pdu
            else pdu(P_DATA, b"".join(items))
        )

    def serve(
        self,
        answer: Callable[[Message], int] = lambda _m: 0x0000,
        *,
        split: int = 1,
        per_pdu: bool = False,
    ) -> list[Message]:
        """Answer each C-STORE with `answer(message)` (a response sent as `send_command`
        does) until the requestor releases (answered with an A-RELEASE-RP); the messages
        received."""
        messages: list[Message] = []
        while True:
            header = self.read_exactly(6)
            (length,) = struct.unpack(">I", header[2:])
            if header[0] == RELEASE_RQ:
                self.read_exactly(length)
                self.send(RELEASE_RP_PDU)
                return messages
            self._unread = header + self._unread
            message = self.read_message()
            messages.append(message)
            cx = message.pdvs[0][0]
            rsp = store_rsp(message.command, answer(message))
            self.send_command(cx, rsp, split=split, per_pdu=per_pdu)

    def drain(self) -> None:
        """Read the requestor's PDUs into `after` until it closes the connection."""
        self.sock.settimeout(DRAIN_LIMIT_S)
        with contextlib.suppress(EOFError, OSError):
            while True:
                self.after.append(self.read_pdu())
        self.closed_by_requestor = True


def associate_ac(rq: A_ASSOCIATE, results: dict[int, str | None] | None, max_pdu: int) -> bytes:
    if results is None:
        results = {
            int(cx.context_id or 0): str(cx.transfer_syntax[0])
            for cx in rq.presentation_context_definition_list
        }
    answer = A_ASSOCIATE()
    answer.application_context_name = rq.application_context_name
    answer.calling_ae_title = rq.calling_ae_title
    answer.called_ae_title = rq.called_ae_title
    answer.result = 0x00
    contexts = []
    for context_id, ts in results.items():
        cx = PresentationContext()
        cx.context_id = context_id
        cx.result = 0x00 if ts is not None else 0x04
        cx.transfer_syntax = [UID(ts or "1.2.840.10008.1.2")]
        contexts.append(cx)
    answer.presentation_context_definition_results_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = UID(PEER_IMPLEMENTATION_UID)
    answer.user_information = [length, implementation]
    ac = A_ASSOCIATE_AC()
    ac.from_primitive(answer)
    return bytes(ac.encode())


def associate_rj(result: int, source: int, reason: int) -> bytes:
    return pdu(ASSOCIATE_RJ, bytes([0, result, source, reason]))


Script = Callable[[Connection], None]


class RawPeer:
    """Runs `script` on each association request to `port`; `connections` and `errors` (an
    assertion or error raised in a script) are for the test to check after the `with`."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections: list[Connection] = []
        self.errors: list[BaseException] = []
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(4)
        self.port = int(self._server.getsockname()[1])
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="raw-peer", daemon=True)

    def __enter__(self) -> Self:
        self._acceptor.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accept (close alone does not)
        self._server.close()
        self._acceptor.join(DRAIN_LIMIT_S)
        for thread in list(self._threads):
            thread.join(DRAIN_LIMIT_S)
        for conn in self.connections:
            conn.sock.close()

    def finished(self) -> Sequence[Connection]:
        """The connections, once every script has run and every requestor closed."""
        for thread in list(self._threads):
            thread.join(DRAIN_LIMIT_S)
            assert not thread.is_alive(), "the requestor never closed the connection"
        if self.errors:
            raise self.errors[0]
        return self.connections

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._server.accept()
            except OSError:
                return  # closed: the test is over
            thread = threading.Thread(target=self._run, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, sock: socket.socket) -> None:
        sock.settimeout(DRAIN_LIMIT_S)
        conn = Connection(sock)
        self.connections.append(conn)
        try:
            raw = conn.read_pdu()
            assert raw[0] == ASSOCIATE_RQ, f"expected an A-ASSOCIATE-RQ, got 0x{raw[0]:02X}"
            rq = A_ASSOCIATE_RQ()
            rq.decode(raw)
            conn.rq = rq.to_primitive()
            self.script(conn)
            conn.drain()
        except BaseException as e:  # reported to the test by `finished`
            self.errors.append(e)
        finally:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
