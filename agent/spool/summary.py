"""Per study and destination counts, for `queue --json` and the TUI."""

from __future__ import annotations

from collections import defaultdict

from .index import Index
from .model import DestinationSummary, StudySummary

# Counts are of images: a study's structured reports (the dose report, SOP classes
# 1.2.840.10008.5.1.4.1.1.88.*) are delivered like them but not counted as images; the
# state is that of every instance, reports included (the last two columns).
REPORT_CLASSES = "1.2.840.10008.5.1.4.1.1.88."  # the prefix of every SR Storage SOP class
_IMAGE = f"i.sop_class_uid NOT LIKE '{REPORT_CLASSES}%'"
_PER_DESTINATION = f"""
SELECT i.study_instance_uid, d.destination, sum({_IMAGE}),
       sum(d.state = 'delivered' AND {_IMAGE}), sum(d.commitment IS 'committed' AND {_IMAGE}),
       sum(d.state = 'failed' AND {_IMAGE}),
       sum(d.state IN ('deferred', 'pending', 'sending') AND {_IMAGE}),
       sum(d.state = 'deferred' AND {_IMAGE}),
       min(CASE WHEN d.state = 'pending' THEN d.next_attempt END),
       count(*), sum(d.commitment IS 'committed'), sum(d.state = 'failed'),
       sum(d.state IN ('deferred', 'pending', 'sending')), sum(d.state = 'sending')
FROM deliveries d JOIN instances i ON i.seq = d.seq
GROUP BY i.study_instance_uid, d.destination ORDER BY d.destination
"""
# SQLite takes a bare column (last_error) from the row that holds the max().
_LAST_ERROR = """
SELECT i.study_instance_uid, d.destination, d.last_error, max(d.updated_at)
FROM deliveries d JOIN instances i ON i.seq = d.seq
WHERE d.last_error IS NOT NULL AND d.state IN ('deferred', 'pending', 'sending', 'failed')
GROUP BY i.study_instance_uid, d.destination
"""
_STUDIES = f"""
SELECT study_instance_uid, sum({_IMAGE.removeprefix("i.")}), sum(problem IS NOT NULL), min(seq)
FROM instances GROUP BY study_instance_uid ORDER BY min(seq)
"""
_TOKENS = """
SELECT study_instance_uid, exam_token, min(seq) FROM instances
WHERE exam_token IS NOT NULL GROUP BY study_instance_uid, exam_token ORDER BY min(seq)
"""


def _state(instances: int, committed: int, failed: int, pending: int, sending: int) -> str:
    if failed:
        return "failed"
    if sending:
        return "sending"
    if pending:
        return "pending"
    return "committed" if committed == instances else "delivered"


def summarize(index: Index) -> list[StudySummary]:
    """One entry per study, oldest first; destinations by name."""
    last_errors = {(r[0], r[1]): r[2] for r in index.query(_LAST_ERROR)}
    tokens: dict[str, list[str]] = defaultdict(list)
    for study, token, _ in index.query(_TOKENS):
        tokens[study].append(token)
    destinations: dict[str, list[DestinationSummary]] = defaultdict(list)
    for (
        study,
        dest,
        images,
        sent,
        committed,
        failed,
        pending,
        deferred,
        nxt,
        *every,  # the same over every instance, reports included: the state
    ) in index.query(_PER_DESTINATION):
        destinations[study].append(
            DestinationSummary(
                name=dest,
                state=_state(*every),
                deferred=deferred,
                images=images,
                sent=sent,
                committed=committed,
                failed=failed,
                pending=pending,
                last_error=last_errors.get((study, dest)),
                next_attempt=nxt,
            )
        )
    return [
        StudySummary(
            study_instance_uid=study,
            images=images,
            problems=problems,
            exam_tokens=tuple(tokens[study]),
            destinations=tuple(destinations[study]),
        )
        for study, images, problems, _ in index.query(_STUDIES)
    ]
