"""Sequence accounting (PROTOCOL.md §8): lost, duplicated and reordered frames and slices.

`SequenceTracker` follows the u32 frame sequence numbers of one direction of one connection
(wrapping at 2**32). `SliceTracker` follows the slice indices of one series. Both are pure.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hardware.protocol.framing import SEQ_MODULO

HALF = SEQ_MODULO // 2
MAX_MISSING = 4096  # missing frame numbers remembered; older ones are forgotten (overflow)


class SeqKind(enum.Enum):
    FIRST = "first"  # the first frame seen since reset
    IN_ORDER = "in-order"  # exactly the next number
    GAP = "gap"  # ahead of the next number: `missing` frames were skipped
    LATE = "late"  # behind, and one of the missing numbers: reordered, now received
    DUPLICATE = "duplicate"  # behind, and already received (or too old to know)


@dataclass(frozen=True)
class SeqResult:
    kind: SeqKind
    missing: tuple[int, ...] = ()  # GAP: the numbers skipped (at most MAX_MISSING of them)
    skipped: int = 0  # GAP: how many were skipped in all

    @property
    def deliver(self) -> bool:
        """Whether the frame's message is new (not a duplicate)."""
        return self.kind is not SeqKind.DUPLICATE


class SequenceTracker:
    """Classify each received frame number against the next expected one.

    Differences are taken modulo 2**32: up to 2**31 - 1 ahead is a gap, anything behind is
    late (if it is one of the remembered missing numbers) or a duplicate."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything: call on every new connection (numbers restart at HELLO)."""
        self._next: int | None = None
        self._missing: dict[int, None] = {}  # insertion-ordered set, oldest first
        self.lost_overflow = 0  # missing numbers forgotten because MAX_MISSING was exceeded

    @property
    def next_expected(self) -> int | None:
        return self._next

    @property
    def missing(self) -> tuple[int, ...]:
        """Numbers skipped and not (yet) received late, oldest first."""
        return tuple(self._missing)

    def forget(self, seq: int) -> None:
        """Stop waiting for `seq` (its resend was requested and answered or given up)."""
        self._missing.pop(seq, None)

    def observe(self, seq: int) -> SeqResult:
        if not 0 <= seq < SEQ_MODULO:
            raise ValueError(f"sequence number out of range: {seq}")
        if self._next is None:
            self._next = (seq + 1) % SEQ_MODULO
            return SeqResult(SeqKind.FIRST)
        ahead = (seq - self._next) % SEQ_MODULO
        if ahead == 0:
            self._next = (seq + 1) % SEQ_MODULO
            return SeqResult(SeqKind.IN_ORDER)
        if ahead < HALF:
            first = self._next
            skipped = tuple((first + i) % SEQ_MODULO for i in range(min(ahead, MAX_MISSING)))
            for s in skipped:
                self._missing[s] = None
            self.lost_overflow += ahead - len(skipped)
            while len(self._missing) > MAX_MISSING:
                del self._missing[next(iter(self._missing))]
                self.lost_overflow += 1
            self._next = (seq + 1) % SEQ_MODULO
            return SeqResult(SeqKind.GAP, skipped, ahead)
        if seq in self._missing:
            del self._missing[seq]
            return SeqResult(SeqKind.LATE)
        return SeqResult(SeqKind.DUPLICATE)


class SliceKind(enum.Enum):
    NEW = "new"  # first announcement of this index, in order (index above all seen so far)
    REORDERED = "reordered"  # first announcement, but below an index already seen
    DUPLICATE = "duplicate"  # announced before: deliver one image only


class SliceTracker:
    """The slice indices of one series: which arrived, which are missing at SERIES_END, and
    which the device reported lost (those, and only those, become gaps)."""

    def __init__(self, series_key: str) -> None:
        self.series_key = series_key
        self.received: set[int] = set()
        self.lost: set[int] = set()
        self._highest = -1

    def observe(self, index: int) -> SliceKind:
        if index in self.received:
            return SliceKind.DUPLICATE
        self.received.add(index)
        self.lost.discard(index)
        if index < self._highest:
            return SliceKind.REORDERED
        self._highest = index
        return SliceKind.NEW

    def mark_lost(self, index: int) -> None:
        if index not in self.received:
            self.lost.add(index)

    def missing(self, total: int | None = None) -> list[int]:
        """Indices neither received nor reported lost: below the highest seen, or below
        `total` (the SERIES_END count) when given. These are to be asked for again."""
        bound = total if total is not None else self._highest + 1
        return [i for i in range(bound) if i not in self.received and i not in self.lost]

    def complete(self, total: int) -> bool:
        return not self.missing(total)
