"""Frames of the serial-shm protocol (PROTOCOL.md §4): pure, no I/O.

    raw frame = version u8 | type u8 | flags u16 | seq u32 | length u16 | payload | crc32 u32
    on the line = 0x00 COBS(raw frame) 0x00

`encode` builds one delimited frame. `FrameDecoder.feed` takes bytes as they arrive, in any
chunking, and returns one record per delimited frame: a `DecodedFrame` or a `FrameError`. It
never raises on any input; it resynchronises at the next 0x00 after garbage, and its buffer
never holds more than `MAX_ENCODED` bytes.
"""

from __future__ import annotations

import enum
import struct
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from hardware.protocol.fields import EncodeError, PayloadError
from hardware.protocol.messages import MESSAGE_TYPES, Message, decode_payload, encode_payload

FRAME_VERSION = 1  # byte 0 of every frame; changes only if this frame layout changes
HEADER = struct.Struct("<BBHIH")  # version, type, flags, seq, payload length
CRC = struct.Struct("<I")
HEADER_SIZE = HEADER.size  # 10
CRC_SIZE = CRC.size  # 4
MAX_PAYLOAD = 8192
MIN_RAW = HEADER_SIZE + CRC_SIZE  # 14
MAX_RAW = MIN_RAW + MAX_PAYLOAD  # 8206
MAX_ENCODED = MAX_RAW + MAX_RAW // 254 + 1  # 8239: COBS overhead, without the delimiter
DELIMITER = b"\x00"
SEQ_MODULO = 1 << 32

FLAG_RETRANSMIT = 0x0001  # the message was sent before (replay); bits 1..15 are reserved


def crc32(data: bytes | bytearray | memoryview) -> int:
    """CRC-32/ISO-HDLC (IEEE 802.3): poly 0x04C11DB7 reflected (0xEDB88320), init and
    final XOR 0xFFFFFFFF; check value of b"123456789" is 0xCBF43926. Equal to zlib.crc32."""
    return zlib.crc32(data) & 0xFFFF_FFFF


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing (Cheshire & Baker 1999): no 0x00 in the output."""
    out = bytearray()
    for part in data.split(b"\x00"):
        while len(part) >= 254:
            out.append(0xFF)
            out += part[:254]
            part = part[254:]
        out.append(len(part) + 1)
        out += part
    return bytes(out)


def cobs_decode(data: bytes) -> bytes | None:
    """The decoded bytes, or None when `data` is not valid COBS (a 0x00, or a code byte that
    points past the end)."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        end = i + code
        if code == 0 or end > n:
            return None
        block = data[i + 1 : end]
        if 0 in block:
            return None
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def encode(message: Message, seq: int, flags: int = 0) -> bytes:
    """One complete frame: 0x00, the COBS-encoded raw frame, 0x00. (The leading delimiter ends
    any garbage on the line, so that it cannot spoil this frame.) Raises `EncodeError` when a
    field is out of range, the payload exceeds `MAX_PAYLOAD`, or seq/flags do not fit."""
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < SEQ_MODULO:
        raise EncodeError(f"seq out of range: {seq!r}")
    if isinstance(flags, bool) or not isinstance(flags, int) or not 0 <= flags <= 0xFFFF:
        raise EncodeError(f"flags out of range: {flags!r}")
    payload = encode_payload(message)
    if len(payload) > MAX_PAYLOAD:
        raise EncodeError(f"{type(message).__name__}: payload {len(payload)} > {MAX_PAYLOAD}")
    raw = HEADER.pack(FRAME_VERSION, message.TYPE, flags, seq, len(payload)) + payload
    return DELIMITER + cobs_encode(raw + CRC.pack(crc32(raw))) + DELIMITER


class ErrorKind(enum.Enum):
    OVERSIZE = "oversize"  # more than MAX_ENCODED bytes without a delimiter: dropped
    COBS = "cobs"  # not valid COBS
    TOO_SHORT = "too-short"  # fewer than 14 bytes after COBS decoding
    CRC = "crc"  # CRC-32 mismatch
    VERSION = "version"  # frame version byte is not FRAME_VERSION (CRC was good)
    LENGTH = "length"  # length field disagrees with the frame size, or > 8192 (CRC was good)
    UNKNOWN_TYPE = "unknown-type"  # type byte not in MsgType (CRC was good)
    BAD_PAYLOAD = "bad-payload"  # payload does not decode as its type (CRC was good)
    DIRECTION = "direction"  # a type the peer never sends (only with `FrameDecoder(accept=)`)


@dataclass(frozen=True)
class FrameError:
    """A frame that was dropped. `seq` and `msg_type` are set when the CRC was good (the
    frame was received intact, so its sequence number counts as received)."""

    kind: ErrorKind
    detail: str
    size: int  # bytes dropped (COBS-encoded, without the delimiter)
    seq: int | None = None
    msg_type: int | None = None


@dataclass(frozen=True)
class DecodedFrame:
    seq: int
    flags: int
    message: Message

    @property
    def retransmit(self) -> bool:
        return bool(self.flags & FLAG_RETRANSMIT)


def decode_frame(encoded: bytes) -> DecodedFrame | FrameError:
    """Decode one frame given its COBS bytes without the delimiter. Never raises."""
    size = len(encoded)
    if size > MAX_ENCODED:
        return FrameError(ErrorKind.OVERSIZE, f"{size} bytes > {MAX_ENCODED}", size)
    raw = cobs_decode(encoded)
    if raw is None:
        return FrameError(ErrorKind.COBS, "invalid COBS encoding", size)
    if len(raw) < MIN_RAW:
        return FrameError(ErrorKind.TOO_SHORT, f"{len(raw)} bytes < {MIN_RAW}", size)
    body, (crc,) = raw[:-CRC_SIZE], CRC.unpack_from(raw, len(raw) - CRC_SIZE)
    if crc32(body) != crc:
        return FrameError(ErrorKind.CRC, f"crc {crc:08x} != computed {crc32(body):08x}", size)
    version, msg_type, flags, seq, length = HEADER.unpack_from(body)
    if version != FRAME_VERSION:
        return FrameError(ErrorKind.VERSION, f"frame version {version}", size, seq, msg_type)
    if length != len(body) - HEADER_SIZE or length > MAX_PAYLOAD:
        detail = f"length field {length}, payload {len(body) - HEADER_SIZE}, max {MAX_PAYLOAD}"
        return FrameError(ErrorKind.LENGTH, detail, size, seq, msg_type)
    if msg_type not in MESSAGE_TYPES:
        return FrameError(ErrorKind.UNKNOWN_TYPE, f"type 0x{msg_type:02x}", size, seq, msg_type)
    try:
        message = decode_payload(msg_type, body[HEADER_SIZE:])
    except PayloadError as e:
        name = MESSAGE_TYPES[msg_type].__name__
        return FrameError(ErrorKind.BAD_PAYLOAD, f"{name}: {e}", size, seq, msg_type)
    return DecodedFrame(seq, flags, message)


class FrameDecoder:
    """Incremental decoder: bytes in, frames and frame errors out, in arrival order.

    Empty frames (0x00 0x00, as between two frames) produce nothing. Bytes before the first
    0x00 are decoded as a frame like any other (a partial frame read at start-up, or line noise,
    shows up as one error record and spoils no other frame).
    """

    def __init__(self, accept: Callable[[int], bool] | None = None) -> None:
        """`accept`, when given (`sent_by_device` on the host, `sent_by_host` on a device),
        says which message types the peer may send; any other decoded frame becomes a
        `FrameError(DIRECTION)` (check 9 of PROTOCOL.md §4.3)."""
        self._accept = accept
        self._buf = bytearray()
        self._discarding = False  # dropping an over-long frame until the next delimiter
        self.frames = 0
        self.errors: Counter[ErrorKind] = Counter()
        self.bytes_dropped = 0

    @property
    def buffered(self) -> int:
        """Bytes held of the frame in progress (never more than MAX_ENCODED)."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[DecodedFrame | FrameError]:
        out: list[DecodedFrame | FrameError] = []
        data = bytes(data)
        start, n = 0, len(data)
        while start <= n:
            z = data.find(0, start)
            end = n if z < 0 else z
            if self._discarding:
                self.bytes_dropped += end - start
            elif len(self._buf) + end - start > MAX_ENCODED:
                dropped = len(self._buf) + end - start
                self._error(out, FrameError(ErrorKind.OVERSIZE, "no delimiter", dropped))
                self._buf.clear()
                self._discarding = z < 0
            else:
                self._buf += data[start:end]
                if z >= 0 and self._buf:
                    encoded = bytes(self._buf)
                    self._buf.clear()
                    record = decode_frame(encoded)
                    if isinstance(record, DecodedFrame) and not self._accepts(record):
                        record = FrameError(
                            ErrorKind.DIRECTION,
                            f"{record.message.TYPE.name} is not sent by the peer",
                            len(encoded),
                            record.seq,
                            record.message.TYPE,
                        )
                    if isinstance(record, FrameError):
                        self._error(out, record)
                    else:
                        self.frames += 1
                        out.append(record)
            if z < 0:
                break
            self._discarding = False
            start = z + 1
        return out

    def _accepts(self, frame: DecodedFrame) -> bool:
        return self._accept is None or self._accept(frame.message.TYPE)

    def _error(self, out: list[DecodedFrame | FrameError], error: FrameError) -> None:
        self.errors[error.kind] += 1
        self.bytes_dropped += error.size
        out.append(error)
