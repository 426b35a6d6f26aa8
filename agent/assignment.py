"""`exam assign`: a person files a held series under an exam (SPEC §3), recorded with who and
when. The series' raw slices become CT images of that exam, queued like any other."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from agent.control.protocol import OpError
from agent.exam_book import Assignment, ExamEntry

if TYPE_CHECKING:
    from agent.daemon import Daemon


def assign_series(d: Daemon, series_uid: str, target: str, operator: str) -> ExamEntry:
    held = d.holding.find(series_uid)
    if held is None:
        raise OpError("not_found", f"no unassigned series {series_uid}")
    if not held.complete:
        raise OpError(
            "conflict", f"series {series_uid} is still being acquired; assign it once it ended"
        )
    entry = d.book.find(target)
    if entry is None:
        raise OpError("not_found", f"no exam with token or Study Instance UID {target}")
    acq = d.acquisition
    series = acq.assembler.open_series(
        entry.exam, held.start, reassigned=True, series_instance_uid=series_uid
    )
    done = {
        i.record.instance_number
        for i in d.spool.instances(entry.exam.study_instance_uid)
        if i.record.series_instance_uid == series_uid
    }
    for slice_ in d.holding.slices(held):
        if slice_.index + 1 not in done:  # an earlier, interrupted assign got this far
            acq.accept(series, slice_)
    d.book.record_assignment(Assignment(series_uid, entry.exam.token, operator, datetime.now(UTC)))
    d.holding.forget(held)
    d.alarms.clear("unassigned_series", series_uid)
    d.wake(d.route(entry.exam).now)
    return entry
