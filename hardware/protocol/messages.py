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
    CS16,
    F64,
    F64_COSINE,
    F64_NONNEG,
    F64_POS,
    SERIES_KEY,
    SH16,
    STR,
    TEXT64,
    TIME,
    TOKEN,
    U8,
    U16,
    U32,
    U64,
    UID,
    UID_OR_EMPTY,
    Array,
    EncodeError,
    Enum8,
    Field,
    Opt,
    PayloadError,
    Records,
    Str,
    _F64Field,
    _Int,
    check_layout,
    decode_fields,
    encode_fields,
)

Layout = tuple[tuple[str, Field], ...]
VEC3 = Array(F64, 3)
MAX_SLOTS = 65_535  # ring slots (PROTOCOL.md §9.2): a slot number is 0 .. 65 534
SLOT = _Int("I", "slot", 0, MAX_SLOTS - 1)
SLOT_SEQ = _Int("Q", "slot_seq", 1, 0xFFFF_FFFF_FFFF_FFFF)  # write numbers start at 1
PIXELS = _Int("H", "rows/columns", 1, 0xFFFF)  # an image has at least one row and column
SERIES_NUMBER = _Int("I", "series_number", 0, 2**31 - 1)  # DICOM IS: a signed 32-bit value
MAX_RESEND_FRAMES = 1024
RING_NAME = Str(64, r"([A-Za-z0-9_-][A-Za-z0-9._-]{0,63})?", name="ring_name")
RESEND_KEY = Str(64, r"([A-Za-z0-9._-]{1,64})?", name="series_key or empty")
# PS3.3 C.7.3.1.1.2 Patient Position defined terms
PATIENT_POSITION = Str(
    16, r"HFP|HFS|HFDR|HFDL|FFDR|FFDL|FFP|FFS|LFP|LFS|RFP|RFS|AFDR|AFDL|PFDR|PFDL",
    name="patient_position",
)  # fmt: skip
SCAN_OPTIONS = Str(16, r"HELICAL|AXIAL", name="scan_options")
HW_CODE = Str(64, r"[A-Z0-9_]{1,64}", name="code")
TILT = _F64Field(lo=-90.0, hi=90.0)


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
    REPLAY_DONE = 0x26


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

    def problem(self) -> str | None:
        """A rule between fields that this message breaks (PROTOCOL.md §4.4), or None. Checked
        by both `encode` (-> EncodeError) and the decoder (-> bad-payload)."""
        return None


@dataclass(frozen=True)
class HelloMsg(Message):
    min_version: int
    max_version: int
    agent_name: str
    agent_version: str
    TYPE = MsgType.HELLO
    LAYOUT = (
        ("min_version", U8), ("max_version", U8), ("agent_name", TEXT64),
        ("agent_version", TEXT64),
    )  # fmt: skip

    def problem(self) -> str | None:
        if not 1 <= self.min_version <= self.max_version:
            return f"version range {self.min_version}..{self.max_version}"
        return None


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
        ("version", U8), ("min_version", U8), ("max_version", U8), ("device_model", TEXT64),
        ("device_serial", TEXT64), ("ring_name", RING_NAME), ("ring_generation", U64),
        ("slot_count", U32), ("slot_size", U32), ("max_rows", U16), ("max_columns", U16),
        ("bytes_per_pixel", U8),
    )  # fmt: skip

    def problem(self) -> str | None:
        if not 1 <= self.min_version <= self.max_version:
            return f"version range {self.min_version}..{self.max_version}"
        if self.version == 0:  # refused: the ring fields are not looked at
            return None
        if not self.min_version <= self.version <= self.max_version:
            return f"version {self.version} outside {self.min_version}..{self.max_version}"
        if not self.ring_name or self.ring_generation == 0 or self.bytes_per_pixel != 2:
            return "accepted HELLO_ACK needs ring_name, ring_generation != 0, bytes_per_pixel 2"
        if not 1 <= self.slot_count <= MAX_SLOTS or not (self.max_rows and self.max_columns):
            return f"slot_count {self.slot_count} / max size {self.max_rows}x{self.max_columns}"
        return None


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
    LAYOUT = (
        ("acked_seq", U32), ("acked_type", Enum8(MsgType)), ("status", Enum8(AckStatus)),
        ("text", STR),
    )  # fmt: skip


@dataclass(frozen=True)
class SetExamTokenMsg(Message):
    token: str  # "": no exam open
    TYPE = MsgType.SET_EXAM_TOKEN
    LAYOUT = (("token", TOKEN),)


@dataclass(frozen=True)
class SliceReleaseMsg(Message):
    series_key: str
    index: int
    slot: int
    slot_seq: int
    TYPE = MsgType.SLICE_RELEASE
    LAYOUT = (("series_key", SERIES_KEY), ("index", U32), ("slot", SLOT), ("slot_seq", SLOT_SEQ))


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
        ("series_key", RESEND_KEY), ("index", U32),
    )  # fmt: skip

    def problem(self) -> str | None:
        frames = (self.first_seq, self.count) if self.mode is ResendMode.FRAMES else (0, 0)
        key_index = (self.series_key, self.index) if self.mode is ResendMode.SLICE else ("", 0)
        if (self.first_seq, self.count) != frames or (self.series_key, self.index) != key_index:
            return f"{self.mode.name}: fields of another mode must be 0 / empty"
        if self.mode is ResendMode.FRAMES and not 1 <= self.count <= MAX_RESEND_FRAMES:
            return f"FRAMES count {self.count} outside 1..{MAX_RESEND_FRAMES}"
        if self.mode is ResendMode.SLICE and not self.series_key:
            return "SLICE needs a series_key"
        return None


@dataclass(frozen=True)
class SeriesStartMsg(Message):
    token: str
    series_key: str
    irradiation_event_uid: str  # the IRRADIATION_EVENT this series was reconstructed from
    frame_of_reference_id: int  # series with the same id share a Frame of Reference
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
        ("token", TOKEN), ("series_key", SERIES_KEY), ("irradiation_event_uid", UID_OR_EMPTY),
        ("frame_of_reference_id", U32), ("series_number", SERIES_NUMBER),
        ("description", TEXT64), ("protocol_name", TEXT64), ("body_part", CS16),
        ("patient_position", PATIENT_POSITION), ("image_orientation", Array(F64_COSINE, 6)),
        ("rows", PIXELS), ("columns", PIXELS), ("pixel_spacing_mm", Array(F64_POS, 2)),
        ("slice_thickness_mm", F64_POS), ("kernel", SH16), ("kvp", F64_NONNEG),
        ("tube_current_ma", F64_NONNEG), ("exposure_time_ms", F64_NONNEG),
        ("exposure_mas", F64_NONNEG), ("revolution_time_s", F64_NONNEG),
        ("single_collimation_mm", F64_NONNEG), ("total_collimation_mm", F64_NONNEG),
        ("spiral_pitch_factor", Opt(F64_POS)), ("scan_options", SCAN_OPTIONS),
        ("data_collection_diameter_mm", F64_NONNEG), ("reconstruction_diameter_mm", F64_POS),
        ("gantry_tilt_deg", TILT), ("table_height_mm", F64), ("rescale_intercept", F64),
        ("rescale_slope", F64), ("contrast_agent", Opt(TEXT64)), ("simulated", BOOL),
    )  # fmt: skip

    def problem(self) -> str | None:
        if (self.spiral_pitch_factor is not None) != (self.scan_options == "HELICAL"):
            return "spiral_pitch_factor must be present exactly when scan_options is HELICAL"
        if self.rescale_slope == 0:
            return "rescale_slope must not be 0"
        return None


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
        ("series_key", SERIES_KEY), ("index", U32), ("slot", SLOT), ("slot_seq", SLOT_SEQ),
        ("rows", PIXELS), ("columns", PIXELS), ("pixel_length", U32), ("pixel_crc", U32),
        ("image_position", VEC3), ("table_position_mm", F64), ("acquisition_time", TIME),
    )  # fmt: skip

    def problem(self) -> str | None:
        if self.pixel_length != self.rows * self.columns * 2:
            return f"pixel_length {self.pixel_length} != {self.rows} x {self.columns} x 2"
        return None


@dataclass(frozen=True)
class SeriesEndMsg(Message):
    series_key: str
    slices: int
    TYPE = MsgType.SERIES_END
    LAYOUT = (("series_key", SERIES_KEY), ("slices", U32))


@dataclass(frozen=True)
class SliceLostMsg(Message):
    series_key: str
    index: int
    reason: LostReason
    text: str
    TYPE = MsgType.SLICE_LOST
    LAYOUT = (
        ("series_key", SERIES_KEY), ("index", U32),
        ("reason", Enum8(LostReason, exclude=frozenset({LostReason.TORN}))), ("text", STR),
    )  # fmt: skip


XRAY_SOURCE_LAYOUT: Layout = (
    ("source_id", SH16), ("kvp", F64_NONNEG), ("max_tube_current_ma", F64_NONNEG),
    ("mean_tube_current_ma", F64_NONNEG), ("rotation_time_s", F64_NONNEG),
)  # fmt: skip


DOSE_ALERT_LAYOUT: Layout = (
    ("kind", Enum8(AlertKind)), ("quantity", Enum8(AlertQuantity)),
    ("configured_value", F64_NONNEG), ("value", F64_NONNEG), ("reason", STR),
    ("person", TEXT64),
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
        ("token", TOKEN), ("event_uid", UID), ("start_time", TIME), ("end_time", TIME),
        ("acquisition_type", Enum8(AcquisitionType)), ("target_region", CS16),
        ("exposure_time_s", F64_NONNEG), ("scanning_length_mm", F64_NONNEG),
        ("single_collimation_mm", F64_NONNEG), ("total_collimation_mm", F64_NONNEG),
        ("pitch_factor", Opt(F64_POS)),
        ("sources", Records(XRaySource, XRAY_SOURCE_LAYOUT, MAX_TUBES, min_count=1)),
        ("mean_ctdivol_mgy", F64_NONNEG), ("ctdi_phantom", Enum8(Phantom)),
        ("dlp_mgycm", F64_NONNEG), ("alerts", Records(DoseAlert, DOSE_ALERT_LAYOUT, MAX_ALERTS)),
    )  # fmt: skip

    def problem(self) -> str | None:
        if self.end_time < self.start_time:
            return "end_time before start_time"
        if (self.pitch_factor is not None) != (self.acquisition_type is AcquisitionType.SPIRAL):
            return "pitch_factor must be present exactly when acquisition_type is SPIRAL"
        return None


@dataclass(frozen=True)
class HwErrorMsg(Message):
    code: str
    message: str
    series_key: str | None
    TYPE = MsgType.HW_ERROR
    LAYOUT = (("code", HW_CODE), ("message", STR), ("series_key", Opt(SERIES_KEY)))


@dataclass(frozen=True)
class ReplayDoneMsg(Message):
    """The end of a state replay (after HELLO_ACK, or for RESEND_REQUEST ALL)."""

    held_slots: int  # slots HELD when the replay ended (each was re-announced in it)
    unacked_records: int  # SERIES_END, IRRADIATION_EVENT and HW_ERROR records not yet ACKed
    TYPE = MsgType.REPLAY_DONE
    LAYOUT = (("held_slots", _Int("I", "held_slots", 0, MAX_SLOTS)), ("unacked_records", U32))


MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        HelloMsg, HelloAckMsg, HeartbeatMsg, AckMsg, SetExamTokenMsg, SliceReleaseMsg,
        ResendRequestMsg, SeriesStartMsg, SliceReadyMsg, SeriesEndMsg, SliceLostMsg,
        IrradiationEventMsg, HwErrorMsg, ReplayDoneMsg,
    )
}  # fmt: skip
HOST_TO_DEVICE = frozenset(
    {MsgType.HELLO, MsgType.SET_EXAM_TOKEN, MsgType.SLICE_RELEASE, MsgType.RESEND_REQUEST}
)
DEVICE_TO_HOST = frozenset(
    {
        MsgType.HELLO_ACK, MsgType.SERIES_START, MsgType.SLICE_READY, MsgType.SERIES_END,
        MsgType.SLICE_LOST, MsgType.IRRADIATION_EVENT, MsgType.HW_ERROR, MsgType.REPLAY_DONE,
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
    problem = message.problem()
    if problem:
        raise EncodeError(f"{type(message).__name__}: {problem}")
    return bytes(out)


def decode_payload(msg_type: int, payload: bytes) -> Message:
    """The message of a known type; raises `PayloadError` when the payload is malformed
    (truncated, trailing bytes, bad UTF-8, unknown enum value, non-finite float, ...)."""
    cls = MESSAGE_TYPES[msg_type]
    values, pos = decode_fields(payload, 0, cls.LAYOUT)
    if pos != len(payload):
        raise PayloadError(f"{len(payload) - pos} trailing bytes after the last field")
    factory: Any = cls
    message: Message = factory(**values)
    problem = message.problem()
    if problem:
        raise PayloadError(problem)
    return message
