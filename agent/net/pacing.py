"""Which instances of a batch to compress and which to send as stored, so that the link does
not wait for the compressor (`adaptive_compression = true`; off by default, as SPEC §6 wants
the best accepted syntax).

Compression pays where the link is the limit: on 100 Mbit/s a JPEG-LS copy a third of the size
goes out three times as fast. On a fast link it is the other way round: a 2-core console
compresses ~100-180 CT slices/s while 1 Gbit/s carries ~220 uncompressed ones a second, so
waiting for every compressed copy would leave the link idle. When the archive accepted both
the preferred (compressed) syntax and the stored one for an instance's SOP class, the pool
compresses instances far enough ahead that each copy is ready when the sender reaches it, and
the instances in between go as stored. Both are lossless; the order of the batch holds.
With one of them accepted, or `adaptive_compression = false`, every instance is prepared in
the preferred syntax, the whole batch at once.

How far ahead comes from two running averages: seconds per compression in a worker, and
seconds per C-STORE on this destination's link.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from agent.net.staging import Staging

__all__ = ["Choice", "Pace", "Plan"]

_WEIGHT = 0.2  # of the newest sample in a running average
CHECK_AHEAD = 8  # stored files checked ahead of the sender (each ~1 ms, in threads)


@dataclass(frozen=True)
class Choice:
    """How one instance may go: in `ts`, the most preferred syntax the archive accepted for
    it, or (`stored_too`: the archive accepted that one as well) in `stored_ts`."""

    sop_instance_uid: str
    stored_ts: str
    ts: str
    stored_too: bool
    source: Callable[[], Path]  # the spooled file, integrity-checked

    @property
    def transcoded(self) -> bool:
        return self.ts != self.stored_ts


class Pace:
    """Running averages of one destination's link (seconds)."""

    def __init__(self) -> None:
        self.store_s: float | None = None  # one C-STORE, any syntax
        self.compress_s: float | None = None  # one compression, in a worker

    def stored(self, seconds: float) -> None:
        self.store_s = _average(self.store_s, seconds)

    def compressed(self, seconds: float) -> None:
        self.compress_s = _average(self.compress_s, seconds)

    def lead(self, queued: int, workers: int) -> int:
        """How many instances the sender gets through before a compression submitted now,
        behind `queued` others, is ready. Rounded down: waiting less than one C-STORE for a
        copy a third the size is better than sending the stored one."""
        if self.compress_s is None or not self.store_s:
            return 0
        return math.floor(self.compress_s * (queued // workers + 1) / self.store_s)


def _average(mean: float | None, sample: float) -> float:
    return sample if mean is None else mean + _WEIGHT * (sample - mean)


class Plan:
    """The preparation of one batch. `take(i)`, called in order as the sender reaches each
    instance, gives the syntax it goes in and the future of its file."""

    def __init__(
        self, staging: Staging, choices: Sequence[Choice], pace: Pace, adaptive: bool
    ) -> None:
        self._staging = staging
        self._choices = choices
        self._pace = pace
        self._workers = os.cpu_count() or 1  # the pool's (agent/net/staging.py)
        self._in_flight = 2 * self._workers  # compressions outstanding at most
        self._adaptive = [adaptive and c.transcoded and c.stored_too for c in choices]
        self._prepared: dict[int, tuple[str, Future[Path]]] = {}
        self._copies: dict[int, Future[Path]] = {}  # compressions chosen ahead, not yet taken
        self._next = 0  # the first instance not yet considered for compression
        for i, choice in enumerate(choices):
            if choice.transcoded and not self._adaptive[i]:
                # one way only: every compression of the batch starts now
                self._prepared[i] = (choice.ts, self._stage(choice, choice.ts))

    def take(self, i: int) -> tuple[str, Future[Path], tuple[str, Future[Path]] | None]:
        """(syntax, file) of instance i, and when that is a compressed copy chosen ahead, the
        stored file as a fallback should the copy fail."""
        for k in range(i, min(i + CHECK_AHEAD, len(self._choices))):
            self._checked(k)
        self._compress_ahead(i)
        copy = self._copies.pop(i, None)
        prepared = self._prepared.pop(i)
        if copy is None:
            return (*prepared, None)
        return self._choices[i].ts, copy, prepared

    def _checked(self, k: int) -> Future[Path]:
        """Instance k's stored file, once checked (in threads); the check is started once.
        Not the whole batch's at once: a compression chosen ahead waits for its file's check,
        which would queue behind all the others."""
        if k not in self._prepared:
            choice = self._choices[k]
            self._prepared[k] = (choice.stored_ts, self._stage(choice, choice.stored_ts))
        return self._prepared[k][1]

    def _compress_ahead(self, i: int) -> None:
        busy = sum(not f.done() for f in self._copies.values())
        while busy < self._in_flight:
            j = max(i + self._pace.lead(busy, self._workers), self._next)
            while j < len(self._choices) and not self._adaptive[j]:
                j += 1
            if j >= len(self._choices):
                return
            self._next = j + 1
            # the copy is made from the checked stored file: one check, not two
            checked = self._checked(j)
            self._copies[j] = self._stage(self._choices[j], self._choices[j].ts, checked)
            busy += 1

    def _stage(self, choice: Choice, ts: str, checked: Future[Path] | None = None) -> Future[Path]:
        return self._staging.stage(
            choice.sop_instance_uid,
            choice.stored_ts,
            ts,
            choice.source,
            checked,
            self._pace.compressed,
        )
