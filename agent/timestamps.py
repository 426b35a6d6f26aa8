"""Times as the CLI, the control socket and the logs show them: ISO 8601 UTC, to the second."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch_iso(epoch: float | None) -> str | None:
    return None if epoch is None else utc_iso(datetime.fromtimestamp(epoch, UTC))
