"""Re-requests of lost frames and of the device's whole state (PROTOCOL.md §8.2, §7.2): pure.

What the host asked for and is waiting for, and what to send next, given the time. No I/O:
`due(now)` returns the RESEND_REQUESTs to send; the driver sends them.

- A frame number skipped on the line is a *gap*. Still missing after the reorder window, the
  gaps become RESEND_REQUEST FRAMES, one per run of consecutive numbers (ALL when a run is
  longer than 1 024, or when numbers were forgotten for overflow), and are forgotten by the
  sequence tracker: the content comes in the answer.
- Every FRAMES and ALL request, and the replay that follows HELLO_ACK, is answered by
  RETRANSMIT frames ending with one REPLAY_DONE; the device answers in the order it was asked.
  So the outstanding answers form a queue: a RETRANSMIT frame is progress of the oldest, a
  REPLAY_DONE ends the oldest.
- The oldest answer is *stalled* when no RETRANSMIT frame came for `retry_s` (1 s) since it was
  sent (or since its last frame). A stalled FRAMES request is sent again, 3 attempts in all;
  after the third, or when the opening replay stalls, the host sends RESEND_REQUEST ALL
  instead (it replays everything, so it replaces every outstanding answer). A stalled ALL
  means the link is broken: `due` raises `DriverError` (§10).

The matching is by order, not by identity (the protocol carries none): a REPLAY_DONE lost on
the line makes the next one end the wrong answer, and the answer left waiting is asked for
again after `retry_s`, which the device answers at no cost. Nothing is lost either way.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass

from hardware.base import DriverError
from hardware.protocol import (
    MAX_RESEND_FRAMES,
    RESEND_ATTEMPTS,
    ResendMode,
    ResendRequestMsg,
    SequenceTracker,
)
from hardware.protocol.framing import SEQ_MODULO

ALL = ResendRequestMsg(ResendMode.ALL, 0, 0, "", 0)


class Answer(enum.Enum):
    REPLAY = "replay"  # the state replay after HELLO_ACK (nothing was asked)
    FRAMES = "frames"
    ALL = "all"


@dataclass
class _Waiting:
    kind: Answer
    request: ResendRequestMsg | None  # None for the opening replay
    clock: float  # sent, or its last RETRANSMIT frame, or became the oldest: whichever is last
    attempts: int


class Resends:
    """Gaps and outstanding answers of one session; `reset` at every handshake."""

    def __init__(
        self,
        tracker: SequenceTracker,
        *,
        reorder_s: float,
        retry_s: float,
        attempts: int = RESEND_ATTEMPTS,
    ) -> None:
        self._tracker = tracker
        self._reorder = reorder_s
        self._retry = retry_s
        self._attempts = attempts
        self._gaps: dict[int, float] = {}  # missing frame number -> noticed at
        self._waiting: deque[_Waiting] = deque()

    def reset(self, now: float) -> None:
        """A new session (HELLO_ACK just arrived): its replay is the one answer awaited."""
        self._gaps.clear()
        self._waiting.clear()
        self._waiting.append(_Waiting(Answer.REPLAY, None, now, self._attempts))

    def clear(self) -> None:
        """The session is over: nothing is awaited any more."""
        self._gaps.clear()
        self._waiting.clear()

    @property
    def in_progress(self) -> bool:
        """An answer to a request (or the opening replay) has not ended yet."""
        return bool(self._waiting)

    @property
    def waiting(self) -> tuple[Answer, ...]:
        """The kinds of the outstanding answers, oldest first (for tests and status)."""
        return tuple(w.kind for w in self._waiting)

    # -- what was received -------------------------------------------------------------------

    def gap(self, seqs: tuple[int, ...], now: float) -> None:
        for s in seqs:
            self._gaps[s] = now

    def late(self, seq: int) -> None:
        self._gaps.pop(seq, None)

    def retransmitted(self, now: float, *, replay_done: bool) -> None:
        """A RETRANSMIT frame arrived: progress of the oldest answer, or (REPLAY_DONE) its end."""
        if not self._waiting:
            return
        if replay_done:
            self._waiting.popleft()
            if self._waiting:
                head = self._waiting[0]
                head.clock = max(head.clock, now)
        else:
            self._waiting[0].clock = now

    # -- what to send ------------------------------------------------------------------------

    def request_all(self, now: float) -> ResendRequestMsg:
        """RESEND_REQUEST ALL, for a reason of the driver's (held slots, a missing slice)."""
        self._waiting.clear()
        self._waiting.append(_Waiting(Answer.ALL, ALL, now, 1))
        return ALL

    def due(self, now: float) -> list[ResendRequestMsg]:
        """The requests to send now. Raises `DriverError` when an ALL went unanswered."""
        out = self._stalled(now)
        gaps = sorted(s for s, at in self._gaps.items() if now - at >= self._reorder)
        if gaps:
            for s in gaps:
                del self._gaps[s]
                self._tracker.forget(s)
            out.extend(self._frames(gaps, now))
        return out

    def _stalled(self, now: float) -> list[ResendRequestMsg]:
        if not self._waiting:
            return []
        head = self._waiting[0]
        if now - head.clock < self._retry:
            return []
        if head.kind is Answer.ALL:
            raise DriverError(
                f"serial-shm: no answer to RESEND_REQUEST ALL within {self._retry:g} s"
            )
        if head.attempts < self._attempts and head.request is not None:
            head.attempts += 1
            head.clock = now
            return [head.request]
        return [self.request_all(now)]

    def _frames(self, seqs: list[int], now: float) -> list[ResendRequestMsg]:
        """RESEND_REQUEST FRAMES for each run of consecutive numbers (ALL beyond 1 024)."""
        runs: list[list[int]] = []
        for s in seqs:
            if runs and s == (runs[-1][-1] + 1) % SEQ_MODULO:
                runs[-1].append(s)
            else:
                runs.append([s])
        if any(len(run) > MAX_RESEND_FRAMES for run in runs) or self._tracker.lost_overflow:
            return [self.request_all(now)]
        if any(w.kind is Answer.ALL for w in self._waiting):
            return []  # the replay under way brings them
        out = []
        for run in runs:
            msg = ResendRequestMsg(ResendMode.FRAMES, run[0], len(run), "", 0)
            self._waiting.append(_Waiting(Answer.FRAMES, msg, now, 1))
            out.append(msg)
        return out
