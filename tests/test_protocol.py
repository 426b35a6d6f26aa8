"""The serial-shm frame codec (hardware/protocol): round trips, resync, errors, sequence
accounting, the worked example of PROTOCOL.md, and a fuzz run of >= 100,000 inputs."""

from __future__ import annotations

import dataclasses
import random
import re
import struct
import time
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardware import base
from hardware.dose import IrradiationEvent
from hardware.protocol import (
    MAX_ENCODED,
    MAX_PAYLOAD,
    MAX_RESEND_FRAMES,
    MESSAGE_TYPES,
    AckMsg,
    AckStatus,
    AcquisitionType,
    DecodedFrame,
    EncodeError,
    ErrorKind,
    FrameDecoder,
    FrameError,
    HelloAckMsg,
    HelloMsg,
    HwErrorMsg,
    IrradiationEventMsg,
    LostReason,
    Message,
    Phantom,
    ResendMode,
    ResendRequestMsg,
    SeqKind,
    SequenceTracker,
    SeriesEndMsg,
    SeriesStartMsg,
    SetExamTokenMsg,
    SliceKind,
    SliceLostMsg,
    SliceReadyMsg,
    SliceReleaseMsg,
    SliceTracker,
    XRaySource,
    cobs_decode,
    cobs_encode,
    crc32,
    decode_frame,
    encode,
    hardware_error_event,
    irradiation_event,
    irradiation_event_message,
    sent_by_device,
    sent_by_host,
    series_end_event,
    series_start_event,
    series_start_message,
    slice_ready_event,
)
from hardware.protocol import fields as F
from hardware.protocol.framing import CRC, HEADER, SEQ_MODULO
from hardware.protocol.messages import DOSE_ALERT_LAYOUT, XRAY_SOURCE_LAYOUT, MsgType

DOC = Path(__file__).resolve().parent.parent / "hardware" / "PROTOCOL.md"

# --- strategies derived from each message's wire layout -------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
offsets = st.integers(-F.MAX_OFFSET_MIN, F.MAX_OFFSET_MIN).map(
    lambda m: timezone(timedelta(minutes=m))
)
times = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=offsets
)


LO_CHARS = st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\\")


def strategy_for(field: F.Field) -> st.SearchStrategy[Any]:
    if isinstance(field, F._Int):
        return st.integers(field.lo, field.hi)
    if isinstance(field, F._F64Field):
        return st.floats(
            min_value=field.lo, max_value=field.hi, exclude_min=field.open_lo and field.lo
            is not None, allow_nan=False, allow_infinity=False,
        )  # fmt: skip
    if field is F.BOOL:
        return st.booleans()
    if field is F.STR:
        return st.text(max_size=63)  # at most 252 bytes of UTF-8
    if field is F.TEXT64:
        return st.text(LO_CHARS, max_size=16)  # at most 64 bytes of UTF-8
    if isinstance(field, F.Str):
        assert field.pattern is not None
        limit = field.max_bytes
        return st.from_regex(field.pattern, fullmatch=True).filter(
            lambda s: len(s.encode()) <= limit
        )
    if field is F.TIME:
        return times
    if isinstance(field, F.Opt):
        return st.none() | strategy_for(field.inner)
    if isinstance(field, F.Array):
        return st.tuples(*[strategy_for(field.inner)] * field.n)
    if isinstance(field, F.Enum8):
        return st.sampled_from(field.values)
    if isinstance(field, F.Records):
        record = record_strategy(field.factory, field.layout)
        return st.lists(record, min_size=field.min_count, max_size=field.max_count).map(tuple)
    raise AssertionError(f"no strategy for {field.name}")


def record_strategy(cls: Any, layout: tuple[tuple[str, F.Field], ...]) -> st.SearchStrategy[Any]:
    return st.builds(cls, **{name: strategy_for(f) for name, f in layout})


def repair(m: Any) -> Any:
    """Make a message with in-range fields also satisfy its rules between fields (§4.4)."""
    r = dataclasses.replace
    if isinstance(m, HelloMsg | HelloAckMsg):
        lo, hi = sorted((max(1, m.min_version), max(1, m.max_version)))
        m = r(m, min_version=lo, max_version=hi)
    if isinstance(m, HelloAckMsg) and m.version:
        m = r(
            m, version=min(max(m.version, m.min_version), m.max_version),
            ring_name=m.ring_name or "ring", ring_generation=m.ring_generation or 1,
            bytes_per_pixel=2, slot_count=min(max(m.slot_count, 1), 65535),
            max_rows=m.max_rows or 1, max_columns=m.max_columns or 1,
        )  # fmt: skip
    if isinstance(m, ResendRequestMsg):
        if m.mode is ResendMode.FRAMES:
            m = r(m, count=min(max(m.count, 1), MAX_RESEND_FRAMES), series_key="", index=0)
        elif m.mode is ResendMode.SLICE:
            m = r(m, first_seq=0, count=0, series_key=m.series_key or "k")
        else:
            m = r(m, first_seq=0, count=0, series_key="", index=0)
    if isinstance(m, SeriesStartMsg):
        helical = m.scan_options == "HELICAL"
        pitch = (m.spiral_pitch_factor or 1.0) if helical else None
        m = r(m, spiral_pitch_factor=pitch, rescale_slope=m.rescale_slope or 1.0)
    if isinstance(m, SliceReadyMsg):
        columns = m.columns if m.rows * m.columns * 2 < 2**32 else 1
        m = r(m, columns=columns, pixel_length=m.rows * columns * 2)
    if isinstance(m, IrradiationEventMsg):
        start, end = sorted((m.start_time, m.end_time))
        spiral = m.acquisition_type is AcquisitionType.SPIRAL
        pitch = (m.pitch_factor or 1.0) if spiral else None
        m = r(m, start_time=start, end_time=end, pitch_factor=pitch)
    assert m.problem() is None, m.problem()
    return m


messages: st.SearchStrategy[Message] = st.one_of(
    [record_strategy(cls, cls.LAYOUT).map(repair) for cls in MESSAGE_TYPES.values()]
)
seqs = st.integers(0, SEQ_MODULO - 1)
flag_values = st.integers(0, 0xFFFF)


def largest(field: F.Field) -> Any:
    """The value with the longest encoding."""
    if isinstance(field, F._Int):
        return field.hi
    if isinstance(field, F._F64Field):
        return 1.0
    if field is F.BOOL:
        return True
    if isinstance(field, F.Str):
        n = field.max_bytes
        candidates = ("x" * n, "X" * n, "1." + "2" * (n - 2), "HELICAL", "HFDR")
        return max((c for c in candidates if field.problem(c, len(c)) is None), key=len)
    if field is F.TIME:
        return datetime(2024, 1, 1, tzinfo=UTC)
    if isinstance(field, F.Opt):
        return largest(field.inner)
    if isinstance(field, F.Array):
        return (largest(field.inner),) * field.n
    if isinstance(field, F.Enum8):
        return next(iter(field.cls))
    if isinstance(field, F.Records):
        values = {name: largest(f) for name, f in field.layout}
        return (field.factory(**values),) * field.max_count
    raise AssertionError(field.name)


def largest_message(cls: type[Message]) -> Message:
    factory: Any = cls
    message: Message = repair(factory(**{name: largest(f) for name, f in cls.LAYOUT}))
    return message


def frames_of(records: list[DecodedFrame | FrameError]) -> list[DecodedFrame]:
    return [r for r in records if isinstance(r, DecodedFrame)]


def raw_frame(msg_type: int, payload: bytes, seq: int = 0, version: int = 1) -> bytes:
    """A delimited frame with a correct CRC around arbitrary header values and payload."""
    body = HEADER.pack(version, msg_type, 0, seq, len(payload)) + payload
    return b"\x00" + cobs_encode(body + CRC.pack(crc32(body))) + b"\x00"


# --- round trips ----------------------------------------------------------------------------


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(message=messages, seq=seqs, flags=flag_values)
def test_every_message_round_trips(message: Message, seq: int, flags: int) -> None:
    frame = encode(message, seq, flags)
    assert frame[0] == 0 and frame[-1] == 0 and 0 not in frame[1:-1]
    assert len(frame) <= MAX_ENCODED + 2
    (record,) = FrameDecoder().feed(frame)
    assert record == DecodedFrame(seq, flags, message)


@pytest.mark.parametrize("cls", list(MESSAGE_TYPES.values()), ids=lambda c: c.__name__)
def test_largest_message_of_each_type_fits(cls: type[Message]) -> None:
    message = largest_message(cls)
    frame = encode(message, 7)
    assert len(frame) - 16 <= MAX_PAYLOAD  # 2 delimiters + 14 header/CRC, before COBS
    assert frames_of(FrameDecoder().feed(frame)) == [DecodedFrame(7, 0, message)]


@settings(max_examples=200)
@given(
    batch=st.lists(st.tuples(messages, seqs), min_size=1, max_size=8),
    cuts=st.lists(st.integers(1, 64), min_size=1, max_size=40),
)
def test_any_chunking_gives_the_same_frames(
    batch: list[tuple[Message, int]], cuts: list[int]
) -> None:
    stream = b"".join(encode(m, s) for m, s in batch)
    decoder, records, pos, i = FrameDecoder(), [], 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        records += decoder.feed(stream[pos : pos + step])
        pos, i = pos + step, i + 1
    assert records == [DecodedFrame(s, 0, m) for m, s in batch]
    assert decoder.buffered == 0


@settings(max_examples=300)
@given(
    batch=st.lists(st.tuples(messages, seqs), min_size=1, max_size=6),
    garbage=st.lists(
        st.binary(max_size=300) | st.binary(min_size=8300, max_size=12000), max_size=7
    ),
)
def test_resynchronises_after_garbage(
    batch: list[tuple[Message, int]], garbage: list[bytes]
) -> None:
    """Garbage between frames (any bytes, any length) costs no frame."""
    stream = bytearray()
    for i, (m, s) in enumerate(batch):
        stream += garbage[i % len(garbage)] if garbage else b""
        stream += encode(m, s)
    decoder = FrameDecoder()
    records = decoder.feed(bytes(stream))
    assert frames_of(records) == [DecodedFrame(s, 0, m) for m, s in batch]
    assert all(isinstance(r, DecodedFrame | FrameError) for r in records)


def test_cobs_known_vectors() -> None:
    # from the COBS paper / Wikipedia examples
    assert cobs_encode(b"") == b"\x01"
    assert cobs_encode(b"\x00") == b"\x01\x01"
    assert cobs_encode(b"\x11\x22\x00\x33") == b"\x03\x11\x22\x02\x33"
    assert cobs_encode(b"\x11\x00\x00\x00") == b"\x02\x11\x01\x01\x01"
    block = bytes(range(1, 255))  # 254 non-zero bytes
    assert cobs_encode(block)[0] == 0xFF
    for data in (b"", b"\x00", block, block + b"\x00", b"\x00" * 600, bytes(range(256)) * 3):
        assert cobs_decode(cobs_encode(data)) == data
    assert crc32(b"123456789") == 0xCBF43926


# --- errors -----------------------------------------------------------------------------------

SAMPLE_SLICE = SliceReadyMsg(
    series_key="RECON-20240611-0003",
    index=41,
    slot=9,
    slot_seq=1234567,
    rows=512,
    columns=512,
    pixel_length=524288,
    pixel_crc=0xDC4ED592,  # the pixels of PROTOCOL.md §11: (r·512 + c) mod 65 536
    image_position=(-175.0, -175.0, -123.5),
    table_position_mm=-123.5,
    acquisition_time=datetime(2024, 6, 11, 9, 30, 15, 250000, tzinfo=timezone(timedelta(hours=2))),
)


def only_error(data: bytes) -> FrameError:
    (record,) = FrameDecoder().feed(data)
    assert isinstance(record, FrameError), record
    return record


def test_oversize_partial_frame_is_dropped_and_memory_bounded() -> None:
    decoder = FrameDecoder()
    records = []
    for _ in range(10):
        records += decoder.feed(b"\x55" * 1000)
        assert decoder.buffered <= MAX_ENCODED
    assert [r.kind for r in records if isinstance(r, FrameError)] == [ErrorKind.OVERSIZE]
    records = decoder.feed(b"\x55" * 10 + encode(SAMPLE_SLICE, 1))
    assert frames_of(records) == [DecodedFrame(1, 0, SAMPLE_SLICE)]
    assert only_error(b"\x55" * (MAX_ENCODED + 1) + b"\x00").kind is ErrorKind.OVERSIZE


def test_frame_error_kinds() -> None:
    good = encode(SAMPLE_SLICE, 5)[1:-1]
    assert only_error(b"\x05\x01\x00").kind is ErrorKind.COBS
    assert only_error(cobs_encode(b"abc") + b"\x00").kind is ErrorKind.TOO_SHORT
    raw = bytearray(cobs_decode(good) or b"")
    raw[20] ^= 0x01
    assert only_error(cobs_encode(bytes(raw)) + b"\x00").kind is ErrorKind.CRC
    version = only_error(raw_frame(MsgType.SERIES_END, b"\x00\x00\x00\x00\x00", 9, version=2))
    assert (version.kind, version.seq) == (ErrorKind.VERSION, 9)
    body = HEADER.pack(1, MsgType.SERIES_END, 0, 3, 99) + b"\x00" * 5
    length = only_error(b"\x00" + cobs_encode(body + CRC.pack(crc32(body))) + b"\x00")
    assert (length.kind, length.seq) == (ErrorKind.LENGTH, 3)
    unknown = only_error(raw_frame(0x7E, b"", 11))
    assert (unknown.kind, unknown.seq, unknown.msg_type) == (ErrorKind.UNKNOWN_TYPE, 11, 0x7E)


def _irradiation_payload(**changes: Any) -> bytes:
    return raw_frame(MsgType.IRRADIATION_EVENT, _encode_fields(IRRADIATION, **changes))


def loose(field: F.Field) -> F.Field:
    """The same wire encoding without range checks: to build payloads that must not decode."""
    if isinstance(field, F.Str):
        return F.STR
    if isinstance(field, F._Int):
        return {1: F.U8, 2: F.U16, 4: F.U32, 8: F.U64}[field._s.size]
    if isinstance(field, F._F64Field):
        return F.F64
    if isinstance(field, F.Enum8):
        return F.U8
    if isinstance(field, F.Opt):
        return F.Opt(loose(field.inner))
    if isinstance(field, F.Array):
        return F.Array(loose(field.inner), field.n)
    if isinstance(field, F.Records):
        return F.Records(field.factory, loose_layout(field.layout), 255)
    return field


def loose_layout(layout: tuple[tuple[str, F.Field], ...]) -> tuple[tuple[str, F.Field], ...]:
    return tuple((name, loose(f)) for name, f in layout)


def _encode_fields(message: Any, **changes: Any) -> bytes:
    """The payload of `message` with `changes`, encoded without any range or rule check."""
    out = bytearray()
    F.encode_fields(dataclasses.replace(message, **changes), loose_layout(message.LAYOUT), out)
    return bytes(out)


IRRADIATION = IrradiationEventMsg(
    token="EXAM-1",
    event_uid="1.2.826.0.1.3680043.10.1234.1",
    start_time=datetime(2024, 6, 11, 9, 30, tzinfo=UTC),
    end_time=datetime(2024, 6, 11, 9, 30, 6, tzinfo=UTC),
    acquisition_type=AcquisitionType.SPIRAL,
    target_region="CHEST",
    exposure_time_s=5.5,
    scanning_length_mm=320.0,
    single_collimation_mm=0.625,
    total_collimation_mm=40.0,
    pitch_factor=0.984,
    sources=(XRaySource("A", 120.0, 260.0, 200.0, 0.5),),
    mean_ctdivol_mgy=8.1,
    ctdi_phantom=Phantom.BODY_32,
    dlp_mgycm=290.0,
    alerts=(),
)


SLICE_FIELDS = _encode_fields(SAMPLE_SLICE)


@pytest.mark.parametrize(
    "frame",
    [
        raw_frame(MsgType.SERIES_END, b"\x01A"),  # truncated u32
        raw_frame(MsgType.SERIES_END, b"\x01A\x00\x00\x00\x00\xff"),  # trailing byte
        raw_frame(MsgType.SERIES_END, b"\x02\xc3\x28\x00\x00\x00\x00"),  # invalid UTF-8
        raw_frame(MsgType.SERIES_END, b"\x09A\x00\x00\x00\x00"),  # string past the end
        raw_frame(MsgType.HEARTBEAT, b"\x00" * 8 + b"\x09" + b"\x00" * 4),  # bad enum
        raw_frame(MsgType.HW_ERROR, b"\x01E\x00\x02"),  # opt presence byte 2
        raw_frame(MsgType.SLICE_READY, SLICE_FIELDS[:-10] + struct.pack("<qh", 0, 2000)),
        raw_frame(
            MsgType.SLICE_READY,
            SLICE_FIELDS[:-42] + struct.pack("<d", float("nan")) + b"\x00" * 34,
        ),
        raw_frame(MsgType.SLICE_READY, SLICE_FIELDS[:-10] + struct.pack("<qh", 2**63 - 1, 0)),
        _irradiation_payload(sources=()),  # at least one tube
        raw_frame(
            MsgType.IRRADIATION_EVENT, _encode_fields(IRRADIATION)[:-1] + b"\x05"
        ),  # 5 alerts > 4, and then truncated
    ],
)  # fmt: skip
def test_bad_payload(frame: bytes) -> None:
    error = only_error(frame)
    assert error.kind is ErrorKind.BAD_PAYLOAD, error
    assert error.seq == 0 and error.msg_type is not None


SAMPLE_START = series_start_message(
    base.SeriesStart(
        token="T", series_key="K", series_number=3, description="d", protocol_name="p",
        body_part="CHEST", patient_position="HFS", image_orientation=(1, 0, 0, 0, 1, 0),
        rows=512, columns=512, pixel_spacing_mm=(0.7, 0.7), slice_thickness_mm=1.0,
        kernel="STANDARD", kvp=120, tube_current_ma=200, exposure_time_ms=500,
        exposure_mas=100, revolution_time_s=0.5, single_collimation_mm=0.625,
        total_collimation_mm=40, spiral_pitch_factor=None, scan_options="AXIAL",
        data_collection_diameter_mm=500, reconstruction_diameter_mm=358.4, simulated=True,
        irradiation_event_uid="1.2.826.0.1.3680043.10.1234.1", frame_of_reference_id=1,
    ),
)  # fmt: skip
HELLO_ACK = HelloAckMsg(1, 1, 1, "CT-9", "SN1", "modality-ring", 42, 8, 528384, 512, 512, 2)
RESEND_SLICE = ResendRequestMsg(ResendMode.SLICE, 0, 0, "K", 3)
LOST = SliceLostMsg("K", 3, LostReason.RECON_FAILED, "recon failed")


def _bad(message: Any, **changes: Any) -> bytes:
    return raw_frame(message.TYPE, _encode_fields(message, **changes))


RULE_BREAKERS = [
    ("series_key charset", _bad(SeriesEndMsg("K", 1), series_key="a/b")),
    ("series_key empty", _bad(SeriesEndMsg("K", 1), series_key="")),
    ("series_key > 64", _bad(SeriesEndMsg("K", 1), series_key="k" * 65)),
    ("token charset", _bad(SetExamTokenMsg("t"), token="a b")),
    ("series_number > 2^31-1", _bad(SAMPLE_START, series_number=2**31)),
    ("description > 64 bytes", _bad(SAMPLE_START, description="é" * 33)),
    ("patient_position", _bad(SAMPLE_START, patient_position="XYZ")),
    ("scan_options", _bad(SAMPLE_START, scan_options="SPIRAL")),
    ("pitch without HELICAL", _bad(SAMPLE_START, spiral_pitch_factor=1.0)),
    ("rows 0", _bad(SAMPLE_START, rows=0)),
    ("negative kvp", _bad(SAMPLE_START, kvp=-1.0)),
    ("cosine > 1", _bad(SAMPLE_START, image_orientation=(2.0, 0, 0, 0, 1, 0))),
    ("zero pixel spacing", _bad(SAMPLE_START, pixel_spacing_mm=(0.0, 0.7))),
    ("event UID in SERIES_START", _bad(SAMPLE_START, irradiation_event_uid="1.02")),
    ("pixel_length", _bad(SAMPLE_SLICE, pixel_length=524287)),
    ("slice rows 0", _bad(SAMPLE_SLICE, rows=0, pixel_length=0)),
    ("slot 65535", _bad(SAMPLE_SLICE, slot=65535)),
    ("slot_seq 0", _bad(SAMPLE_SLICE, slot_seq=0)),
    ("SLICE_LOST TORN", _bad(LOST, reason=4)),
    ("SLICE_LOST reason 0", _bad(LOST, reason=0)),
    ("FRAMES count 0", _bad(ResendRequestMsg(ResendMode.ALL, 0, 0, "", 0), mode=1)),
    ("FRAMES count 1025", _bad(ResendRequestMsg(ResendMode.FRAMES, 5, 1, "", 0), count=1025)),
    ("FRAMES with a key", _bad(ResendRequestMsg(ResendMode.FRAMES, 5, 1, "", 0), series_key="K")),
    ("SLICE with first_seq", _bad(RESEND_SLICE, first_seq=7)),
    ("SLICE without key", _bad(RESEND_SLICE, series_key="")),
    ("ALL with index", _bad(ResendRequestMsg(ResendMode.ALL, 0, 0, "", 0), index=1)),
    ("end before start", _bad(IRRADIATION, end_time=datetime(2024, 6, 11, 9, tzinfo=UTC))),
    ("pitch not spiral", _bad(IRRADIATION, acquisition_type=AcquisitionType.SEQUENCED)),
    ("spiral without pitch", _bad(IRRADIATION, pitch_factor=None)),
    ("event_uid leading zero", _bad(IRRADIATION, event_uid="1.2.03")),
    ("event_uid empty", _bad(IRRADIATION, event_uid="")),
    ("negative CTDIvol", _bad(IRRADIATION, mean_ctdivol_mgy=-0.1)),
    ("ring_name ..", _bad(HELLO_ACK, ring_name="..")),
    ("ring_name slash", _bad(HELLO_ACK, ring_name="a/b")),
    ("accepted without ring", _bad(HELLO_ACK, ring_name="")),
    ("bytes_per_pixel 1", _bad(HELLO_ACK, bytes_per_pixel=1)),
    ("version outside range", _bad(HELLO_ACK, version=2)),
    ("ACK of an unknown type", _bad(AckMsg(1, MsgType.HELLO, AckStatus.OK, ""), acked_type=0x7F)),
    ("HW_ERROR code", _bad(HwErrorMsg("E", "m", None), code="tube arc")),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "frame"), RULE_BREAKERS, ids=[r for r, _ in RULE_BREAKERS])
def test_check_8_rules_do_not_decode(rule: str, frame: bytes) -> None:
    error = only_error(frame)
    assert error.kind is ErrorKind.BAD_PAYLOAD, (rule, error)


@pytest.mark.parametrize(("rule", "frame"), RULE_BREAKERS, ids=[r for r, _ in RULE_BREAKERS])
def test_check_8_rules_do_not_encode(rule: str, frame: bytes) -> None:
    """What the decoder refuses, the encoder refuses too (with EncodeError, nothing else)."""
    raw = cobs_decode(frame[1:-1])
    assert raw is not None
    cls = MESSAGE_TYPES[raw[1]]
    values = dict(F.decode_fields(raw[10:-4], 0, loose_layout(cls.LAYOUT))[0])
    for name, f in cls.LAYOUT:  # restore enum types where the loose value is a valid member
        if isinstance(f, F.Enum8) and values[name] in set(f.cls):
            values[name] = f.cls(values[name])
    factory: Any = cls
    with pytest.raises(EncodeError):
        encode(factory(**values), 0)


def test_refused_hello_ack_ignores_ring_fields() -> None:
    refused = HelloAckMsg(0, 2, 3, "CT-9", "SN1", "", 0, 0, 0, 0, 0, 0)
    assert frames_of(FrameDecoder().feed(encode(refused, 0)))[0].message == refused


def test_payload_over_8192_bytes_is_a_length_error() -> None:
    error = only_error(raw_frame(MsgType.HW_ERROR, b"\x01E" + b"\x00" * (MAX_PAYLOAD + 1)))
    assert error.kind is ErrorKind.LENGTH


def test_direction_check() -> None:
    host_side = FrameDecoder(accept=sent_by_device)
    release = encode(SliceReleaseMsg("K", 1, 2, 3), 4)
    (record,) = host_side.feed(release)
    assert isinstance(record, FrameError) and record.kind is ErrorKind.DIRECTION
    assert (record.seq, record.msg_type, record.size) == (
        4,
        MsgType.SLICE_RELEASE,
        len(release) - 2,
    )
    assert host_side.errors[ErrorKind.DIRECTION] == 1
    assert frames_of(host_side.feed(encode(SAMPLE_SLICE, 5)))[0].message == SAMPLE_SLICE


def test_valid_irradiation_event_decodes() -> None:
    assert frames_of(FrameDecoder().feed(encode(IRRADIATION, 1)))[0].message == IRRADIATION


@pytest.mark.parametrize(
    ("message", "seq"),
    [
        (SetExamTokenMsg("x" * 256), 0),
        (SetExamTokenMsg("\ud800"), 0),
        (SeriesEndMsg("k", -1), 0),
        (SeriesEndMsg("k", 2**32), 0),
        (SeriesEndMsg("k", True), 0),
        (SeriesEndMsg("k", 1), -1),
        (SeriesEndMsg("k", 1), 2**32),
        (dataclasses.replace(SAMPLE_SLICE, table_position_mm=float("inf")), 0),
        (dataclasses.replace(SAMPLE_SLICE, acquisition_time=datetime(2024, 1, 1)), 0),
        (dataclasses.replace(SAMPLE_SLICE, image_position=(1.0, 2.0)), 0),  # type: ignore[arg-type]
        (dataclasses.replace(IRRADIATION, sources=()), 0),
        (dataclasses.replace(IRRADIATION, sources=IRRADIATION.sources * 5), 0),
        (HwErrorMsg("E", "m", 5), 0),  # type: ignore[arg-type]
    ],
)
def test_encode_rejects_values_that_do_not_fit(message: Message, seq: int) -> None:
    with pytest.raises(EncodeError):
        encode(message, seq)


def test_directions_cover_every_type_once() -> None:
    for t in MsgType:
        assert sent_by_device(t) or sent_by_host(t)
        assert (t in (MsgType.HEARTBEAT, MsgType.ACK)) == (sent_by_device(t) and sent_by_host(t))
    assert not sent_by_host(MsgType.SLICE_READY) and not sent_by_device(MsgType.SLICE_RELEASE)


def test_encode_rejects_non_messages() -> None:
    with pytest.raises(EncodeError):
        encode(base.SeriesEnd("k", 1), 0)  # type: ignore[arg-type]
    not_a_source = dataclasses.replace(IRRADIATION, sources=(base.SeriesEnd("k", 1),))  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        encode(not_a_source, 0)
    with pytest.raises(EncodeError):
        encode(SAMPLE_SLICE, "1")  # type: ignore[arg-type]
    with pytest.raises(EncodeError):
        encode(SAMPLE_SLICE, 1, None)  # type: ignore[arg-type]


# --- sequence accounting ----------------------------------------------------------------------


def test_sequence_tracker_in_order_gap_late_duplicate() -> None:
    t = SequenceTracker()
    assert t.observe(10).kind is SeqKind.FIRST
    assert t.observe(11).kind is SeqKind.IN_ORDER
    gap = t.observe(14)
    assert (gap.kind, gap.missing, gap.skipped) == (SeqKind.GAP, (12, 13), 2)
    assert t.missing == (12, 13)
    assert t.observe(13).kind is SeqKind.LATE
    assert t.observe(13).kind is SeqKind.DUPLICATE
    assert t.observe(11).kind is SeqKind.DUPLICATE
    assert not t.observe(11).deliver
    assert t.missing == (12,)
    t.forget(12)
    assert t.missing == () and t.next_expected == 15
    t.reset()
    assert t.observe(0).kind is SeqKind.FIRST


def test_sequence_tracker_wraps() -> None:
    t = SequenceTracker()
    t.observe(SEQ_MODULO - 2)
    assert t.observe(SEQ_MODULO - 1).kind is SeqKind.IN_ORDER
    assert t.observe(0).kind is SeqKind.IN_ORDER
    gap = t.observe(2)
    assert gap.missing == (1,)
    t2 = SequenceTracker()
    t2.observe(SEQ_MODULO - 1)
    assert t2.observe(1).missing == (0,)
    assert t2.observe(SEQ_MODULO - 1).kind is SeqKind.DUPLICATE
    with pytest.raises(ValueError):
        t2.observe(SEQ_MODULO)


def test_sequence_tracker_bounds_its_memory() -> None:
    t = SequenceTracker()
    t.observe(0)
    gap = t.observe(1_000_000)
    assert gap.skipped == 999_999 and len(gap.missing) == 4096
    assert len(t.missing) <= 4096 and t.lost_overflow == 999_999 - 4096


@settings(max_examples=300)
@given(st.lists(st.integers(0, 60), min_size=1, max_size=80))
def test_sequence_tracker_model(received: list[int]) -> None:
    """Against a model: each number is delivered at most once; what is missing is exactly
    what lies below the highest number seen and was never received."""
    t = SequenceTracker()
    seen: set[int] = set()
    delivered = []
    for s in received:
        r = t.observe(s)
        if s < received[0]:
            continue  # before the first frame: counts as behind (duplicate); not modelled
        if r.deliver:
            delivered.append(s)
        assert r.deliver == (s not in seen)
        seen.add(s)
    start = received[0]
    assert sorted(delivered) == sorted(seen)
    assert set(t.missing) == set(range(start, max(seen) + 1)) - seen


def test_slice_tracker() -> None:
    t = SliceTracker("S")
    assert [t.observe(i) for i in (0, 1, 3, 2, 3)] == [
        SliceKind.NEW,
        SliceKind.NEW,
        SliceKind.NEW,
        SliceKind.REORDERED,
        SliceKind.DUPLICATE,
    ]
    t.observe(6)
    assert t.missing() == [4, 5]
    t.mark_lost(5)
    assert t.missing(8) == [4, 7]
    assert not t.complete(8)
    t.observe(4)
    t.observe(7)
    assert t.complete(8) and t.lost == {5}


# --- conversion to driver events --------------------------------------------------------------


def test_event_conversions() -> None:
    (frame,) = FrameDecoder().feed(encode(SAMPLE_START, 0))
    assert isinstance(frame, DecodedFrame) and isinstance(frame.message, SeriesStartMsg)
    start = series_start_event(frame.message)
    assert start.irradiation_event_uid == SAMPLE_START.irradiation_event_uid
    assert start.frame_of_reference_id == 1
    assert series_start_message(start) == SAMPLE_START
    pixels = np.zeros((512, 512), dtype=np.uint16)
    event = slice_ready_event(SAMPLE_SLICE, pixels)
    assert (event.series_key, event.index, event.slot, event.slot_seq) == (
        "RECON-20240611-0003", 41, 9, 1234567,
    )  # fmt: skip
    dose = irradiation_event(IRRADIATION)
    assert isinstance(dose, IrradiationEvent) and dose.event_uid == IRRADIATION.event_uid
    assert irradiation_event_message(dose) == IRRADIATION
    with pytest.raises(ValueError):
        slice_ready_event(SAMPLE_SLICE, np.zeros((2, 2), dtype=np.uint16))
    assert series_end_event(SeriesEndMsg("K", 3)) == base.SeriesEnd("K", 3)
    assert hardware_error_event(HwErrorMsg("E1", "m", None)) == base.HardwareError("E1", "m")


# --- the worked example in PROTOCOL.md --------------------------------------------------------


def doc_hex(label: str) -> bytes:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"<!-- worked-example: {label} -->\s*```text\n(.*?)```", text, re.S)
    assert match, f"worked example {label!r} not found in PROTOCOL.md"
    hex_text = re.sub(r"^\s*[0-9a-f]{4}:", "", match.group(1), flags=re.M)
    return bytes.fromhex(hex_text)


def test_worked_example_matches_the_codec() -> None:
    frame = encode(SAMPLE_SLICE, 305)
    raw = cobs_decode(frame[1:-1])
    assert raw is not None
    assert doc_hex("payload") == raw[10:-4]
    assert doc_hex("raw") == raw
    assert doc_hex("line") == frame
    text = DOC.read_text(encoding="utf-8")
    assert f"0x{crc32(raw[:-4]):08X}" in text
    assert f"0x{SAMPLE_SLICE.pixel_crc:08X}" in text
    assert "`pixel(r, c) = (r · 512 + c) mod 65 536`" in text
    r, c = np.indices((512, 512))
    pixels = ((r * 512 + c) % 65536).astype("<u2").tobytes()
    assert pixels[:6] == b"\x00\x00\x01\x00\x02\x00"
    assert crc32(pixels) == SAMPLE_SLICE.pixel_crc


def test_doc_byte_tables_match_the_layouts() -> None:
    """Every message table in PROTOCOL.md lists the fields of its LAYOUT, in order."""
    text = DOC.read_text(encoding="utf-8")
    for cls in MESSAGE_TYPES.values():
        pattern = rf"^#### 0x{cls.TYPE:02X} {cls.TYPE.name}\b.*?(?=^#### |^## )"
        section = re.search(pattern, text, re.S | re.M)
        assert section, f"no table for {cls.TYPE.name}"
        tables = re.findall(r"(?:^\|.*\n)+", section.group(0), re.M)
        layouts = [cls.LAYOUT]
        if cls is IrradiationEventMsg:
            layouts += [XRAY_SOURCE_LAYOUT, DOSE_ALERT_LAYOUT]
        for table, layout in zip(tables, layouts, strict=False):
            names = re.findall(r"^\| `(\w+)` \|", table, re.M)
            assert names == [n for n, _ in layout], cls.TYPE.name
        assert len(tables) >= len(layouts)


# --- fuzzing ----------------------------------------------------------------------------------

FUZZ_INPUTS = 0
FUZZ_SEEN: Counter[str] = Counter()


def _mutations(rng: random.Random, pool: list[tuple[bytes, bytes]]) -> bytes:
    """One fuzz input: a mutated frame (on the line, or raw with its CRC fixed up), garbage,
    or a splice of several."""
    line, raw = rng.choice(pool)
    choice = rng.randrange(7)
    if choice == 0:
        return rng.randbytes(rng.randrange(0, 200))
    if choice == 1:  # flip bits on the line
        data = bytearray(line)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)
    if choice == 2:  # truncate or cut
        a, b = sorted(rng.randrange(len(line) + 1) for _ in range(2))
        return line[:a] + line[b:]
    if choice == 3:  # mutate the raw payload, then fix the CRC: exercises payload decoding
        body = bytearray(raw[:-4])
        for _ in range(rng.randrange(1, 4)):
            op = rng.randrange(3)
            pos = rng.randrange(len(body) + 1)
            if op == 0 and pos < len(body):
                body[pos] = rng.randrange(256)
            elif op == 1:
                body[pos:pos] = rng.randbytes(rng.randrange(1, 4))
            elif pos < len(body):
                del body[pos : pos + rng.randrange(1, 4)]
        if rng.random() < 0.7 and len(body) >= 10:  # keep the length field consistent
            struct.pack_into("<H", body, 8, (len(body) - 10) & 0xFFFF)
        return b"\x00" + cobs_encode(bytes(body) + CRC.pack(crc32(body))) + b"\x00"
    if choice == 4:  # splice two frames
        other, _ = rng.choice(pool)
        return line[: rng.randrange(len(line))] + other[rng.randrange(len(other)) :]
    if choice == 5:  # long run without a delimiter
        return rng.randbytes(rng.randrange(MAX_ENCODED - 100, MAX_ENCODED + 300)).replace(
            b"\x00", b"\x01"
        )
    return line


def _check_records(records: list[DecodedFrame | FrameError]) -> None:
    for r in records:
        if isinstance(r, DecodedFrame):
            FUZZ_SEEN["frame"] += 1
            # whatever decodes re-encodes (all values in range) and decodes to itself
            assert FrameDecoder().feed(encode(r.message, r.seq, r.flags)) == [r]
        else:
            assert isinstance(r, FrameError) and isinstance(r.kind, ErrorKind)
            FUZZ_SEEN[r.kind.value] += 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool=st.lists(st.tuples(messages, seqs), min_size=4, max_size=8), seed=st.integers())
def _fuzz_one(pool: list[tuple[Message, int]], seed: int) -> None:
    global FUZZ_INPUTS
    rng = random.Random(seed)
    frames = []
    for m, s in pool:
        line = encode(m, s)
        raw = cobs_decode(line[1:-1])
        assert raw is not None
        frames.append((line, raw))
    stream_decoder = FrameDecoder()
    for _ in range(2500):
        data = _mutations(rng, frames)
        FUZZ_INPUTS += 1
        _check_records(FrameDecoder().feed(data))  # alone, from a fresh decoder
        pos = 0
        while pos < len(data):  # and into one long-lived decoder, in random chunks
            step = rng.randrange(1, 300)
            _check_records(stream_decoder.feed(data[pos : pos + step]))
            pos += step
            assert stream_decoder.buffered <= MAX_ENCODED
    # after any history, a delimited good frame still decodes
    line, _ = frames[0]
    assert frames_of(stream_decoder.feed(line))[-1].message == pool[0][0]


@settings(max_examples=2000, deadline=None)
@given(blob=st.binary(max_size=600), chunk=st.integers(1, 64))
def _fuzz_bytes(blob: bytes, chunk: int) -> None:
    global FUZZ_INPUTS
    FUZZ_INPUTS += 1
    decoder = FrameDecoder()
    for i in range(0, len(blob), chunk):
        _check_records(decoder.feed(blob[i : i + chunk]))
    for record in decode_frame(blob.replace(b"\x00", b"")), decode_frame(blob):
        _check_records([record])


def test_fuzz_frame_decoder_100k_inputs() -> None:
    """>= 100,000 inputs (mutated frames, garbage, splices, over-long runs, raw random bytes),
    each fed alone and into a long-lived decoder in random chunks: no exception escapes
    (decoding raises nothing at all), every record is documented, memory stays bounded."""
    global FUZZ_INPUTS
    FUZZ_INPUTS = 0
    FUZZ_SEEN.clear()
    started = time.perf_counter()
    _fuzz_one()
    _fuzz_bytes()
    elapsed = time.perf_counter() - started
    print(f"\nfuzz: {FUZZ_INPUTS} inputs in {elapsed:.1f} s; records: {dict(FUZZ_SEEN)}")
    assert FUZZ_INPUTS >= 100_000
    # every path was taken (the direction check needs `FrameDecoder(accept=...)`)
    assert set(FUZZ_SEEN) >= {"frame"} | {
        k.value for k in ErrorKind if k is not ErrorKind.DIRECTION
    }


def test_throughput_print() -> None:
    """Not asserted: how fast the decoder is (a SLICE_READY per slice; 300/s are needed)."""
    frames = b"".join(encode(dataclasses.replace(SAMPLE_SLICE, index=i), i) for i in range(20000))
    decoder = FrameDecoder()
    started = time.perf_counter()
    n = 0
    for i in range(0, len(frames), 4096):
        n += len(decoder.feed(frames[i : i + 4096]))
    elapsed = time.perf_counter() - started
    assert n == 20000
    print(f"\ndecode: {n / elapsed:,.0f} SLICE_READY frames/s ({len(frames) // n} bytes each)")
