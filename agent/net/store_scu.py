"""The storage association: C-STORE of spooled Part 10 files, driven on the sending thread.

pynetdicom runs each association through a reactor thread that polls its socket and passes
every PDU through queues, events and a state machine; on a 2-core console that caps a C-STORE
stream near 170-200 images/s however the files are prepared (bench/send.py, README
"Performance"). Sending stored files needs little of it: one operation outstanding, no role
selection or extended negotiation, the data set already encoded. So this association is
driven synchronously by the thread that sends: pynetdicom's PDU classes still encode the
A-ASSOCIATE-RQ and decode the answer (one codec of association PDUs in the agent, the same
implementation identity on the wire), and the P-DATA-TF PDUs are written straight from the
file. Worklist, MPPS, commitment, verification and our SCP stay on pynetdicom.

PS3.8 sections 7-9 are the reference: PDU layouts (9.3), the association's states as a
requestor (9.2), and fragmenting a message into PDVs no longer than the peer takes (9.3.5).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from io import BufferedReader
from pathlib import Path

from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext

from agent.config import Peer
from agent.net.association import (
    aborted,
    describe_rejection,
    not_connected,
    nothing_accepted,
    tls_setup_failed,
    where_of,
)
from agent.net.outcome import Outcome, Verdict
from agent.net.tls import client_tls_context, tls_failure, tls_verdict

__all__ = [
    "AcceptedContext",
    "AssociationLost",
    "NoResponse",
    "StoreAssociation",
    "open_store_association",
]

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
# PDU types (PS3.8 table 9-1)
_ASSOCIATE_AC, _ASSOCIATE_RJ, _P_DATA, _RELEASE_RQ, _RELEASE_RP, _ABORT = 2, 3, 4, 5, 6, 7
_RELEASE_RQ_PDU = bytes([_RELEASE_RQ, 0, 0, 0, 0, 4, 0, 0, 0, 0])
_RELEASE_RP_PDU = bytes([_RELEASE_RP, 0, 0, 0, 0, 4, 0, 0, 0, 0])
_ABORT_PDU = bytes([_ABORT, 0, 0, 0, 0, 4, 0, 0, 0, 0])  # source: service user, no reason
_PDU_HEADER = struct.Struct(">BBI")
_PDV_HEADER = struct.Struct(">IBB")  # item length, context ID, message control header
_DATA_PDU = struct.Struct(">BBIIBB")  # a PDU of one PDV: both headers, 12 bytes
_COMMAND, _LAST = 0x01, 0x02  # message control header bits
_AC_FIXED_FIELDS = 68  # version, reserved, AE titles, reserved (PS3.8 9.3.3)
_LARGEST_PDU_READ = 16 * 1024 * 1024  # a longer PDU from the peer is a protocol error
_LARGEST_FRAGMENT = 1024 * 1024  # what we send in one PDV at most, whatever the peer takes
_C_STORE_RQ, _C_STORE_RSP = 0x0001, 0x8001
_NO_DATA_SET = 0x0101
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}


class AssociationLost(Exception):
    """The association ended under an operation: the peer aborted, closed or went silent, or
    broke the protocol (we then aborted)."""


class NoResponse(AssociationLost):
    """The peer neither answered nor took our data within the timeout (we then aborted)."""


@dataclass(frozen=True)
class AcceptedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntax: str


@dataclass(frozen=True)
class StoredFile:
    """Where a Part 10 file's data set starts and what its File Meta says it is."""

    data_set_offset: int
    transfer_syntax_uid: str
    sop_class_uid: str
    sop_instance_uid: str


def open_store_association(
    calling_ae: str,
    peer: Peer,
    contexts: Sequence[PresentationContext],
    max_pdu: int,
) -> tuple[StoreAssociation | None, Verdict | None]:
    """An established association to `peer` proposing `contexts`, or why there is none (in
    the words `open_association` uses)."""
    where = where_of(peer)
    try:
        request = _associate_rq(calling_ae, peer.ae_title, contexts, max_pdu)
    except ValueError as e:  # pynetdicom's words for a value it cannot encode
        return None, Verdict(Outcome.FAIL, f"cannot ask {where} for an association: {e}")
    ctx: ssl.SSLContext | None = None
    if peer.tls is not None:
        try:
            ctx = client_tls_context(peer.tls)
        except (OSError, ssl.SSLError) as e:  # our certificate, key or CA file
            return None, tls_setup_failed(where, e)
    try:
        sock = socket.create_connection((peer.host, peer.port), timeout=peer.connect_timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        return None, not_connected(where)
    if ctx is not None:
        try:
            sock = _handshake(sock, ctx, peer)
        except OSError as e:  # ssl.SSLError included
            return None, tls_verdict(e, where, peer.tls)
    proposed = {2 * i + 1: str(cx.abstract_syntax) for i, cx in enumerate(contexts)}
    try:
        sock.settimeout(peer.acse_timeout_s)
        sock.sendall(request)
        kind, pdu = _read_pdu(sock, time.monotonic() + peer.acse_timeout_s)
    except (OSError, AssociationLost) as e:
        refusal = _tls_alert(sock, e)
        if refusal is not None:
            sock.close()
            return None, tls_verdict(refusal, where, peer.tls)
        _abort_and_close(sock)  # silent past the ACSE timeout, or not speaking DICOM
        return None, aborted(where)
    if kind == _ABORT:  # not answered (PS3.8 9.2, AA-3)
        sock.close()
        return None, aborted(where)
    try:
        answer = _answer(kind, pdu, where, proposed)
    except Exception:  # pynetdicom's decoders raise anything (AssertionError, KeyError,
        # struct.error...) on bytes they cannot read: the peer broke the protocol
        _abort_and_close(sock)
        return None, aborted(where)
    if isinstance(answer, Verdict):
        sock.close()
        return None, answer
    accepted, peer_max = answer
    if 0 < peer_max <= _PDV_HEADER.size:
        _abort_and_close(sock)
        why = f"{where} takes PDUs of at most {peer_max} bytes: no room for any data"
        return None, Verdict(Outcome.FAIL, why)
    assoc = StoreAssociation(sock, where, accepted, peer_max, peer)
    if not accepted:
        assoc.release()
        return None, nothing_accepted(where)
    return assoc, None


def _answer(
    kind: int, pdu: bytes, where: str, proposed: dict[int, str]
) -> Verdict | tuple[list[AcceptedContext], int]:
    """The rejection, or the accepted contexts and the peer's maximum PDU length (0: none)
    of an A-ASSOCIATE-RJ or -AC; ValueError for any other PDU."""
    if kind == _ASSOCIATE_RJ:
        rj = A_ASSOCIATE_RJ()
        rj.decode(pdu)
        return describe_rejection(where, rj)
    if kind != _ASSOCIATE_AC:
        raise ValueError(f"a PDU of type 0x{kind:02X} answered the A-ASSOCIATE-RQ")
    if len(pdu) < _PDU_HEADER.size + _AC_FIXED_FIELDS:  # pynetdicom takes it as empty
        raise ValueError("an A-ASSOCIATE-AC shorter than its fixed fields")
    ac = A_ASSOCIATE_AC()
    ac.decode(pdu)
    answer = ac.to_primitive()
    accepted = [
        AcceptedContext(cx.context_id, proposed[cx.context_id], str(cx.transfer_syntax[0]))
        for cx in answer.presentation_context_definition_results_list
        if cx.result == 0 and cx.context_id in proposed and cx.transfer_syntax
    ]
    peer_max = next(
        (
            item.maximum_length_received
            for item in answer.user_information
            if isinstance(item, MaximumLengthNotification)
        ),
        0,
    )
    return accepted, peer_max or 0


def _tls_alert(sock: socket.socket, error: Exception) -> Exception | None:
    """The TLS error behind `error` on `sock`, if it is a TLS socket: with TLS 1.3 a server
    refuses our certificate only after the handshake, and a write then fails with a bare EOF
    while the server's alert waits to be read."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    with contextlib.suppress(OSError):
        sock.settimeout(1.0)
        sock.recv(1)  # a socket of our contexts keeps the alert it reads (agent/net/tls.py)
    return tls_failure(sock.context) or (error if isinstance(error, ssl.SSLError) else None)


def _handshake(sock: socket.socket, ctx: ssl.SSLContext, peer: Peer) -> socket.socket:
    assert peer.tls is not None
    try:
        sock.settimeout(peer.acse_timeout_s)
        # no server name (and no SNI) unless the host name is checked: peers are often IPs
        return ctx.wrap_socket(sock, server_hostname=peer.host if peer.tls.check_hostname else None)
    except BaseException:
        sock.close()
        raise


def _associate_rq(
    calling_ae: str, called_ae: str, contexts: Sequence[PresentationContext], max_pdu: int
) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = UID(APPLICATION_CONTEXT)
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    numbered = []
    for i, cx in enumerate(contexts):
        copy = PresentationContext()
        copy.context_id = 2 * i + 1
        copy.abstract_syntax = cx.abstract_syntax
        copy.transfer_syntax = list(cx.transfer_syntax)
        numbered.append(copy)
    primitive.presentation_context_definition_list = numbered
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = UID(PYNETDICOM_IMPLEMENTATION_UID)
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = PYNETDICOM_IMPLEMENTATION_VERSION
    primitive.user_information = [length, implementation, version]
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(primitive)
    return rq.encode()


class StoreAssociation:
    """One established storage association; `store` one file at a time, then `release`."""

    def __init__(
        self,
        sock: socket.socket,
        where: str,
        accepted: list[AcceptedContext],
        peer_max_pdu: int,
        peer: Peer,
    ) -> None:
        self.where = where
        self.accepted_contexts = accepted
        self._sock: socket.socket | None = sock
        # a PDV item's own header is 6 bytes of the PDU's length the peer limits (PS3.8 9.3.5);
        # never more than ours, limit or not: smaller PDUs are always allowed
        limit = peer_max_pdu - 6 if peer_max_pdu else _LARGEST_FRAGMENT
        self._fragment = min(limit, _LARGEST_FRAGMENT)
        self._dimse_timeout = peer.dimse_timeout_s
        self._acse_timeout = peer.acse_timeout_s
        self._message_id = 0

    @property
    def is_established(self) -> bool:
        return self._sock is not None

    def fileno(self) -> int:
        """The socket's, so that a caller can wait for the peer with `select` (-1: closed)."""
        return self._sock.fileno() if self._sock is not None else -1

    def context_for(self, sop_class: str, transfer_syntax: str) -> AcceptedContext | None:
        return next(
            (
                cx
                for cx in self.accepted_contexts
                if cx.abstract_syntax == sop_class and cx.transfer_syntax == transfer_syntax
            ),
            None,
        )

    def peer_left(self) -> bool:
        """Whether the peer has ended an idle association (closed, aborted or asked to
        release it); it is then closed here too. Checked before reusing one."""
        sock = self._sock
        if sock is None:
            return True
        waiting = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0  # decrypted already
        if not waiting and not _readable(sock):
            return False
        try:
            # briefly: a peer that leaves sends its whole PDU at once, and a TLS record that
            # carries no data (a key update) must not hold the sender for an ACSE timeout
            kind, _ = _read_pdu(sock, time.monotonic() + min(1.0, self._acse_timeout))
            if kind == _RELEASE_RQ:
                sock.sendall(_RELEASE_RP_PDU)
        except (OSError, AssociationLost):
            pass
        self._close()
        return True

    def store(self, path: Path, context: AcceptedContext, sop_instance_uid: str) -> int:
        """C-STORE the data set of the Part 10 file at `path` in `context`; the status of the
        peer's response. ValueError: the file cannot be sent as it is (nothing was sent, the
        association goes on); AssociationLost: the association is gone."""
        sock = self._sock
        if sock is None:
            raise AssociationLost("the association is closed")
        with path.open("rb") as f:
            stored = read_file_meta(f)
            _check(stored, context, sop_instance_uid)
            size = _size(f) - stored.data_set_offset
            if size <= 0:
                raise ValueError("the file has no data set after its File Meta Information")
            self._message_id = self._message_id % 0xFFFF + 1
            command = _c_store_rq(self._message_id, context.abstract_syntax, sop_instance_uid)
            try:
                sock.settimeout(self._dimse_timeout)
                self._send_command(sock, command, context.context_id)
                self._send_data_set(sock, f, stored.data_set_offset, size, context.context_id)
                return self._response(sock, self._message_id)
            except AssociationLost:
                self.abort()
                raise
            except TimeoutError as e:
                self.abort()
                raise NoResponse(f"{self.where} took nothing for {self._dimse_timeout} s") from e
            except OSError as e:
                self.abort()
                raise AssociationLost(f"connection to {self.where} lost: {e}") from e
            except Exception as e:  # whatever a peer's bytes cause, the association ends here
                self.abort()
                raise AssociationLost(f"{self.where}: {type(e).__name__}: {e}") from e

    def _send_command(self, sock: socket.socket, command: bytes, context_id: int) -> None:
        """The command set in PDVs the peer takes: fragmented too when its limit is below
        the command's length (PS3.8 9.3.5)."""
        for start in range(0, len(command), self._fragment):
            end = start + self._fragment
            control = _COMMAND | (_LAST if end >= len(command) else 0)
            sock.sendall(_pdu_of_one_pdv(context_id, control, command[start:end]))

    def _send_data_set(
        self, sock: socket.socket, f: BufferedReader, offset: int, size: int, context_id: int
    ) -> None:
        f.seek(offset)
        buffer = bytearray(_DATA_PDU.size + min(self._fragment, size))
        view = memoryview(buffer)
        left = size
        while left:
            n = min(self._fragment, left)
            if f.readinto(view[_DATA_PDU.size : _DATA_PDU.size + n]) != n:
                # the file shrank after its check: what went out cannot be completed
                raise AssociationLost(f"the file ended early while being sent to {self.where}")
            left -= n
            _DATA_PDU.pack_into(buffer, 0, _P_DATA, 0, n + 6, n + 2, context_id, _LAST * (not left))
            sock.sendall(view[: _DATA_PDU.size + n])

    def _response(self, sock: socket.socket, message_id: int) -> int:
        command = bytearray()
        deadline = time.monotonic() + self._dimse_timeout  # for the whole response
        while True:
            kind, pdu = _read_pdu(sock, deadline)
            if kind != _P_DATA:
                self._unexpected(kind)
            for control, value in _pdvs(pdu):
                if control & _COMMAND:
                    command += value
                    if control & _LAST:
                        return self._status(bytes(command), message_id)

    def _status(self, command: bytes, message_id: int) -> int:
        fields = _command_fields(command)
        if (
            fields.get(0x0100) != _C_STORE_RSP
            or fields.get(0x0120) != message_id
            or 0x0900 not in fields
        ):
            raise AssociationLost(f"{self.where} answered with something else than our C-STORE")
        if fields.get(0x0800, _NO_DATA_SET) != _NO_DATA_SET:  # none in a C-STORE-RSP (PS3.7)
            raise AssociationLost(f"{self.where} sent a data set with a C-STORE response")
        return fields[0x0900]

    def _unexpected(self, kind: int) -> None:
        """Raises AssociationLost, which `store` answers with an A-ABORT; not to an A-ABORT."""
        if kind == _ABORT:
            self._close()
            raise AssociationLost(f"{self.where} aborted the association")
        if kind == _RELEASE_RQ:  # not while our operation is outstanding (PS3.8 9.2)
            raise AssociationLost(f"{self.where} asked to release during an operation")
        raise AssociationLost(f"{self.where} sent an unexpected PDU (type 0x{kind:02X})")

    def release(self) -> None:
        """A-RELEASE, then close; an abort when the peer does not answer in time."""
        sock = self._sock
        if sock is None:
            return
        try:
            sock.settimeout(self._acse_timeout)
            sock.sendall(_RELEASE_RQ_PDU)
            deadline = time.monotonic() + self._acse_timeout
            while True:
                kind, _ = _read_pdu(sock, deadline)
                if kind in (_RELEASE_RP, _ABORT):
                    break
                if kind == _RELEASE_RQ:  # release collision: the requestor answers first
                    sock.sendall(_RELEASE_RP_PDU)
        except (OSError, AssociationLost):
            self.abort()
            return
        self._close()

    def abort(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            _abort_and_close(sock)

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def read_file_meta(f: BufferedReader) -> StoredFile:
    """The File Meta Information of the Part 10 file open as `f` (PS3.10 7.1): where the
    data set starts, and the transfer syntax, SOP class and instance it names."""
    head = f.read(132 + 12)
    if len(head) < 144 or head[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file (no DICM prefix)")
    group, element, vr, length = struct.unpack_from("<HH2sH", head, 132)
    if (group, element, vr, length) != (2, 0, b"UL", 4):
        raise ValueError("the File Meta Information has no group length (0002,0000)")
    (meta_length,) = struct.unpack_from("<I", head, 140)
    meta = f.read(meta_length)
    if len(meta) != meta_length:
        raise ValueError("the File Meta Information is cut short")
    values: dict[int, str] = {}
    pos = 0
    while pos + 8 <= meta_length:
        group, element, vr = struct.unpack_from("<HH2s", meta, pos)
        if group != 2:
            raise ValueError(f"a group 0x{group:04X} element inside the File Meta Information")
        if vr in _LONG_LENGTH_VRS:
            if pos + 12 > meta_length:
                break  # a header cut by the group length: malformed, below
            (length,) = struct.unpack_from("<I", meta, pos + 8)
            pos += 12
        else:
            (length,) = struct.unpack_from("<H", meta, pos + 6)
            pos += 8
        if element in (0x0002, 0x0003, 0x0010):
            values[element] = meta[pos : pos + length].rstrip(b"\0 ").decode("ascii")
        pos += length
    if pos != meta_length or 0x0010 not in values:
        raise ValueError("the File Meta Information is malformed or names no transfer syntax")
    return StoredFile(144 + meta_length, values[0x0010], values.get(2, ""), values.get(3, ""))


def _check(stored: StoredFile, context: AcceptedContext, sop_instance_uid: str) -> None:
    if stored.transfer_syntax_uid != context.transfer_syntax:
        raise ValueError(
            f"the file is in {stored.transfer_syntax_uid}, the context in {context.transfer_syntax}"
        )
    if (
        stored.sop_instance_uid != sop_instance_uid
        or stored.sop_class_uid != context.abstract_syntax
    ):
        raise ValueError("the file's File Meta names another SOP instance or class")


def _size(f: BufferedReader) -> int:
    return os.fstat(f.fileno()).st_size


def _readable(sock: socket.socket) -> bool:
    poller = select.poll()  # not select.select: any descriptor number
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _read_exactly(sock: socket.socket, n: int, deadline: float) -> bytes:
    """`n` bytes by `deadline` (time.monotonic): a peer trickling bytes cannot hold us longer."""
    buffer = bytearray(n)
    view = memoryview(buffer)
    got = 0
    while got < n:
        try:
            sock.settimeout(max(0.0, deadline - time.monotonic()) or 0.001)
            k = sock.recv_into(view[got:])
        except TimeoutError as e:
            raise NoResponse("no answer in time") from e
        if k == 0:
            raise AssociationLost("the peer closed the connection")
        got += k
    return bytes(buffer)


def _read_pdu(sock: socket.socket, deadline: float) -> tuple[int, bytes]:
    """(type, the whole PDU) of the next PDU from the peer, by `deadline`."""
    header = _read_exactly(sock, _PDU_HEADER.size, deadline)
    kind, _, length = _PDU_HEADER.unpack(header)
    if length > _LARGEST_PDU_READ:
        raise AssociationLost(f"the peer sent a PDU of {length} bytes")
    return kind, header + _read_exactly(sock, length, deadline)


def _pdvs(pdu: bytes) -> list[tuple[int, bytes]]:
    """(message control header, value) of each PDV item of a P-DATA-TF PDU."""
    items = []
    pos = _PDU_HEADER.size
    while pos + _PDV_HEADER.size <= len(pdu):
        length, _, control = _PDV_HEADER.unpack_from(pdu, pos)
        if length < 2 or pos + 4 + length > len(pdu):
            raise AssociationLost("a PDV item shorter than its header or longer than its PDU")
        items.append((control, pdu[pos + _PDV_HEADER.size : pos + 4 + length]))
        pos += 4 + length
    return items


def _pdu_of_one_pdv(context_id: int, control: int, value: bytes) -> bytes:
    n = len(value)
    return _DATA_PDU.pack(_P_DATA, 0, n + 6, n + 2, context_id, control) + value


def _element(element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"  # UI values are padded with a NUL (PS3.5 9.1)
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _c_store_rq(message_id: int, sop_class_uid: str, sop_instance_uid: str) -> bytes:
    """The command set of a C-STORE-RQ (PS3.7 9.3.1.1), Implicit VR Little Endian."""
    body = b"".join(
        (
            _element(0x0002, sop_class_uid.encode("ascii")),
            _element(0x0100, struct.pack("<H", _C_STORE_RQ)),
            _element(0x0110, struct.pack("<H", message_id)),
            _element(0x0700, struct.pack("<H", 0)),  # priority: medium
            _element(0x0800, struct.pack("<H", 0)),  # a data set follows
            _element(0x1000, sop_instance_uid.encode("ascii")),
        )
    )
    return _element(0x0000, struct.pack("<I", len(body))) + body


def _command_fields(command: bytes) -> dict[int, int]:
    """The US elements of a command set (Implicit VR Little Endian), by element number."""
    fields: dict[int, int] = {}
    pos = 0
    while pos + 8 <= len(command):
        group, element, length = struct.unpack_from("<HHI", command, pos)
        pos += 8
        if pos + length > len(command):
            raise AssociationLost("a command element longer than its command set")
        if group == 0 and length == 2:
            (fields[element],) = struct.unpack_from("<H", command, pos)
        pos += length
    return fields


def _abort_and_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.settimeout(1.0)
        sock.sendall(_ABORT_PDU)
    sock.close()
