"""The serial-shm wire protocol (hardware/PROTOCOL.md): a pure codec, no I/O.

    frames    encode(message, seq) -> bytes; FrameDecoder().feed(bytes) -> records
    messages  one frozen dataclass per message type, `*Msg`
    sequence  SequenceTracker (frame numbers), SliceTracker (slice indices of a series)
    events    conversions to and from the events of hardware.base

The only exception the codec raises is `EncodeError` (from `encode`, for anything that is not a
message whose values satisfy PROTOCOL.md §4.4); decoding never raises, it returns `FrameError`
records. Encoder and decoder apply the same rules: what decodes re-encodes, and vice versa.
"""

from hardware.protocol.events import (
    hardware_error_event,
    irradiation_event,
    irradiation_event_message,
    series_end_event,
    series_start_event,
    series_start_message,
    slice_ready_event,
)
from hardware.protocol.fields import EncodeError, ProtocolError
from hardware.protocol.framing import (
    FLAG_RETRANSMIT,
    FRAME_VERSION,
    MAX_ENCODED,
    MAX_PAYLOAD,
    DecodedFrame,
    ErrorKind,
    FrameDecoder,
    FrameError,
    cobs_decode,
    cobs_encode,
    crc32,
    decode_frame,
    encode,
)
from hardware.protocol.messages import (
    MAX_RESEND_FRAMES,
    MESSAGE_TYPES,
    AckMsg,
    AckStatus,
    AcquisitionType,
    AlertKind,
    AlertQuantity,
    DeviceState,
    DoseAlert,
    HeartbeatMsg,
    HelloAckMsg,
    HelloMsg,
    HwErrorMsg,
    IrradiationEventMsg,
    LostReason,
    Message,
    MsgType,
    Phantom,
    ReplayDoneMsg,
    ResendMode,
    ResendRequestMsg,
    SeriesEndMsg,
    SeriesStartMsg,
    SetExamTokenMsg,
    SliceLostMsg,
    SliceReadyMsg,
    SliceReleaseMsg,
    XRaySource,
    sent_by_device,
    sent_by_host,
)
from hardware.protocol.sequence import SeqKind, SeqResult, SequenceTracker, SliceKind, SliceTracker

PROTOCOL_VERSION = 1  # the message-set version negotiated by HELLO / HELLO_ACK
HEARTBEAT_INTERVAL_S = 1.0
LINK_TIMEOUT_S = 3.0
HANDSHAKE_TIMEOUT_S = 2.0
ACK_TIMEOUT_S = 1.0
REORDER_WINDOW_S = 0.2
RESEND_ATTEMPTS = 3
REPLAY_DEPTH = 1024  # frames the device keeps for RESEND_REQUEST(FRAMES)
RESEND_RETRY_S = 1.0  # a re-request unanswered (no RETRANSMIT frame) for this long is repeated
TORN_RETRY_S = 30.0  # after 3 torn reads, the slice is asked for again this often
HELD_MISMATCH_HEARTBEATS = 3  # heartbeats with more held slots than outstanding: RESEND ALL
MIN_DURABLE_RECORDS = 256  # un-ACKed IRRADIATION_EVENTs a device keeps across power cycles
MAX_UNACKED_HW_ERRORS = 16  # un-ACKed HW_ERRORs a device keeps for the replay
BAUD_RATE = 921_600

__all__ = [
    "ACK_TIMEOUT_S",
    "BAUD_RATE",
    "FLAG_RETRANSMIT",
    "FRAME_VERSION",
    "HANDSHAKE_TIMEOUT_S",
    "HEARTBEAT_INTERVAL_S",
    "HELD_MISMATCH_HEARTBEATS",
    "LINK_TIMEOUT_S",
    "MAX_ENCODED",
    "MAX_PAYLOAD",
    "MAX_RESEND_FRAMES",
    "MAX_UNACKED_HW_ERRORS",
    "MESSAGE_TYPES",
    "MIN_DURABLE_RECORDS",
    "PROTOCOL_VERSION",
    "REORDER_WINDOW_S",
    "REPLAY_DEPTH",
    "RESEND_ATTEMPTS",
    "RESEND_RETRY_S",
    "TORN_RETRY_S",
    "AckMsg",
    "AckStatus",
    "AcquisitionType",
    "AlertKind",
    "AlertQuantity",
    "DecodedFrame",
    "DeviceState",
    "DoseAlert",
    "EncodeError",
    "ErrorKind",
    "FrameDecoder",
    "FrameError",
    "HeartbeatMsg",
    "HelloAckMsg",
    "HelloMsg",
    "HwErrorMsg",
    "IrradiationEventMsg",
    "LostReason",
    "Message",
    "MsgType",
    "Phantom",
    "ProtocolError",
    "ReplayDoneMsg",
    "ResendMode",
    "ResendRequestMsg",
    "SeqKind",
    "SeqResult",
    "SequenceTracker",
    "SeriesEndMsg",
    "SeriesStartMsg",
    "SetExamTokenMsg",
    "SliceKind",
    "SliceLostMsg",
    "SliceReadyMsg",
    "SliceReleaseMsg",
    "SliceTracker",
    "XRaySource",
    "cobs_decode",
    "cobs_encode",
    "crc32",
    "decode_frame",
    "encode",
    "hardware_error_event",
    "irradiation_event",
    "irradiation_event_message",
    "sent_by_device",
    "sent_by_host",
    "series_end_event",
    "series_start_event",
    "series_start_message",
    "slice_ready_event",
]
