"""Series held as unassigned (SPEC §3), and slices quarantined: nothing taken from the hardware
is ever dropped.

A series is held when its token matches no known exam, or when it could not be filed (an
invalid series start, a slice that failed assembly, slices of a series whose start was never
seen); `reason` says which. Its slices are accepted durably here, as raw pixels plus the
hardware's metadata (hardware.event_codec). `exam assign` turns them into CT images of the chosen
exam; until then nothing of them is sent.

Layout: `<root>/<Series Instance UID>/` holds `start.json` (written first), `slice-<index>.bin`,
`end.json` once the hardware ended the series, and `assign.json` (the intent of an assignment
in progress). Each file is written atomically. A folder is forgotten by renaming it to a hidden
name first, so a crash never leaves half a series behind; hidden folders are skipped at load.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.dicom.uids import UidFactory
from agent.spool import check_uid
from agent.spool.files import fsync_dir, make_dir, write_durable
from agent.timestamps import utc_iso
from hardware.base import SeriesStart, SliceReady
from hardware.event_codec import slice_from_bytes, slice_to_bytes, start_from_json, start_to_json

UNKNOWN_TOKEN = "acquired under an unknown exam token"
START_NOT_SEEN = "series start not seen"
_FORGOTTEN = ".forgotten-"

log = logging.getLogger(__name__)


class NotHeld(LookupError):
    """No series is held under that Series Instance UID."""


class HoldingBusy(Exception):
    """Someone else is assigning this series right now."""


@dataclass(frozen=True)
class AssignIntent:
    """`exam assign` was asked to file the series under exam `token` (written before any of
    its slices is filed, so that an interrupted assignment resumes to the same exam)."""

    token: str
    operator: str
    at: datetime
    series: dict[str, Any]  # the Series it is filed as (agent.open_series.series_to_json)
    incomplete: bool = False


@dataclass(frozen=True)
class HeldSeries:
    series_instance_uid: str  # given when held, kept when assigned
    series_key: str
    start: SeriesStart | None  # None: slices whose series start was never seen
    since: datetime
    reason: str
    indices: frozenset[int] = frozenset()  # slices held
    complete: bool = False  # the hardware said the series ended
    expected: int | None = None  # how many slices the hardware said it produced
    intent: AssignIntent | None = None

    @property
    def slices(self) -> int:
        return len(self.indices)

    @property
    def alarm_message(self) -> str:
        """What the `unassigned_series` alarm about it says (no patient data)."""
        what = f" ({self.start.description})" if self.start else ""
        return f"series {self.series_instance_uid}{what} held: {self.reason}; exam assign"

    def to_json(self) -> dict[str, Any]:
        return {
            "series_instance_uid": self.series_instance_uid,
            "token": self.start.token if self.start else None,
            "description": self.start.description if self.start else "",
            "reason": self.reason,
            "slices": self.slices,
            "complete": self.complete,
            "expected": self.expected,
            "since": utc_iso(self.since),
            "assigning_to": self.intent.token if self.intent else None,
        }


class Holding:
    def __init__(self, root: Path, uids: UidFactory) -> None:
        self.root = root
        self._uids = uids
        self._lock = threading.Lock()
        self._by_key: dict[str, HeldSeries] = {}
        self._claimed: set[str] = set()
        if make_dir(root):
            fsync_dir(root.parent)
        for folder in sorted(root.iterdir()):
            if folder.name.startswith(_FORGOTTEN):  # assigned; its removal was interrupted
                shutil.rmtree(folder, ignore_errors=True)
            elif not folder.name.startswith(".") and folder.is_dir():
                try:
                    held = self._load(folder)
                except (OSError, ValueError, KeyError, TypeError) as e:  # left as it is
                    log.error("held series %s cannot be read: %s", folder.name, type(e).__name__)
                    continue
                if held is not None:
                    self._by_key[held.series_key] = held

    # -- acquisition ----------------------------------------------------------------------

    def hold_start(self, start: SeriesStart, reason: str = UNKNOWN_TOKEN) -> HeldSeries:
        """Hold a series from its start; a series already held is resumed, not held twice."""
        old = self.held(start.series_key)
        if old is not None and old.start is not None:
            return old
        if old is not None:  # its slices came first: the start completes it
            held = replace(old, start=start)
            self._write_start(held)
        else:
            held = self._new(start.series_key, start, reason)
        with self._lock:
            self._by_key[start.series_key] = held
        return held

    def holds(self, series_key: str) -> bool:
        return self.held(series_key) is not None

    def held(self, series_key: str) -> HeldSeries | None:
        with self._lock:
            return self._by_key.get(series_key)

    def hold_slice(self, slice_: SliceReady) -> HeldSeries:
        """Add a slice to the held series of its key (a repeated index replaces itself)."""
        held = self.held(slice_.series_key)
        if held is None:
            raise KeyError(f"series {slice_.series_key!r} is not held")
        path = self._folder(held.series_instance_uid) / f"slice-{slice_.index}.bin"
        write_durable(path, slice_to_bytes(slice_))
        with self._lock:
            held = self._by_key[slice_.series_key]
            held = replace(held, indices=held.indices | {slice_.index})
            self._by_key[slice_.series_key] = held
        return held

    def quarantine(
        self, slice_: SliceReady, reason: str, start: SeriesStart | None = None
    ) -> HeldSeries:
        """Hold a slice that could not be filed; a new held series for its key if need be."""
        if not self.holds(slice_.series_key):
            held = self._new(slice_.series_key, start, reason)
            with self._lock:
                self._by_key[slice_.series_key] = held
        return self.hold_slice(slice_)

    def hold_end(self, series_key: str, slices: int) -> HeldSeries:
        """The hardware ended the series: it may be assigned now."""
        held = self.held(series_key)
        if held is None:
            raise KeyError(f"series {series_key!r} is not held")
        write_durable(
            self._folder(held.series_instance_uid) / "end.json", _dump({"slices": slices})
        )
        with self._lock:
            held = replace(self._by_key[series_key], complete=True, expected=slices)
            self._by_key[series_key] = held
        return held

    # -- exam assign ----------------------------------------------------------------------

    def series(self) -> list[HeldSeries]:
        with self._lock:
            return list(self._by_key.values())

    def find(self, series_instance_uid: str) -> HeldSeries | None:
        with self._lock:
            return self._find(series_instance_uid)

    def _find(self, uid: str) -> HeldSeries | None:
        return next((h for h in self._by_key.values() if h.series_instance_uid == uid), None)

    @contextmanager
    def claim(self, series_instance_uid: str) -> Iterator[HeldSeries]:
        """The held series, for one assignment at a time: NotHeld when none is held under that
        UID, HoldingBusy while another assignment of it is going on."""
        with self._lock:
            held = self._find(series_instance_uid)
            if held is None:
                raise NotHeld(f"no unassigned series {series_instance_uid}")
            if series_instance_uid in self._claimed:
                raise HoldingBusy(f"series {series_instance_uid} is being assigned right now")
            self._claimed.add(series_instance_uid)
        try:
            yield held
        finally:
            with self._lock:
                self._claimed.discard(series_instance_uid)

    def record_intent(self, held: HeldSeries, intent: AssignIntent) -> HeldSeries:
        """Durable on return."""
        doc = {
            "token": intent.token,
            "operator": intent.operator,
            "at": intent.at.isoformat(),
            "series": intent.series,
            "incomplete": intent.incomplete,
        }
        write_durable(self._folder(held.series_instance_uid) / "assign.json", _dump(doc))
        with self._lock:
            held = replace(self._by_key[held.series_key], intent=intent)
            self._by_key[held.series_key] = held
        return held

    def slices(self, held: HeldSeries) -> Iterator[SliceReady]:
        """The held slices, in index order."""
        folder = self._folder(held.series_instance_uid)
        for f in sorted(folder.glob("slice-*.bin"), key=_index):
            yield slice_from_bytes(f.read_bytes(), held.series_key)

    def forget(self, held: HeldSeries) -> None:
        """Its slices are in the spool now (assigned): remove them from here, all or nothing."""
        folder = self._folder(held.series_instance_uid)
        hidden = folder.with_name(_FORGOTTEN + folder.name)
        os.rename(folder, hidden)
        fsync_dir(self.root)
        with self._lock:
            if self._by_key.get(held.series_key, held).series_instance_uid == folder.name:
                self._by_key.pop(held.series_key, None)
        shutil.rmtree(hidden, ignore_errors=True)

    # -- files ----------------------------------------------------------------------------

    def _new(self, series_key: str, start: SeriesStart | None, reason: str) -> HeldSeries:
        held = HeldSeries(self._uids.new(), series_key, start, datetime.now(UTC), reason)
        if make_dir(self._folder(held.series_instance_uid)):
            fsync_dir(self.root)
        self._write_start(held)
        return held

    def _write_start(self, held: HeldSeries) -> None:
        doc = {
            "series_instance_uid": held.series_instance_uid,
            "series_key": held.series_key,
            "since": held.since.isoformat(),
            "reason": held.reason,
            "start": start_to_json(held.start) if held.start else None,
        }
        write_durable(self._folder(held.series_instance_uid) / "start.json", _dump(doc))

    def _folder(self, series_instance_uid: str) -> Path:
        return self.root / check_uid(series_instance_uid, "Series Instance UID")

    def _load(self, folder: Path) -> HeldSeries | None:
        try:
            doc = json.loads((folder / "start.json").read_text())
        except (OSError, ValueError):
            return None  # a folder whose start never became durable holds no accepted slice
        end = _read(folder / "end.json")
        intent = _read(folder / "assign.json")
        return HeldSeries(
            series_instance_uid=doc["series_instance_uid"],
            series_key=doc.get("series_key") or doc["start"]["series_key"],  # older: in start
            start=start_from_json(doc["start"]) if doc["start"] is not None else None,
            since=datetime.fromisoformat(doc["since"]),
            reason=doc.get("reason", UNKNOWN_TOKEN),
            indices=frozenset(_index(f) for f in folder.glob("slice-*.bin")),
            complete=end is not None,
            expected=end["slices"] if end else None,
            intent=_intent(intent) if intent else None,
        )


def _index(path: Path) -> int:
    return int(path.stem.removeprefix("slice-"))


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    return doc


def _intent(doc: dict[str, Any]) -> AssignIntent:
    return AssignIntent(
        doc["token"],
        doc["operator"],
        datetime.fromisoformat(doc["at"]),
        doc["series"],
        bool(doc.get("incomplete", False)),
    )
