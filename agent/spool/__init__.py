"""Durable spool of encoded Part 10 instances and their delivery state (SPEC §5).

No pydicom here: the caller hands over the encoded bytes and an InstanceRecord.
"""

from .model import (
    CommitmentState,
    Delivery,
    DeliveryState,
    DestinationSummary,
    InstanceRecord,
    InvalidUID,
    RecoveryReport,
    SpoolClosed,
    SpoolConflict,
    SpoolCorrupt,
    SpooledInstance,
    SpoolError,
    SpoolLocked,
    SpoolProblem,
    StudySummary,
    UnknownInstance,
    check_uid,
)
from .store import Spool

__all__ = [
    "CommitmentState",
    "Delivery",
    "DeliveryState",
    "DestinationSummary",
    "InstanceRecord",
    "InvalidUID",
    "RecoveryReport",
    "Spool",
    "SpoolClosed",
    "SpoolConflict",
    "SpoolCorrupt",
    "SpoolError",
    "SpoolLocked",
    "SpoolProblem",
    "SpooledInstance",
    "StudySummary",
    "UnknownInstance",
    "check_uid",
]
