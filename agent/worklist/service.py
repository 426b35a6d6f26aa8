"""The worklist as a daemon component: queries on demand, a periodic refresh, and the last good
list, kept on disk, served as stale (with its age) while the RIS does not answer."""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from agent.config.model import WorklistSettings
from agent.spool.files import write_durable
from agent.timestamps import utc_iso
from agent.worklist.client import FindResult, find
from agent.worklist.item import BadItem, WorklistItem, parse
from agent.worklist.query import Filter, date_range, identifier, local_today, matches

log = logging.getLogger(__name__)

ALARM = "worklist_unreachable"
DEFAULT = Filter()


@dataclass(frozen=True)
class Listing:
    """One answer to `worklist`: fresh from the RIS, or the kept list when it did not answer."""

    items: list[WorklistItem]
    dates: tuple[date, date]
    fetched_at: datetime | None  # when the RIS gave these items; None: never
    stale: bool = False
    error: str | None = None  # why the RIS gave no fresh answer
    truncated: bool = False
    bad_answers: int = 0
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_json(self) -> dict[str, Any]:
        age = (self.now - self.fetched_at).total_seconds() if self.fetched_at else None
        return {
            "items": [i.to_json() for i in self.items],
            "count": len(self.items),
            "dates": [d.isoformat() for d in self.dates],
            "stale": self.stale,
            "fetched_at": utc_iso(self.fetched_at) if self.fetched_at else None,
            "age_seconds": round(age, 1) if age is not None else None,
            "error": self.error,
            "truncated": self.truncated,
            "bad_answers": self.bad_answers,
        }


@dataclass(frozen=True)
class _Kept:
    items: list[WorklistItem]
    fetched_at: datetime
    truncated: bool


class Worklist:
    def __init__(
        self,
        calling_ae: str,
        settings: WorklistSettings,
        kept_file: Path,
        *,
        on_answer: Callable[[str | None], None] = lambda error: None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.calling_ae = calling_ae
        self.settings = settings
        self.kept_file = kept_file
        self._on_answer = on_answer  # None: the RIS answered; else why not
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._kept = self._load()

    def query(self, f: Filter = DEFAULT) -> Listing:
        """Ask the RIS now; when it does not answer, the kept list matched the same way."""
        today = local_today(self._clock)
        dates = date_range(self.settings, f, today)
        result = find(self.calling_ae, self.settings, identifier(self.settings, f, today))
        now = self._clock()
        self._on_answer(None if result.ok else _reason(result))
        if result.ok:
            if f.is_default:
                self._keep(_Kept(result.items, now, result.truncated))
            # an SCP may not match on every key (wlmscpfs ignores the SPS ID): exact ones again
            items = [i for i in result.items if _exact(i, f)]
            return Listing(
                items, dates, now, False, None, result.truncated, result.bad_answers, now
            )
        with self._lock:
            kept = self._kept
        if kept is None:
            return Listing([], dates, None, True, _reason(result), False, result.bad_answers, now)
        items = [i for i in kept.items if matches(i, self.settings, f, today)]
        return Listing(items, dates, kept.fetched_at, True, _reason(result), kept.truncated, 0, now)

    def kept(self, f: Filter = DEFAULT) -> Listing:
        """The last good list, without asking the RIS."""
        today = local_today(self._clock)
        with self._lock:
            kept = self._kept
        dates = date_range(self.settings, f, today)
        if kept is None:
            return Listing([], dates, None, True, "no list yet", now=self._clock())
        items = [i for i in kept.items if matches(i, self.settings, f, today)]
        return Listing(items, dates, kept.fetched_at, True, None, kept.truncated, now=self._clock())

    def run(self, stop: threading.Event) -> None:
        """The refresh thread: the default list now, then every `refresh_interval`."""
        while not stop.is_set():
            try:
                self.query()
            except Exception as e:  # never let the refresh thread die
                log.error("worklist refresh failed: %s (details at debug level)", type(e).__name__)
                log.debug("worklist refresh", exc_info=True)
            self._wake.wait(self.settings.refresh_interval_s)
            self._wake.clear()

    def wake(self) -> None:
        self._wake.set()

    # -- the kept list ----------------------------------------------------------------------

    def _keep(self, kept: _Kept) -> None:
        doc = {
            "version": 1,
            "fetched_at": kept.fetched_at.isoformat(),
            "truncated": kept.truncated,
            "items": [
                {"implicit": i.implicit, "encoded": base64.b64encode(i.encoded).decode("ascii")}
                for i in kept.items
            ],
        }
        with self._lock:
            self._kept = kept
            try:
                write_durable(self.kept_file, json.dumps(doc).encode("utf-8"))
            except OSError as e:
                log.error("cannot keep the worklist on disk: %s", e)

    def _load(self) -> _Kept | None:
        try:
            doc = json.loads(self.kept_file.read_text(encoding="utf-8"))
            items = []
            for raw in doc["items"]:
                try:
                    items.append(parse(base64.b64decode(raw["encoded"]), bool(raw["implicit"])))
                except (BadItem, ValueError):
                    continue
            return _Kept(items, datetime.fromisoformat(doc["fetched_at"]), bool(doc["truncated"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.error("the kept worklist %s cannot be read (%s); none kept", self.kept_file, e)
            return None


def _exact(item: WorklistItem, f: Filter) -> bool:
    return (not f.accession or item.accession_number == f.accession) and (
        not f.sps_id or item.scheduled_procedure_step_id == f.sps_id
    )


def _reason(result: FindResult) -> str:
    assert result.verdict is not None
    return result.verdict.reason
