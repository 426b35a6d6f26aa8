"""The `queue --json` document (SPEC §8): delivery state per study and destination."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from agent.timestamps import epoch_iso

if TYPE_CHECKING:
    from agent.daemon import Daemon


def queue_document(d: Daemon) -> dict[str, Any]:
    now = time.time()
    studies = []
    for s in d.spool.summary():
        entry = d.book.entry(s.exam_tokens[0]) if s.exam_tokens else None
        destinations: list[dict[str, Any]] = []
        for dest in s.destinations:
            later = dest.next_attempt if dest.next_attempt and dest.next_attempt > now else None
            destinations.append(
                {
                    "name": dest.name,
                    "state": dest.state,
                    "images": dest.images,
                    "sent": dest.sent,
                    "failed": dest.failed,
                    "pending": dest.pending,
                    "deferred": dest.deferred,  # of pending: sent when the exam ends
                    "last_error": dest.last_error,
                    "next_attempt": epoch_iso(later) if dest.pending else None,
                }
            )
        studies.append(
            {
                "study_instance_uid": s.study_instance_uid,
                "accession_number": entry.exam.procedure.accession_number if entry else "",
                "unscheduled": entry.exam.procedure.unscheduled if entry else False,
                "exam_state": entry.state if entry else None,
                "images": s.images,
                "damaged": s.problems,
                "destinations": destinations,
            }
        )
    return {
        "studies": studies,
        "destinations": [
            {
                "name": name,
                "associations": sender.status.associations,
                "failures_in_a_row": sender.status.failures_in_a_row,
                "backoff_until": epoch_iso(sender.status.hold_until),
                "last_error": sender.status.last_error,
            }
            for name, sender in d.senders.items()
        ],
        "unassigned": [h.to_json() for h in d.holding.series()],
        "alarms": [a.to_json() for a in d.alarms.active()],
        **({"mpps": d.mpps.status()} if d.mpps is not None else {}),
    }
