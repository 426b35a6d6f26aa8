"""The messages of the serial-shm protocol (PROTOCOL.md §6), one frozen dataclass each.

Every message class has a `TYPE` (the frame's type byte) and a `LAYOUT`: its fields in wire
order with their encodings (see `fields`). Layout and dataclass fields are checked to agree at
import time, so the byte tables in PROTOCOL.md, the layouts and the classes cannot drift apart
silently (the tests compare the documented tables with `LAYOUT`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from hardware.dose import (
    AcquisitionType,
    AlertKind,
    AlertQuantity,
    DoseAlert,
    Phantom,
    XRaySource,
)
from hardware.protocol.fields import (
    BOOL,
    F64,
    STR,
    TIME,
    U8,
    U16,
    U32,
    U64,
    Array,
    EncodeError,
    Enum8,
    Field,
    Opt,
    PayloadError,
    Records,
    check_layout,
    decode_fields,
    encode_fields,
)

Layout = tuple[tuple[str, Field], ...]
VEC3 = Array(F64, 3)


class MsgType(enum.IntEnum):
    HELLO = 0x01
    HELLO_ACK = 0x02
    HEARTBEAT = 0x03
    ACK = 0x04
    SET_EXAM_TOKEN = 0x10
    SLICE_RELEASE = 0x11
    RESEND_REQUEST = 0x12
    SERIES_START = 0x20
    SLICE_READY = 0x21
    SERIES_END = 0x22
    SLICE_LOST = 0x23
    IRRADIATION_EVENT = 0x24
    HW_ERROR = 0x25


class DeviceState(enum.IntEnum):
    HOST = 0  # sent by the host, which has no acquisition state
    IDLE = 1
    ACQUIRING = 2
    WAITING_FOR_SLOTS = 3  # backpressure: every slot is held by the host


class AckStatus(enum.IntEnum):
    OK = 0
    REJECTED = 1


class ResendMode(enum.IntEnum):
    FRAMES = 1  # re-send the messages of frames first_seq .. first_seq+count-1
    SLICE = 2  # re-announce slice `index` of `series_key`
    ALL = 3  # replay all unreleased state (as after HELLO)


class LostReason(enum.IntEnum):
    RECON_FAILED = 1  # the reconstructor could not produce the slice
    NOT_HELD = 2  # asked for by RESEND_REQUEST(SLICE) but not in a held slot
    DEVICE_RESTART = 3  # the reconstructor restarted and lost it
    TORN = 4  # the host could not read an intact copy (sent by neither side; host-local)


class Message:
    TYPE: ClassVar[MsgType]
    LAYOUT: ClassVar[Layout]


@dataclass(frozen=True)
class HelloMsg(Message):
    min_version: int
    max_version: int
    agent_name: str
    agent_version: str
    TYPE = MsgType.HELLO
    LAYOUT = (("min_version", U8), ("max_version", U8), ("agent_name", STR), ("agent_version", STR))


@dataclass(frozen=True)
class HelloAckMsg(Message):
    version: int  # 0: refused, no common version
    min_version: int
    max_version: int
    device_model: str
    device_serial: str
    ring_name: str
    ring_generation: int
    slot_count: int
    slot_size: int
    max_rows: int
    max_columns: int
    bytes_per_pixel: int
    TYPE = MsgType.HELLO_ACK
    LAYOUT = (
        ("version", U8), ("min_version", U8), ("max_version", U8), ("device_model", STR),
        ("device_serial", STR), ("ring_name", STR), ("ring_generation", U64),
        ("slot_count", U32), ("slot_size", U32), ("max_rows", U16), ("max_columns", U16),
        ("bytes_per_pixel", U8),
    )  # fmt: skip


@dataclass(frozen=True)
class HeartbeatMsg(Message):
    uptime_ms: int
    state: DeviceState
    held_slots: int
    TYPE = MsgType.HEARTBEAT
    LAYOUT = (("uptime_ms", U64), ("state", Enum8(DeviceState)), ("held_slots", U32))


@dataclass(frozen=True)
class AckMsg(Message):
    acked_seq: int
    acked_type: int
    status: AckStatus
    text: str
    TYPE = MsgType.ACK
    LAYOUT = (("acked_seq", U32), ("acked_type", U8), ("status", Enum8(AckStatus)), ("text", STR))


@dataclass(frozen=True)
class SetExamTokenMsg(Message):
    token: str  # "": no exam open
    TYPE = MsgType.SET_EXAM_TOKEN
    LAYOUT = (("token", STR),)


@dataclass(frozen=True)
class SliceReleaseMsg(Message):
    series_key: str
    index: int
    slot: int
    slot_seq: int
    TYPE = MsgType.SLICE_RELEASE
    LAYOUT = (("series_key", STR), ("index", U32), ("slot", U32), ("slot_seq", U64))


@dataclass(frozen=True)
class ResendRequestMsg(Message):
    mode: ResendMode
    first_seq: int  # FRAMES only, else 0
    count: int  # FRAMES only, else 0
    series_key: str  # SLICE only, else ""
    index: int  # SLICE only, else 0
    TYPE = MsgType.RESEND_REQUEST
    LAYOUT = (
        ("mode", Enum8(ResendMode)), ("first_seq", U32), ("count", U16),
        ("series_key", STR), ("index", U32),
    )  # fmt: skip


@dataclass(frozen=True)
class SeriesStartMsg(Message):
    token: str
    series_key: str
    series_number: int
    description: str
    protocol_name: str
    body_part: str
    patient_position: str
    image_orientation: tuple[float, float, float, float, float, float]
    rows: int
    columns: int
    pixel_spacing_mm: tuple[float, float]
    slice_thickness_mm: float
    kernel: str
    kvp: float
    tube_current_ma: float
    exposure_time_ms: float
    exposure_mas: float
    revolution_time_s: float
    single_collimation_mm: float
    total_collimation_mm: float
    spiral_pitch_factor: float | None
    scan_options: str
    data_collection_diameter_mm: float
    reconstruction_diameter_mm: float
    gantry_tilt_deg: float
    table_height_mm: float
    rescale_intercept: float
    rescale_slope: float
    contrast_agent: str | None
    simulated: bool
    TYPE = MsgType.SERIES_START
    LAYOUT = (
        ("token", STR), ("series_key", STR), ("series_number", U32), ("description", STR),
        ("protocol_name", STR), ("body_part", STR), ("patient_position", STR),
        ("image_orientation", Array(F64, 6)), ("rows", U16), ("columns", U16),
        ("pixel_spacing_mm", Array(F64, 2)), ("slice_thickness_mm", F64), ("kernel", STR),
        ("kvp", F64), ("tube_current_ma", F64), ("exposure_time_ms", F64),
        ("exposure_mas", F64), ("revolution_time_s", F64), ("single_collimation_mm", F64),
        ("total_collimation_mm", F64), ("spiral_pitch_factor", Opt(F64)),
        ("scan_options", STR), ("data_collection_diameter_mm", F64),
        ("reconstruction_diameter_mm", F64), ("gantry_tilt_deg", F64),
        ("table_height_mm", F64), ("rescale_intercept", F64), ("rescale_slope", F64),
        ("contrast_agent", Opt(STR)), ("simulated", BOOL),
    )  # fmt: skip


@dataclass(frozen=True)
class SliceReadyMsg(Message):
    series_key: str
    index: int
    slot: int
    slot_seq: int
    rows: int
    columns: int
    pixel_length: int  # bytes: rows * columns * 2
    pixel_crc: int  # CRC-32 (zlib.crc32) of the pixel bytes in the slot
    image_position: tuple[float, float, float]
    table_position_mm: float
    acquisition_time: datetime
    TYPE = MsgType.SLICE_READY
    LAYOUT = (
        ("series_key", STR), ("index", U32), ("slot", U32), ("slot_seq", U64), ("rows", U16),
        ("columns", U16), ("pixel_length", U32), ("pixel_crc", U32),
        ("image_position", VEC3), ("table_position_mm", F64), ("acquisition_time", TIME),
    )  # fmt: skip


@dataclass(frozen=True)
class SeriesEndMsg(Message):
    series_key: str
    slices: int
    TYPE = MsgType.SERIES_END
    LAYOUT = (("series_key", STR), ("slices", U32))


@dataclass(frozen=True)
class SliceLostMsg(Message):
    series_key: str
    index: int
    reason: LostReason
    text: str
    TYPE = MsgType.SLICE_LOST
    LAYOUT = (
        ("series_key", STR), ("index", U32), ("reason", Enum8(LostReason)), ("text", STR),
    )  # fmt: skip


XRAY_SOURCE_LAYOUT: Layout = (
    ("source_id", STR), ("kvp", F64), ("max_tube_current_ma", F64),
    ("mean_tube_current_ma", F64), ("rotation_time_s", F64),
)  # fmt: skip


DOSE_ALERT_LAYOUT: Layout = (
    ("kind", Enum8(AlertKind)), ("quantity", Enum8(AlertQuantity)),
    ("configured_value", F64), ("value", F64), ("reason", STR), ("person", STR),
)  # fmt: skip

MAX_TUBES = 4
MAX_ALERTS = 4


@dataclass(frozen=True)
class IrradiationEventMsg(Message):
    """TID 10013 CT Irradiation Event Data, one per acquisition (SPEC §3)."""

    token: str  # the exam token the acquisition was made under
    event_uid: str  # Irradiation Event UID (113769)
    start_time: datetime  # Start of X-Ray Irradiation (113809)
    end_time: datetime  # End of X-Ray Irradiation (113810)
    acquisition_type: AcquisitionType  # CT Acquisition Type (113820)
    target_region: str  # Target Region (123014), e.g. "CHEST"
    exposure_time_s: float  # Exposure Time (113824), s
    scanning_length_mm: float  # Scanning Length (113825), mm
    single_collimation_mm: float  # Nominal Single Collimation Width (113826), mm
    total_collimation_mm: float  # Nominal Total Collimation Width (113827), mm
    pitch_factor: float | None  # Pitch Factor (113828); None for non-spiral
    sources: tuple[XRaySource, ...]  # 1..4
    mean_ctdivol_mgy: float  # Mean CTDIvol (113830), mGy
    ctdi_phantom: Phantom  # CTDIw Phantom Type (113835)
    dlp_mgycm: float  # DLP (113838), mGy·cm
    alerts: tuple[DoseAlert, ...]  # 0..4
    TYPE = MsgType.IRRADIATION_EVENT
    LAYOUT = (
        ("token", STR), ("event_uid", STR), ("start_time", TIME), ("end_time", TIME),
        ("acquisition_type", Enum8(AcquisitionType)), ("target_region", STR),
        ("exposure_time_s", F64), ("scanning_length_mm", F64),
        ("single_collimation_mm", F64), ("total_collimation_mm", F64),
        ("pitch_factor", Opt(F64)), ("sources", Records(XRaySource, XRAY_SOURCE_LAYOUT, MAX_TUBES)),
        ("mean_ctdivol_mgy", F64), ("ctdi_phantom", Enum8(Phantom)), ("dlp_mgycm", F64),
        ("alerts", Records(DoseAlert, DOSE_ALERT_LAYOUT, MAX_ALERTS)),
    )  # fmt: skip


@dataclass(frozen=True)
class HwErrorMsg(Message):
    code: str
    message: str
    series_key: str | None
    TYPE = MsgType.HW_ERROR
    LAYOUT = (("code", STR), ("message", STR), ("series_key", Opt(STR)))


MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        HelloMsg, HelloAckMsg, HeartbeatMsg, AckMsg, SetExamTokenMsg, SliceReleaseMsg,
        ResendRequestMsg, SeriesStartMsg, SliceReadyMsg, SeriesEndMsg, SliceLostMsg,
        IrradiationEventMsg, HwErrorMsg,
    )
}  # fmt: skip
HOST_TO_DEVICE = frozenset(
    {MsgType.HELLO, MsgType.SET_EXAM_TOKEN, MsgType.SLICE_RELEASE, MsgType.RESEND_REQUEST}
)
DEVICE_TO_HOST = frozenset(
    {
        MsgType.HELLO_ACK, MsgType.SERIES_START, MsgType.SLICE_READY, MsgType.SERIES_END,
        MsgType.SLICE_LOST, MsgType.IRRADIATION_EVENT, MsgType.HW_ERROR,
    }
)  # fmt: skip
BOTH_WAYS = frozenset({MsgType.HEARTBEAT, MsgType.ACK})


def sent_by_device(msg_type: int) -> bool:
    """Whether a device may send this type (a host receiving anything else counts an error)."""
    return msg_type in DEVICE_TO_HOST or msg_type in BOTH_WAYS


def sent_by_host(msg_type: int) -> bool:
    return msg_type in HOST_TO_DEVICE or msg_type in BOTH_WAYS


for _cls in MESSAGE_TYPES.values():
    check_layout(_cls, _cls.LAYOUT)
check_layout(XRaySource, XRAY_SOURCE_LAYOUT)
check_layout(DoseAlert, DOSE_ALERT_LAYOUT)


def encode_payload(message: Message) -> bytes:
    """The payload bytes of `message`; raises `EncodeError` for an out-of-range value."""
    if type(message) not in MESSAGE_TYPES.values():
        raise EncodeError(f"not a protocol message: {message!r}")
    out = bytearray()
    encode_fields(message, message.LAYOUT, out)
    if isinstance(message, IrradiationEventMsg) and not message.sources:
        raise EncodeError("IrradiationEventMsg.sources: at least one X-ray source")
    return bytes(out)


def decode_payload(msg_type: int, payload: bytes) -> Message:
    """The message of a known type; raises `PayloadError` when the payload is malformed
    (truncated, trailing bytes, bad UTF-8, unknown enum value, non-finite float, ...)."""
    cls = MESSAGE_TYPES[msg_type]
    values, pos = decode_fields(payload, 0, cls.LAYOUT)
    if pos != len(payload):
        raise PayloadError(f"{len(payload) - pos} trailing bytes after the last field")
    if cls is IrradiationEventMsg and not values["sources"]:
        raise PayloadError("sources: at least one X-ray source")
    factory: Any = cls
    return factory(**values)
