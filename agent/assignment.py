"""`exam assign`: a person files a held series under an exam (SPEC §3), recorded with who and
when. The series' raw slices become CT images of that exam, queued like any other.

One at a time and crash-safe: the series is claimed under the Holding's lock (a second
assignment of it meanwhile is a conflict); the intent (target exam, operator, time, the Series
it becomes) is durable before any slice is filed, so that an interrupted assignment resumes to
the same exam, at the next `exam assign` of the series or at start (`resume_assignments`); the
held copy is forgotten only once every slice of it is in the spool.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from agent.control.protocol import OpError
from agent.dicom.assembler import Series
from agent.exam_book import Assignment, ExamEntry
from agent.faults import describe
from agent.holding import AssignIntent, HeldSeries, HoldingBusy, NotHeld
from agent.open_series import series_from_json, series_to_json
from agent.timestamps import utc_iso

if TYPE_CHECKING:
    from agent.daemon import Daemon

log = logging.getLogger(__name__)


def assign_series(
    d: Daemon, series_uid: str, target: str, operator: str, *, incomplete: bool = False
) -> ExamEntry:
    """File held series `series_uid` under the exam with token or Study Instance UID `target`.
    `incomplete`: even though the hardware has not ended it (its next slices follow it)."""
    entry = d.book.find(target)
    if entry is None:
        raise OpError("not_found", f"no exam with token or Study Instance UID {target}")
    try:
        with d.holding.claim(series_uid) as held:
            _assign(d, held, entry, operator, incomplete)
    except NotHeld as e:
        raise OpError("not_found", str(e)) from None
    except HoldingBusy as e:
        raise OpError("conflict", str(e)) from None
    return entry


def resume_assignments(d: Daemon) -> None:
    """At start: finish the assignments that a stop or crash interrupted."""
    for held in d.holding.series():
        intent = held.intent
        if intent is None:
            continue
        entry = d.book.entry(intent.token)
        try:
            if entry is None:
                raise OpError("not_found", f"no exam with token {intent.token}")
            with d.holding.claim(held.series_instance_uid) as claimed:
                _assign(d, claimed, entry, intent.operator, intent.incomplete)
        except OpError as e:
            log.error("assignment of %s not resumed: %s", held.series_instance_uid, e.message)
        except Exception as e:  # never keeps the daemon from starting; the series stays held
            log.error("assignment of %s not resumed: %s", held.series_instance_uid, describe(e))


def _assign(d: Daemon, held: HeldSeries, entry: ExamEntry, operator: str, incomplete: bool) -> None:
    uid, token = held.series_instance_uid, entry.exam.token
    intent = held.intent
    if intent is not None and intent.token != token:
        raise OpError(
            "conflict",
            f"series {uid} is being assigned to exam {intent.token} (by {intent.operator} at "
            f"{utc_iso(intent.at)}); that was interrupted: assign it to {intent.token} to finish",
        )
    if held.start is None:
        raise OpError("conflict", f"series {uid} cannot be assigned: {held.reason}")
    if intent is None:
        if not held.complete and not incomplete:
            raise OpError(
                "conflict",
                f"series {uid} is still being acquired; assign it once it ended, or as "
                "incomplete (--incomplete)",
            )
        try:
            series = d.acquisition.assembler.open_series(
                entry.exam, held.start, reassigned=True, series_instance_uid=uid
            )
        except ValueError as e:
            raise OpError("failed", f"series {uid} cannot be filed: {describe(e)}") from None
        if not held.complete:
            log.info(
                "series %s assigned to exam %s while incomplete (%d slices so far) by %s",
                *(uid, token, held.slices, operator),
            )
        intent = AssignIntent(
            token, operator, datetime.now(UTC), series_to_json(series), not held.complete
        )
        held = d.holding.record_intent(held, intent)
    else:
        series = series_from_json(intent.series, entry.exam)
    _file(d, held, series, intent)


def _file(d: Daemon, held: HeldSeries, series: Series, intent: AssignIntent) -> None:
    uid = held.series_instance_uid
    try:
        d.acquisition.file_held(held, series)
    except Exception as e:  # kept: the next exam assign of the series, or a restart, resumes
        log.debug("assign", exc_info=True)  # the text may quote a patient's data
        raise OpError(
            "failed",
            f"series {uid} was not filed completely ({describe(e)}); it stays held, and "
            f"exam assign to {intent.token} again finishes it",
        ) from None
    if not any(
        a.series_instance_uid == uid and a.token == intent.token for a in d.book.assignments()
    ):
        d.book.record_assignment(Assignment(uid, intent.token, intent.operator, intent.at))
    d.holding.forget(held)
    d.alarms.clear("unassigned_series", uid)
    d.wake(d.route(series.exam).now)
