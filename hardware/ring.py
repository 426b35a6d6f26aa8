"""The shared-memory ring of the serial-shm driver (PROTOCOL.md §9): pure layout, no I/O.

The reconstructor (device) creates and owns the ring, a file /dev/shm/<ring_name> that both
sides map with mmap. This module packs and unpacks the header and the slots given a buffer (a
memoryview of the mapping, or bytes in tests); it never opens, maps or unlinks anything.

    offset 0                     header, HEADER_SIZE bytes (written once, then read-only)
    HEADER_SIZE + i * slot_size  slot i, for i in 0 .. slot_count-1

    slot: seq_begin u64 | length u32 | pixel_crc u32 | rows u16 | columns u16 | 44 reserved
          | payload (length bytes, at SLOT_PAYLOAD_OFFSET) | ... | seq_end u64 (last 8 bytes)

The writer stores seq_begin = s (a new number), then the metadata and payload, then seq_end =
s, then announces (slot, s) in SLICE_READY. The reader reads seq_end, copies, reads seq_begin,
then checks seq_begin == seq_end == s and the CRC-32 of its copy: any mismatch is a torn or
stale slot, never an image.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

RING_MAGIC = b"MARING\x00\x01"
RING_VERSION = 1
HEADER_SIZE = 4096
PAGE = 4096
_HEADER = struct.Struct("<8sHHIIHHBBHIQq")  # PROTOCOL.md §9.2; 48 bytes
HEADER_CRC_OFFSET = 48  # u32 CRC-32 of bytes 0..47
_META = struct.Struct("<IIHH")  # at slot offset 8: length, pixel_crc, rows, columns
_SEQ_END = struct.Struct("<Q")  # seq_begin at offset 0, seq_end in the last 8 bytes
SLOT_PAYLOAD_OFFSET = 64
SLOT_TRAILER_SIZE = 8
MAX_SLOTS = 65_535
MAX_SLOT_SIZE = 0xFFFF_F000  # the largest multiple of PAGE that a u32 holds
_RESERVED_HEADER = ((25, 32), (HEADER_CRC_OFFSET + 4, HEADER_SIZE))  # must be zero
_SLOT_RESERVED = (20, SLOT_PAYLOAD_OFFSET)  # slot bytes 20..63: written as zero
BYTES_PER_PIXEL = 2


class RingError(Exception):
    """The ring's header is invalid, or a slot index or size is out of range."""


class TornSlotError(RingError):
    """A slot's content is not the announced slice (torn write, stale or corrupt): no image."""


def slot_size_for(max_rows: int, max_columns: int, bytes_per_pixel: int = BYTES_PER_PIXEL) -> int:
    """The smallest slot size, a multiple of PAGE, that holds a max_rows x max_columns image."""
    need = SLOT_PAYLOAD_OFFSET + max_rows * max_columns * bytes_per_pixel + SLOT_TRAILER_SIZE
    return -(-need // PAGE) * PAGE


@dataclass(frozen=True)
class RingHeader:
    slot_count: int
    slot_size: int  # bytes per slot, multiple of PAGE, >= slot_size_for(max_rows, max_columns)
    max_rows: int
    max_columns: int
    generation: int  # random non-zero u64 chosen when the ring is created; in HELLO_ACK
    created_us: int  # creation time, microseconds since the Unix epoch (diagnostic)
    bytes_per_pixel: int = BYTES_PER_PIXEL
    version: int = RING_VERSION

    @property
    def total_size(self) -> int:
        """The size of the shared-memory file."""
        return HEADER_SIZE + self.slot_count * self.slot_size

    @property
    def payload_capacity(self) -> int:
        return self.slot_size - SLOT_PAYLOAD_OFFSET - SLOT_TRAILER_SIZE

    def slot_offset(self, slot: int) -> int:
        if not 0 <= slot < self.slot_count:
            raise RingError(f"slot {slot} out of range 0..{self.slot_count - 1}")
        return HEADER_SIZE + slot * self.slot_size

    def validate(self) -> None:
        """Raise `RingError` unless the geometry is consistent."""
        if self.version != RING_VERSION:
            raise RingError(f"ring version {self.version}, this agent reads {RING_VERSION}")
        if self.bytes_per_pixel != BYTES_PER_PIXEL:
            raise RingError(f"{self.bytes_per_pixel} bytes per pixel, only 2 is supported")
        if not 1 <= self.slot_count <= MAX_SLOTS:
            raise RingError(f"slot count {self.slot_count} out of range 1..{MAX_SLOTS}")
        if not (1 <= self.max_rows <= 0xFFFF and 1 <= self.max_columns <= 0xFFFF):
            raise RingError(f"image size {self.max_rows}x{self.max_columns} out of range")
        if not 0 < self.slot_size <= MAX_SLOT_SIZE:
            raise RingError(f"slot size {self.slot_size} out of range 1..{MAX_SLOT_SIZE}")
        if self.slot_size % PAGE:
            raise RingError(f"slot size {self.slot_size} is not a multiple of {PAGE}")
        if self.slot_size < slot_size_for(self.max_rows, self.max_columns):
            raise RingError(
                f"slot size {self.slot_size} cannot hold {self.max_rows}x{self.max_columns}"
            )
        if self.generation == 0:
            raise RingError("ring generation 0 (not initialised)")

    def pack(self) -> bytes:
        """The HEADER_SIZE bytes of the header, CRC included (validated first)."""
        self.validate()
        body = _HEADER.pack(
            RING_MAGIC, self.version, HEADER_SIZE, self.slot_count, self.slot_size,
            self.max_rows, self.max_columns, self.bytes_per_pixel, 0, 0, 0, self.generation,
            self.created_us,
        )  # fmt: skip
        crc = struct.pack("<I", zlib.crc32(body))
        return (body + crc).ljust(HEADER_SIZE, b"\x00")

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview, header_only: bool = False) -> RingHeader:
        """The header at the start of `buf` (the whole mapping); raises `RingError` if it is
        not a valid header (reserved bytes included), or if `buf` is shorter than the ring it
        describes. `header_only=True` skips that size check (for the header's bytes alone)."""
        if len(buf) < HEADER_SIZE:
            raise RingError(f"{len(buf)} bytes, shorter than the {HEADER_SIZE}-byte header")
        raw = bytes(buf[:HEADER_SIZE])
        magic, version, hsize, count, ssize, rows, cols, bpp, _r1, _r2, _r3, gen, created = (
            _HEADER.unpack_from(raw)
        )
        (crc,) = struct.unpack_from("<I", raw, HEADER_CRC_OFFSET)
        if magic != RING_MAGIC:
            raise RingError(f"bad magic {magic!r}: not a modality-agent ring")
        if zlib.crc32(raw[:HEADER_CRC_OFFSET]) != crc:
            raise RingError("header CRC mismatch (corrupt or being initialised)")
        if hsize != HEADER_SIZE:
            raise RingError(f"header size {hsize} != {HEADER_SIZE}")
        for lo, hi in _RESERVED_HEADER:
            if raw[lo:hi].count(0) != hi - lo:
                raise RingError(f"reserved header bytes {lo}..{hi - 1} are not zero")
        header = cls(count, ssize, rows, cols, gen, created, bpp, version)
        header.validate()
        if not header_only and len(buf) < header.total_size:
            raise RingError(f"mapping is {len(buf)} bytes, the ring needs {header.total_size}")
        return header


@dataclass(frozen=True)
class SlotContents:
    """An intact copy of a slot's slice."""

    seq: int
    rows: int
    columns: int
    payload: bytearray  # little-endian u16, row-major, a private copy

    def pixels(self) -> npt.NDArray[np.uint16]:
        return np.frombuffer(self.payload, dtype="<u2").reshape(self.rows, self.columns)


def begin_slot_write(buf: memoryview, header: RingHeader, slot: int, seq: int) -> None:
    """Writer step 1: claim the slot for write number `seq` (seq_begin = seq)."""
    off = header.slot_offset(slot)
    _SEQ_END.pack_into(buf, off, seq)


def write_slot_payload(
    buf: memoryview, header: RingHeader, slot: int, rows: int, columns: int, payload: bytes,
    crc: int | None = None,
) -> int:  # fmt: skip
    """Writer step 2: metadata and pixels. Returns the CRC-32 of the payload (`crc`, when the
    writer already knows it: a reconstructor writing the same pixels again)."""
    off = header.slot_offset(slot)
    length = len(payload)
    if (
        length != rows * columns * header.bytes_per_pixel
        or not 0 < rows <= header.max_rows
        or not 0 < columns <= header.max_columns
    ):
        raise RingError(f"payload of {length} bytes for {rows}x{columns} does not fit")
    if crc is None:
        crc = zlib.crc32(payload)
    _META.pack_into(buf, off + 8, length, crc, rows, columns)
    lo, hi = _SLOT_RESERVED
    buf[off + lo : off + hi] = bytes(hi - lo)
    start = off + SLOT_PAYLOAD_OFFSET
    buf[start : start + length] = payload
    return crc


def end_slot_write(buf: memoryview, header: RingHeader, slot: int, seq: int) -> None:
    """Writer step 3: seal the slot (seq_end = seq). Only then announce it."""
    off = header.slot_offset(slot)
    _SEQ_END.pack_into(buf, off + header.slot_size - SLOT_TRAILER_SIZE, seq)


def write_slot(
    buf: memoryview, header: RingHeader, slot: int, seq: int, rows: int, columns: int,
    payload: bytes, crc: int | None = None,
) -> int:  # fmt: skip
    """All three writer steps in order (the device side, and the simulator). Returns the CRC."""
    begin_slot_write(buf, header, slot, seq)
    crc = write_slot_payload(buf, header, slot, rows, columns, payload, crc)
    end_slot_write(buf, header, slot, seq)
    return crc


def read_slot(
    buf: bytes | bytearray | memoryview,
    header: RingHeader,
    slot: int,
    seq: int,
    pixel_crc: int,
    length: int | None = None,
    rows: int | None = None,
    columns: int | None = None,
) -> SlotContents:
    """Copy slot `slot`, announced with slot sequence `seq` and CRC-32 `pixel_crc` (and, as
    the host MUST pass them, the announced `length`, `rows` and `columns`).

    Reads in the reverse of the writer's order (seqlock): seq_end first, then the metadata and
    the payload into a private copy, then seq_begin last. Then checks that both sequence numbers
    equal `seq`, that length, shape and CRC agree with the slot's metadata and the announcement,
    and the CRC-32 of the copy. Raises `TornSlotError` on any mismatch."""
    off = header.slot_offset(slot)
    end_off = off + header.slot_size - SLOT_TRAILER_SIZE
    (seq_end,) = _SEQ_END.unpack(bytes(buf[end_off : end_off + SLOT_TRAILER_SIZE]))
    slot_len, slot_crc, slot_rows, slot_cols = _META.unpack(
        bytes(buf[off + 8 : off + 8 + _META.size])
    )
    if slot_len > header.payload_capacity:
        raise TornSlotError(f"slot {slot}: length {slot_len} > capacity {header.payload_capacity}")
    start = off + SLOT_PAYLOAD_OFFSET
    payload = bytearray(buf[start : start + slot_len])
    (seq_begin,) = _SEQ_END.unpack(bytes(buf[off : off + 8]))
    where = f"slot {slot} (announced seq {seq})"
    if seq_begin != seq or seq_end != seq:
        raise TornSlotError(f"{where}: seq_begin {seq_begin}, seq_end {seq_end}")
    if length is not None and slot_len != length:
        raise TornSlotError(f"{where}: length {slot_len}, announced {length}")
    if (rows is not None and slot_rows != rows) or (columns is not None and slot_cols != columns):
        raise TornSlotError(f"{where}: {slot_rows}x{slot_cols}, announced {rows}x{columns}")
    if not (0 < slot_rows <= header.max_rows and 0 < slot_cols <= header.max_columns):
        raise TornSlotError(f"{where}: {slot_rows}x{slot_cols} outside the ring's maximum")
    if slot_len != slot_rows * slot_cols * header.bytes_per_pixel:
        raise TornSlotError(f"{where}: length {slot_len} for {slot_rows}x{slot_cols}")
    if slot_crc != pixel_crc:
        raise TornSlotError(f"{where}: slot CRC {slot_crc:08x}, announced {pixel_crc:08x}")
    actual = zlib.crc32(payload)
    if actual != pixel_crc:
        raise TornSlotError(f"{where}: pixel CRC {actual:08x}, expected {pixel_crc:08x}")
    return SlotContents(seq, slot_rows, slot_cols, payload)
