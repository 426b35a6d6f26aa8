"""Series held as unassigned: acquired under a token that matches no known exam (SPEC §3).

Their slices are accepted durably here, as raw pixels plus the hardware's metadata, since
without an exam there is no patient to build an image for. `exam assign` turns them into CT
images of the chosen exam; until then nothing of them is sent.

Layout: `<root>/<Series Instance UID>/start.json` and `slice-<index>.bin` (a JSON header line,
then the pixels), each written atomically.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from agent.dicom.uids import UidFactory
from agent.spool import check_uid
from agent.spool.files import fsync_dir, make_dir, write_durable
from agent.timestamps import utc_iso
from hardware.base import SeriesStart, SliceReady


@dataclass(frozen=True)
class HeldSeries:
    series_instance_uid: str  # given when held, kept when assigned
    start: SeriesStart
    since: datetime
    slices: int
    complete: bool = False  # the hardware said the series ended

    def to_json(self) -> dict[str, Any]:
        return {
            "series_instance_uid": self.series_instance_uid,
            "token": self.start.token,
            "description": self.start.description,
            "slices": self.slices,
            "complete": self.complete,
            "since": utc_iso(self.since),
        }


class Holding:
    def __init__(self, root: Path, uids: UidFactory) -> None:
        self.root = root
        self._uids = uids
        self._lock = threading.Lock()
        self._by_key: dict[str, HeldSeries] = {}
        if make_dir(root):
            fsync_dir(root.parent)
        for folder in sorted(root.iterdir()):
            held = self._load(folder)
            if held is not None:
                self._by_key[held.start.series_key] = held

    def hold_start(self, start: SeriesStart) -> HeldSeries:
        held = HeldSeries(self._uids.new(), start, datetime.now(UTC), 0)
        folder = self._folder(held.series_instance_uid)
        if make_dir(folder):
            fsync_dir(self.root)
        doc: dict[str, Any] = {
            "series_instance_uid": held.series_instance_uid,
            "since": held.since.isoformat(),
            "start": asdict(start),
        }
        write_durable(folder / "start.json", json.dumps(doc).encode())
        with self._lock:
            self._by_key[start.series_key] = held
        return held

    def holds(self, series_key: str) -> bool:
        with self._lock:
            return series_key in self._by_key

    def hold_slice(self, slice_: SliceReady) -> None:
        with self._lock:
            held = self._by_key[slice_.series_key]
            self._by_key[slice_.series_key] = replace(held, slices=held.slices + 1)
        header = {
            "index": slice_.index,
            "image_position": slice_.image_position,
            "table_position_mm": slice_.table_position_mm,
            "acquisition_time": slice_.acquisition_time.isoformat(),
            "shape": slice_.pixels.shape,
        }
        data = json.dumps(header).encode() + b"\n" + slice_.pixels.astype("<u2").tobytes()
        write_durable(self._folder(held.series_instance_uid) / f"slice-{slice_.index}.bin", data)

    def hold_end(self, series_key: str) -> None:
        """The series is complete: it may be assigned now."""
        with self._lock:
            held = self._by_key[series_key]
            self._by_key[series_key] = replace(held, complete=True)
        write_durable(self._folder(held.series_instance_uid) / "end.json", b"{}")

    def series(self) -> list[HeldSeries]:
        with self._lock:
            return list(self._by_key.values())

    def find(self, series_instance_uid: str) -> HeldSeries | None:
        return next(
            (h for h in self.series() if h.series_instance_uid == series_instance_uid), None
        )

    def slices(self, held: HeldSeries) -> Iterator[SliceReady]:
        """The held slices, in index order."""
        files = self._folder(held.series_instance_uid).glob("slice-*.bin")
        for f in sorted(files, key=lambda p: int(p.stem.split("-")[1])):
            head, _, pixels = f.read_bytes().partition(b"\n")
            h = json.loads(head)
            yield SliceReady(
                series_key=held.start.series_key,
                index=h["index"],
                image_position=tuple(h["image_position"]),
                table_position_mm=h["table_position_mm"],
                acquisition_time=datetime.fromisoformat(h["acquisition_time"]),
                pixels=np.frombuffer(pixels, dtype="<u2").reshape(h["shape"]).astype(np.uint16),
            )

    def forget(self, held: HeldSeries) -> None:
        """Its slices are in the spool now (assigned): remove them from here."""
        with self._lock:
            self._by_key.pop(held.start.series_key, None)
        shutil.rmtree(self._folder(held.series_instance_uid))
        fsync_dir(self.root)

    def _folder(self, series_instance_uid: str) -> Path:
        return self.root / check_uid(series_instance_uid, "Series Instance UID")

    def _load(self, folder: Path) -> HeldSeries | None:
        try:
            doc = json.loads((folder / "start.json").read_text())
        except (OSError, ValueError):
            return None  # a folder whose start never became durable holds no accepted slice
        raw: dict[str, Any] = doc["start"]
        raw["image_orientation"] = tuple(raw["image_orientation"])
        raw["pixel_spacing_mm"] = tuple(raw["pixel_spacing_mm"])
        count = len(list(folder.glob("slice-*.bin")))
        since = datetime.fromisoformat(doc["since"])
        complete = (folder / "end.json").exists()
        return HeldSeries(doc["series_instance_uid"], SeriesStart(**raw), since, count, complete)
