"""Pure formatting for the screens: no Textual, no I/O (tested on its own)."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from typing import Any

STATE_WORDS = {
    "pending": "pending",
    "deferred": "deferred",
    "sending": "sending",
    "delivered": "delivered",
    "committed": "committed",
    "failed": "FAILED",
}


def fold(text: str) -> str:
    """Lower case without accents, for search as you type (`Mül` finds `MÜLLER`)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def matches(query: str, *fields: str | None) -> bool:
    """Every word of `query` is in one of `fields` (accents and case ignored)."""
    hay = [fold(f) for f in fields if f]
    return all(any(word in h for h in hay) for word in fold(query).split())


def parse_iso(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def local_hhmm(value: str | None) -> str:
    """An ISO 8601 time from the daemon as the console's local HH:MM ("" when none)."""
    moment = parse_iso(value)
    return moment.astimezone().strftime("%H:%M") if moment else ""


def scheduled(time: str | None) -> str:
    """DICOM TM "093000" -> "09:30"."""
    digits = (time or "").split(".")[0]
    return f"{digits[:2]}:{digits[2:4]}" if len(digits) >= 4 else digits


def age(seconds: float) -> str:
    """ "40 s", "14 min", "3 h 5 min", "2 d"."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h} h {m} min" if m else f"{h} h"
    return f"{s // 86400} d"


def bar(done: int, total: int, width: int = 12) -> str:
    """A progress bar that reads without colour: filled and empty blocks."""
    if total <= 0:
        return "░" * width
    filled = min(width, round(width * done / total))
    return "█" * filled + "░" * (width - filled)


def birth_date(value: str | None) -> str:
    """ "19610304" or "1961-03-04" -> "1961-03-04"; "" when unknown."""
    v = (value or "").replace("-", "")
    return f"{v[:4]}-{v[4:6]}-{v[6:8]}" if len(v) == 8 and v.isdigit() else (value or "")


def safety_lines(item: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(label, value, flagged) for the safety information of a worklist item: always shown,
    "none recorded" when absent, flagged `!` when there is something to know."""
    allergies = ", ".join(item.get("allergies") or []) or "none recorded"
    alerts = ", ".join(item.get("medical_alerts") or []) or "none recorded"
    pregnancy = item.get("pregnancy_status") or "not recorded"
    return [
        ("Allergies", allergies, bool(item.get("allergies"))),
        ("Alerts", alerts, bool(item.get("medical_alerts"))),
        (
            "Pregnancy",
            pregnancy,
            pregnancy in ("possibly pregnant", "definitely pregnant", "unknown", "not recorded"),
        ),
    ]


def weight_size(item: dict[str, Any]) -> str:
    weight = item.get("weight_kg")
    size = item.get("size_m")
    w = f"{weight} kg" if weight not in (None, "") else "not recorded"
    s = f"{size} m" if size not in (None, "") else "not recorded"
    return f"Weight {w}  Size {s}"


def echo_health(peer: dict[str, Any] | None, at: datetime | None, now: datetime) -> str:
    """The health of a destination from its last echo: "ok 2 min ago", "FAILED: …"."""
    if peer is None or at is None:
        return "not checked yet"
    if peer.get("ok"):
        return f"ok {age((now - at).total_seconds())} ago"
    return f"FAILED: {peer.get('error') or 'no answer'}"


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"
