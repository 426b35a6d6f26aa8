"""The daemon's event bus: components publish, control-socket subscribers read.

Publishing never waits for a reader: each subscription has a bounded queue, and an event that
does not fit is dropped for that subscriber only. Sequence numbers are counted per subscription
and a dropped event still uses its number, so the reader sees a gap and knows to ask `status`
again (docs/control-protocol.md, Events).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Collection, Iterator, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, NamedTuple

TOPICS = frozenset({"exam", "series", "slice", "delivery", "alarm"})


class Event(NamedTuple):
    seq: int
    event: str  # "<topic>.<name>", e.g. "slice.accepted"
    time: str  # ISO 8601 UTC, milliseconds, "Z"
    data: dict[str, Any]


class SubscriptionClosed(Exception):
    """`get` on a subscription that was closed (by its reader, or by the bus)."""


def topic_of(event: str) -> str:
    return event.partition(".")[0]


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _check_topics(topics: Collection[str]) -> frozenset[str]:
    wanted = frozenset(topics)
    unknown = sorted(wanted - TOPICS)
    if unknown or not wanted:
        raise ValueError(f"topics: expected some of {sorted(TOPICS)}, got {sorted(wanted)}")
    return wanted


class Subscription:
    """One reader's bounded queue of events. Iterate it, or call `get`."""

    def __init__(self, bus: EventBus, topics: frozenset[str], maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize: expected at least 1")
        self.topics = topics
        self.maxsize = maxsize
        self.dropped = 0
        self._bus = bus
        self._cond = threading.Condition()
        self._queue: deque[Event] = deque()
        self._next_seq = 1
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        return len(self._queue)

    def _offer(self, event: str, time: str, data: dict[str, Any]) -> None:
        with self._cond:
            if self._closed:
                return
            seq = self._next_seq
            self._next_seq += 1
            if len(self._queue) >= self.maxsize:
                self.dropped += 1  # the reader will see a gap in seq
                return
            self._queue.append(Event(seq, event, time, data))
            self._cond.notify()

    def get(self, timeout: float | None = None) -> Event | None:
        """The next event; None when `timeout` passed. Raises SubscriptionClosed once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._closed, timeout)
            if self._closed:
                raise SubscriptionClosed
            return self._queue.popleft() if self._queue else None

    def __iter__(self) -> Iterator[Event]:
        while True:
            try:
                event = self.get()
            except SubscriptionClosed:
                return
            if event is not None:
                yield event

    def close(self) -> None:
        """Stop receiving; wake a blocked `get`. The backlog is discarded. Idempotent."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        self._bus._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class EventBus:
    def __init__(self) -> None:
        self._lock = threading.Lock()  # one publish at a time: every reader sees the same order
        self._subs: list[Subscription] = []
        self._closed = False

    def publish(self, event: str, data: Mapping[str, Any]) -> None:
        """Hand `event` to every matching subscriber; never blocks on a reader.

        `data` is copied (shallowly): do not mutate nested values after publishing.
        Raises ValueError for a topic that is not in TOPICS (a programming error).
        """
        topic = topic_of(event)
        if topic not in TOPICS or "." not in event:
            raise ValueError(f"event {event!r}: expected <topic>.<name> with a topic in {TOPICS}")
        payload = dict(data)
        with self._lock:
            if self._closed:
                return
            now = utc_now_iso()
            for sub in self._subs:
                if topic in sub.topics:
                    sub._offer(event, now, payload)

    def subscribe(self, topics: Collection[str] | None = None, maxsize: int = 1000) -> Subscription:
        """A new subscription to `topics` (None: all), holding at most `maxsize` unread events."""
        sub = Subscription(self, TOPICS if topics is None else _check_topics(topics), maxsize)
        with self._lock:
            if self._closed:
                raise RuntimeError("the event bus is closed")
            self._subs.append(sub)
        return sub

    def close(self) -> None:
        """Close every subscription; later publishes are ignored."""
        with self._lock:
            self._closed = True
            subs, self._subs = self._subs, []
        for sub in subs:
            sub.close()

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)
