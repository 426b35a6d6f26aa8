"""Open series, persisted: a daemon restarted in the middle of a series carries on with the
same Series Instance UID, number and times (SPEC §5).

One file per open series, `<root>/<Series Instance UID>.json`, written atomically at the
series start (before any of its slices is released to the hardware) and removed at its end.
The slices received so far are not written here: the spool's index records them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection
from collections.abc import Set as AbstractSet
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from agent.dicom.assembler import Series
from agent.exam import Exam
from agent.spool import Spool, check_uid
from agent.spool.files import make_dirs, remove_durable, write_durable
from hardware.event_codec import start_from_json, start_to_json

log = logging.getLogger(__name__)


def series_to_json(series: Series) -> dict[str, Any]:
    """Everything `Series` holds but its exam, which is named by token."""
    offset = series.tz.utcoffset(None)
    return {
        "series_instance_uid": series.series_instance_uid,
        "series_number": series.series_number,
        "token": series.exam.token,
        "start": start_to_json(series.start),
        "started": series.started.isoformat(),
        "tz_offset_s": int(offset.total_seconds()),
        "performed_procedure_step_uid": series.performed_procedure_step_uid,
    }


def series_from_json(doc: dict[str, Any], exam: Exam) -> Series:
    """The `Series` that `series_to_json` wrote, with `exam` (the one its token names)."""
    tz = timezone(timedelta(seconds=int(doc["tz_offset_s"])))
    return Series(
        series_instance_uid=check_uid(doc["series_instance_uid"], "Series Instance UID"),
        series_number=int(doc["series_number"]),
        exam=exam,
        start=start_from_json(doc["start"]),
        started=datetime.fromisoformat(doc["started"]).astimezone(tz),
        tz=tz,
        performed_procedure_step_uid=doc.get("performed_procedure_step_uid"),
    )


class OpenSeries:
    """The open series by the hardware's series key, each with the indices of its slices in
    the spool. Not thread-safe: the caller serialises."""

    def __init__(self, root: Path, spool: Spool) -> None:
        self.root = root
        self._spool = spool
        self._open: dict[str, Series] = {}
        self._received: dict[str, set[int]] = {}
        make_dirs(root)

    def load(self, exam_for_token: Callable[[str], Exam | None]) -> None:
        """Those open when the agent last stopped."""
        for f in sorted(self.root.glob("*.json")):  # temporary files end in .tmp
            try:
                doc = json.loads(f.read_bytes())
                exam = exam_for_token(str(doc["token"]))
                if exam is None:
                    raise LookupError("its exam is not known")
                self._add(series_from_json(doc, exam))
            except (OSError, ValueError, LookupError) as e:  # its slices will be quarantined
                log.error("open series %s not resumed: %s", f.name, e)

    def get(self, series_key: str) -> Series | None:
        return self._open.get(series_key)

    def open(self, series: Series) -> None:
        """Durable on return."""
        doc = json.dumps(series_to_json(series)).encode()
        write_durable(self._path(series.series_instance_uid), doc)
        self._add(series)

    def received(self, series_key: str) -> AbstractSet[int]:
        """The indices of its slices in the spool (read only)."""
        return self._received.get(series_key, set())

    def mark(self, series: Series, index: int) -> None:
        """Slice `index` of `series` is in the spool now."""
        found = self._open.get(series.series_key)
        if found is not None and found.series_instance_uid == series.series_instance_uid:
            self._received[series.series_key].add(index)

    def series_instance_uids(self) -> set[str]:
        """Safe to call from any thread: one copy of the values, taken under the GIL."""
        return {s.series_instance_uid for s in list(self._open.values())}

    def close(self, series_key: str) -> None:
        """The series ended: forgotten (durably)."""
        series = self._open[series_key]
        remove_durable(self._path(series.series_instance_uid))
        del self._open[series_key], self._received[series_key]

    def in_spool(self, series: Series) -> set[int]:
        return {
            i.record.instance_number - 1
            for i in self._spool.instances(series.exam.study_instance_uid)
            if i.record.series_instance_uid == series.series_instance_uid
        }

    def _add(self, series: Series) -> None:
        self._open[series.series_key] = series
        self._received[series.series_key] = self.in_spool(series)

    def _path(self, series_instance_uid: str) -> Path:
        return self.root / (check_uid(series_instance_uid, "Series Instance UID") + ".json")


def gaps(received: Collection[int], slices: int) -> list[int]:
    """The indices of a series of `slices` slices that are not in `received`."""
    return [i for i in range(slices) if i not in received]


def ranges(indices: list[int]) -> str:
    """[3, 7, 8, 9] -> "3, 7-9" (sorted input)."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)
