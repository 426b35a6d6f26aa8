"""The series of an exam as the spool holds them: what `exam status` lists, so that a TUI
opened in the middle of an exam (or after a daemon restart) shows every series, not only those
whose events it saw.

Counts are of durable images (the spool's index); number and description come from the first
image's header, read once per series; a series is acquiring while its open-series file exists
(agent.open_series), ended otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from agent.spool import Spool, SpooledInstance, SpoolError
from agent.spool.summary import REPORT_CLASSES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesLabel:
    number: int | None
    description: str


@dataclass(frozen=True)
class ExamSeries:
    series_instance_uid: str
    series_number: int | None
    description: str
    slices: int  # durable images in the spool
    ended: bool

    def to_json(self) -> dict[str, object]:
        return {
            "series_instance_uid": self.series_instance_uid,
            "series_number": self.series_number,
            "description": self.description,
            "slices": self.slices,
            "ended": self.ended,
        }


class SeriesLister:
    """Lists an exam's image series; remembers each series' label (it never changes)."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._labels: dict[str, SeriesLabel] = {}
        self._study = ""

    def of_exam(self, study_uid: str, token: str, open_series: Collection[str]) -> list[ExamSeries]:
        """The exam's image series (a study may hold other exams' too: those are left out)."""
        if study_uid != self._study:  # labels of the exam shown only: the memory stays small
            self._study, self._labels = study_uid, {}
        first: dict[str, SpooledInstance] = {}
        counts: dict[str, int] = {}
        for item in self.spool.instances(study_uid):
            if item.record.exam_token != token:
                continue
            if item.record.sop_class_uid.startswith(REPORT_CLASSES):
                continue
            uid = item.record.series_instance_uid
            first.setdefault(uid, item)
            counts[uid] = counts.get(uid, 0) + 1
        listed = []
        for uid, item in first.items():
            label = self._label(item)
            listed.append(
                ExamSeries(
                    uid, label.number, label.description, counts[uid], uid not in open_series
                )
            )
        return sorted(listed, key=lambda s: (s.series_number or 0, s.series_instance_uid))

    def _label(self, item: SpooledInstance) -> SeriesLabel:
        uid = item.record.series_instance_uid
        label = self._labels.get(uid)
        if label is None:
            label = _read_label(self.spool, item)
            if label is not UNREADABLE:  # kept only once read: a passing failure is retried
                self._labels[uid] = label
        return label


UNREADABLE = SeriesLabel(None, "")


def _read_label(spool: Spool, item: SpooledInstance) -> SeriesLabel:
    try:
        with spool.path(item).open("rb") as f:
            ds = dcmread(f, stop_before_pixels=True, specific_tags=[0x00200011, 0x0008103E])
    except (OSError, SpoolError, InvalidDicomError, ValueError) as e:
        # the spool's own checks report damaged files; here the series just has no label
        log.warning(
            "series %s: its first image could not be read: %s", item.record.series_instance_uid, e
        )
        return UNREADABLE
    number = ds.get("SeriesNumber")
    return SeriesLabel(
        int(number) if number is not None else None, str(ds.get("SeriesDescription", ""))
    )
