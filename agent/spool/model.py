"""The spool's typed records, states and errors. Pure: no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

# A UID used as a path component: numeric components separated by single dots, at most 64
# characters. This is what keeps "..", "." or "/" out of a path. Leading zeros are tolerated here
# (a study UID may come from a RIS that gets them wrong; refusing the slice would lose it).
_UID_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*")
UID_MAX_LEN = 64


class SpoolError(Exception):
    """Base class of the spool's errors."""


class InvalidUID(SpoolError, ValueError):
    """A UID that is not digits and dots (or longer than 64 characters)."""


class SpoolConflict(SpoolError):
    """A SOP Instance UID already accepted with other bytes or other metadata."""


class SpoolCorrupt(SpoolError):
    """A spooled file whose size or SHA-256 no longer matches what was accepted."""


class SpoolLocked(SpoolError):
    """Another Spool (in this or another process) has this root open."""


class SpoolClosed(SpoolError):
    """The spool was used after close()."""


class UnknownInstance(SpoolError):
    """A SOP Instance UID (or instance and destination) that the index does not hold."""


def check_uid(value: str, what: str = "UID") -> str:
    """Return `value` if it is safe as a UID (and as a path component); raise InvalidUID."""
    if not isinstance(value, str) or len(value) > UID_MAX_LEN or not _UID_RE.fullmatch(value):
        raise InvalidUID(f"{what} {value!r} is not a UID (digits and dots, at most 64 characters)")
    return value


def check_destination(name: str) -> str:
    if not isinstance(name, str) or not name or name != name.strip() or len(name) > 64:
        raise SpoolError(f"destination name {name!r} must be 1-64 characters, no edge blanks")
    return name


class DeliveryState(StrEnum):
    DEFERRED = "deferred"  # sent once its exam ends (send_while_scanning = false)
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"


class CommitmentState(StrEnum):
    """Storage commitment of a delivered instance; None in the index until requested."""

    REQUESTED = "requested"
    COMMITTED = "committed"
    REFUSED = "refused"


@dataclass(frozen=True)
class InstanceRecord:
    """What the caller knows about an encoded Part 10 file; the spool never parses the bytes."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    instance_number: int
    exam_token: str | None = None

    def __post_init__(self) -> None:
        check_uid(self.sop_instance_uid, "SOP Instance UID")
        check_uid(self.sop_class_uid, "SOP Class UID")
        check_uid(self.study_instance_uid, "Study Instance UID")
        check_uid(self.series_instance_uid, "Series Instance UID")
        check_uid(self.transfer_syntax_uid, "Transfer Syntax UID")
        if not isinstance(self.instance_number, int) or isinstance(self.instance_number, bool):
            raise SpoolError(f"instance_number {self.instance_number!r} is not an int")


@dataclass(frozen=True)
class SpooledInstance:
    """An accepted instance: durable on disk and in the index."""

    record: InstanceRecord
    seq: int  # acceptance order, strictly increasing
    size: int
    sha256: str
    accepted_at: float  # epoch seconds

    @property
    def sop_instance_uid(self) -> str:
        return self.record.sop_instance_uid

    @property
    def study_instance_uid(self) -> str:
        return self.record.study_instance_uid


@dataclass(frozen=True)
class Delivery:
    """The state of one instance towards one destination."""

    sop_instance_uid: str
    destination: str
    state: DeliveryState
    attempts: int
    next_attempt: float  # epoch seconds; meaningful while pending
    last_error: str | None
    warning: str | None
    delivered_at: float | None
    commitment: CommitmentState | None


@dataclass(frozen=True)
class DestinationSummary:
    name: str
    state: str  # pending, sending, delivered, committed or failed (the worst first)
    deferred: int  # of `pending`: held back until the exam ends
    images: int  # instances of the study routed to this destination
    sent: int  # delivered (committed included)
    committed: int
    failed: int
    pending: int  # pending + sending
    last_error: str | None
    next_attempt: float | None  # earliest retry of a pending instance, epoch seconds


@dataclass(frozen=True)
class StudySummary:
    study_instance_uid: str
    images: int  # instances accepted (durable) for the study
    problems: int  # of which flagged missing or damaged: never sent
    exam_tokens: tuple[str, ...]
    destinations: tuple[DestinationSummary, ...]


@dataclass(frozen=True)
class SpoolProblem:
    """An alarm: something in the spool that will not be sent until a person looks at it."""

    kind: str  # "missing", "size", "corrupt" (indexed, never sent) or "orphan" (moved aside)
    sop_instance_uid: str
    path: Path
    message: str


@dataclass(frozen=True)
class RecoveryReport:
    """What open() found and repaired."""

    temp_files_removed: int
    orphans_moved: tuple[Path, ...]
    sending_reset: int  # deliveries interrupted mid-send, back to pending
    next_attempt_clamped: int  # retries scheduled implausibly far ahead (clock stepped back)
    problems: tuple[SpoolProblem, ...]
