"""What the host knows of each series and dose record, across reconnections (pure state).

Kept by the driver for as long as it lives: after a reconnect the device replays what is still
unreleased, and what was already received is recognised here by (series key, index) or by
event UID (PROTOCOL.md §8.2, dedup by content, never by frame number).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from hardware.protocol import DecodedFrame, SeriesEndMsg, SeriesStartMsg, SliceTracker


@dataclass
class SeriesState:
    """One series: its start, which indices arrived, are durable, torn or asked for again."""

    key: str
    start: SeriesStartMsg | None = None
    tracker: SliceTracker = field(init=False)
    durable: set[int] = field(default_factory=set)
    pending: list[tuple[DecodedFrame, int]] = field(default_factory=list)  # before its start
    end: SeriesEndMsg | None = None
    end_frame: tuple[int, int] | None = None  # (session, seq) of the last SERIES_END frame
    end_emitted: bool = False
    end_acknowledged: bool = False  # the agent acknowledged the SeriesEnd
    torn: dict[int, int] = field(default_factory=dict)  # index -> torn reads so far
    generation: int | None = None  # the ring generation it was announced under
    asked: dict[int, float] = field(default_factory=dict)  # index -> RESEND SLICE sent at
    unanswered: dict[int, int] = field(default_factory=dict)  # index -> RESEND SLICE attempts

    def __post_init__(self) -> None:
        self.tracker = SliceTracker(self.key)

    @property
    def unreleased(self) -> int:
        """Slices announced to this host (delivered or torn) and not yet durable."""
        return len((self.tracker.received | set(self.torn)) - self.durable)


@dataclass
class Record:
    """An IRRADIATION_EVENT, by its event_uid: delivered once, ACKed once durable."""

    frame: tuple[int, int]  # (session, seq) of the last frame that carried it
    acknowledged: bool = False


def outstanding(series: Iterable[SeriesState]) -> int:
    """Slots the device should be holding for this host (§9.5)."""
    return sum(s.unreleased for s in series)
