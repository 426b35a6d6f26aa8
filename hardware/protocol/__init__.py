"""The serial-shm wire protocol (hardware/PROTOCOL.md): a pure codec, no I/O.

    frames    encode(message, seq) -> bytes; FrameDecoder().feed(bytes) -> records
    messages  one frozen dataclass per message type, `*Msg`
    sequence  SequenceTracker (frame numbers), SliceTracker (slice indices of a series)
    events    conversions to and from the events of hardware.base

The only exception the codec raises is `EncodeError` (from `encode`, for a value that does not
fit its field); decoding never raises, it returns `FrameError` records.
"""

from hardware.protocol.events import (
    hardware_error_event,
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
BAUD_RATE = 921_600

__all__ = [
    "ACK_TIMEOUT_S",
    "BAUD_RATE",
    "FLAG_RETRANSMIT",
    "FRAME_VERSION",
    "HANDSHAKE_TIMEOUT_S",
    "HEARTBEAT_INTERVAL_S",
    "LINK_TIMEOUT_S",
    "MAX_ENCODED",
    "MAX_PAYLOAD",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "REORDER_WINDOW_S",
    "REPLAY_DEPTH",
    "RESEND_ATTEMPTS",
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
    "sent_by_device",
    "sent_by_host",
    "series_end_event",
    "series_start_event",
    "series_start_message",
    "slice_ready_event",
]
