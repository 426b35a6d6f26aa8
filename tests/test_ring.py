"""The shared-memory ring layout (hardware/ring.py): header, slots, torn-read detection."""

from __future__ import annotations

import struct
import time
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hardware.ring import (
    HEADER_SIZE,
    MAX_SLOT_SIZE,
    PAGE,
    RING_MAGIC,
    SLOT_PAYLOAD_OFFSET,
    RingError,
    RingHeader,
    TornSlotError,
    begin_slot_write,
    end_slot_write,
    read_slot,
    slot_size_for,
    write_slot,
    write_slot_payload,
)


def make_ring(slots: int = 4, rows: int = 64, cols: int = 48) -> tuple[RingHeader, memoryview]:
    header = RingHeader(slots, slot_size_for(rows, cols), rows, cols, 0xC0FFEE, 1_718_000_000)
    buf = bytearray(header.total_size)
    buf[:HEADER_SIZE] = header.pack()
    return header, memoryview(buf)


def image(rows: int, cols: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4096, (rows, cols), dtype=np.uint16)


def test_slot_size_for_512() -> None:
    assert slot_size_for(512, 512) == 528_384  # 129 pages: 64 + 524288 + 8 bytes rounded up
    assert slot_size_for(512, 512) % PAGE == 0


@settings(max_examples=200)
@given(
    slots=st.integers(1, 65535),
    rows=st.integers(1, 1024),
    cols=st.integers(1, 1024),
    extra_pages=st.integers(0, 3),
    generation=st.integers(1, 2**64 - 1),
    created=st.integers(-(2**63), 2**63 - 1),
)
def test_header_round_trips(
    slots: int, rows: int, cols: int, extra_pages: int, generation: int, created: int
) -> None:
    size = slot_size_for(rows, cols) + extra_pages * PAGE
    header = RingHeader(slots, size, rows, cols, generation, created)
    packed = header.pack()
    assert len(packed) == HEADER_SIZE and packed[:8] == RING_MAGIC
    assert RingHeader.unpack(packed, header_only=True) == header


def corrupt(packed: bytes, offset: int, value: bytes, fix_crc: bool = True) -> bytes:
    data = bytearray(packed)
    data[offset : offset + len(value)] = value
    if fix_crc:
        struct.pack_into("<I", data, 48, zlib.crc32(bytes(data[:48])))
    return bytes(data)


GOOD = RingHeader(8, slot_size_for(512, 512), 512, 512, 42, 0).pack()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00" * 100, "shorter"),
        (corrupt(GOOD, 0, b"XXRING\x00\x01"), "magic"),
        (corrupt(GOOD, 20, b"\x01", fix_crc=False), "CRC"),
        (corrupt(GOOD, 8, struct.pack("<H", 2)), "version"),
        (corrupt(GOOD, 10, struct.pack("<H", 8192)), "header size"),
        (corrupt(GOOD, 12, struct.pack("<I", 0)), "slot count"),
        (corrupt(GOOD, 16, struct.pack("<I", PAGE * 10)), "cannot hold"),
        (corrupt(GOOD, 16, struct.pack("<I", slot_size_for(512, 512) + 8)), "multiple"),
        (corrupt(GOOD, 24, b"\x04"), "bytes per pixel"),
        (corrupt(GOOD, 20, b"\x00\x00"), "image size"),
        (corrupt(GOOD, 32, b"\x00" * 8), "generation 0"),
        (corrupt(GOOD, 25, b"\x01"), "reserved header bytes 25"),
        (corrupt(GOOD, 4095, b"\x01"), "reserved header bytes 52"),
        (GOOD + b"\x00" * 100, "mapping is"),
        (GOOD, "mapping is"),  # a header alone is not a ring
    ],
)
def test_header_validation(data: bytes, message: str) -> None:
    with pytest.raises(RingError, match=message):
        RingHeader.unpack(data)


def test_slot_size_must_fit_a_u32() -> None:
    too_big = slot_size_for(65535, 65535)
    assert too_big > 0xFFFF_FFFF
    with pytest.raises(RingError, match="slot size"):
        RingHeader(1, too_big, 65535, 65535, 1, 0).validate()
    largest = RingHeader(1, MAX_SLOT_SIZE, 46340, 46340, 1, 0)  # 46340² · 2 + 72 fits
    assert RingHeader.unpack(largest.pack(), header_only=True) == largest


def test_pack_refuses_an_invalid_geometry() -> None:
    with pytest.raises(RingError):
        RingHeader(4, 4096, 512, 512, 1, 0).pack()


def test_write_then_read_gives_the_image() -> None:
    header, buf = make_ring()
    assert RingHeader.unpack(buf) == header
    pixels = image(64, 48, 1)
    crc = write_slot(buf, header, 2, 17, 64, 48, pixels.astype("<u2").tobytes())
    got = read_slot(buf, header, 2, 17, crc, length=64 * 48 * 2)
    assert got.seq == 17 and (got.rows, got.columns) == (64, 48)
    assert np.array_equal(got.pixels(), pixels)
    buf[HEADER_SIZE + 2 * header.slot_size + SLOT_PAYLOAD_OFFSET] ^= 0xFF  # later change
    assert np.array_equal(got.pixels(), pixels)  # the copy is private


def test_a_crc_the_writer_gives_is_stored_and_still_checked_by_the_reader() -> None:
    """A device writing pixels it already knows the CRC of skips computing it; the reader
    checks its copy against the announcement all the same: a wrong CRC is a torn slot."""
    header, buf = make_ring()
    pixels = image(64, 48, 4).tobytes()
    crc = zlib.crc32(pixels)
    assert write_slot(buf, header, 0, 3, 64, 48, pixels, crc) == crc
    assert read_slot(buf, header, 0, 3, crc).payload == pixels
    assert write_slot(buf, header, 1, 4, 64, 48, pixels, crc ^ 1) == crc ^ 1
    with pytest.raises(TornSlotError, match="pixel CRC"):
        read_slot(buf, header, 1, 4, crc ^ 1)


def test_writer_interrupted_before_seq_end_is_torn() -> None:
    """A slot rewritten (seq 18) up to its payload but not sealed: an announcement of either
    the old (17) or the new (18) write is torn, never an image."""
    header, buf = make_ring()
    old = image(64, 48, 1).tobytes()
    crc_old = write_slot(buf, header, 1, 17, 64, 48, old)
    begin_slot_write(buf, header, 1, 18)
    with pytest.raises(TornSlotError, match="seq_begin 18, seq_end 17"):
        read_slot(buf, header, 1, 17, crc_old)
    crc_new = write_slot_payload(buf, header, 1, 64, 48, image(64, 48, 2).tobytes())
    for seq, crc in ((17, crc_old), (18, crc_new)):
        with pytest.raises(TornSlotError, match="seq_end 17"):
            read_slot(buf, header, 1, seq, crc)
    end_slot_write(buf, header, 1, 18)
    assert read_slot(buf, header, 1, 18, crc_new).seq == 18
    with pytest.raises(TornSlotError):  # a stale announcement of the old write
        read_slot(buf, header, 1, 17, crc_old)


def test_corrupt_payload_metadata_or_announcement_is_torn() -> None:
    header, buf = make_ring()
    pixels = image(64, 48, 3).tobytes()
    crc = write_slot(buf, header, 0, 5, 64, 48, pixels)
    with pytest.raises(TornSlotError, match="announced"):
        read_slot(buf, header, 0, 5, crc ^ 1)  # the announcement's CRC disagrees
    with pytest.raises(TornSlotError, match="length"):
        read_slot(buf, header, 0, 5, crc, length=10)
    off = HEADER_SIZE + SLOT_PAYLOAD_OFFSET + 100
    buf[off] ^= 0x40  # a bit flips in the payload, sequence numbers intact
    with pytest.raises(TornSlotError, match="pixel CRC"):
        read_slot(buf, header, 0, 5, crc)
    buf[off] ^= 0x40
    struct.pack_into("<I", buf, HEADER_SIZE + 8, header.payload_capacity + 1)  # length garbage
    with pytest.raises(TornSlotError, match="capacity"):
        read_slot(buf, header, 0, 5, crc)
    struct.pack_into("<IIHH", buf, HEADER_SIZE + 8, len(pixels), crc, 48, 48)  # shape garbage
    with pytest.raises(TornSlotError, match="for 48x48"):
        read_slot(buf, header, 0, 5, crc)


def test_announced_shape_must_match_the_slot() -> None:
    header, buf = make_ring()
    crc = write_slot(buf, header, 0, 5, 64, 48, image(64, 48, 4).tobytes())
    assert read_slot(buf, header, 0, 5, crc, 64 * 48 * 2, rows=64, columns=48).rows == 64
    with pytest.raises(TornSlotError, match="announced 48x64"):
        read_slot(buf, header, 0, 5, crc, 64 * 48 * 2, rows=48, columns=64)
    with pytest.raises(TornSlotError, match="announced 64x47"):
        read_slot(buf, header, 0, 5, crc, rows=64, columns=47)


def test_writer_zeroes_the_reserved_slot_bytes() -> None:
    header, buf = make_ring()
    off = HEADER_SIZE + header.slot_size
    buf[off + 20 : off + 64] = b"\xee" * 44  # garbage from an earlier life of the memory
    write_slot(buf, header, 1, 9, 64, 48, bytes(64 * 48 * 2))
    assert bytes(buf[off + 20 : off + 64]) == bytes(44)


def test_zero_rows_never_written_or_read() -> None:
    header, buf = make_ring()
    with pytest.raises(RingError, match="does not fit"):
        write_slot(buf, header, 0, 1, 0, 48, b"")
    begin_slot_write(buf, header, 0, 3)
    struct.pack_into("<IIHH", buf, HEADER_SIZE + 8, 0, zlib.crc32(b""), 0, 48)
    end_slot_write(buf, header, 0, 3)
    with pytest.raises(TornSlotError, match="0x48"):
        read_slot(buf, header, 0, 3, zlib.crc32(b""))


def test_slot_bounds() -> None:
    header, buf = make_ring(slots=2)
    with pytest.raises(RingError):
        read_slot(buf, header, 2, 1, 0)
    with pytest.raises(RingError):
        write_slot(buf, header, -1, 1, 64, 48, bytes(64 * 48 * 2))
    with pytest.raises(RingError, match="does not fit"):
        write_slot(buf, header, 0, 1, 64, 48, bytes(10))
    with pytest.raises(RingError, match="does not fit"):
        write_slot(buf, header, 0, 1, 65, 48, bytes(65 * 48 * 2))


@settings(max_examples=100)
@given(
    seq=st.integers(1, 2**64 - 1),
    rows=st.integers(1, 64),
    cols=st.integers(1, 48),
    cut=st.integers(0, 3),
)
def test_any_interrupted_write_is_never_an_image(seq: int, rows: int, cols: int, cut: int) -> None:
    """Interrupt a rewrite of a sealed slot after 0..3 of its steps; an announcement of the new
    write reads as an image only when all three were done."""
    header, buf = make_ring()
    write_slot(
        buf, header, 3, seq - 1 if seq > 1 else 2**64 - 1, rows, cols, bytes(rows * cols * 2)
    )
    payload = image(rows, cols, seq % 1000).tobytes()
    crc = zlib.crc32(payload)
    steps = [
        lambda: begin_slot_write(buf, header, 3, seq),
        lambda: write_slot_payload(buf, header, 3, rows, cols, payload),
        lambda: end_slot_write(buf, header, 3, seq),
    ]
    for step in steps[:cut]:
        step()
    if cut == 3:
        assert read_slot(buf, header, 3, seq, crc).payload == payload
    else:
        with pytest.raises(TornSlotError):
            read_slot(buf, header, 3, seq, crc)


def test_read_throughput_print() -> None:
    """Not asserted strictly: 512x512 slices read and checked per second (300/s needed)."""
    header, buf = make_ring(slots=8, rows=512, cols=512)
    crcs = [
        write_slot(buf, header, i, i + 1, 512, 512, image(512, 512, i).tobytes()) for i in range(8)
    ]
    started = time.perf_counter()
    n = 0
    while time.perf_counter() - started < 0.5:
        read_slot(buf, header, n % 8, n % 8 + 1, crcs[n % 8]).pixels()
        n += 1
    rate = n / (time.perf_counter() - started)
    print(f"\nring: {rate:,.0f} slices/s of 512x512x16 bit read and CRC-checked")
    assert rate > 300
