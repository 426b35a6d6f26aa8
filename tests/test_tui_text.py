"""The TUI's pure parts: formatting (search folding, ages, bars, safety lines) and the board
(events applied, gaps noticed, alarms acknowledged per raising)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.tui import text
from agent.tui.board import Board
from agent.tui.emergency import request_args


def test_search_ignores_accents_and_case() -> None:
    assert text.matches("mül", "MÜLLER^JÜRGEN")
    assert text.matches("mul jur", "Müller^Jürgen")
    assert text.matches("a100", "DOE^JANE", "P2", "A1002")
    assert not text.matches("smith", "DOE^JANE", "P2", "A1002")
    assert text.matches("", "anything")


def test_formats() -> None:
    assert [text.age(s) for s in (5, 840, 3600, 3900, 200000)] == [
        "5 s",
        "14 min",
        "1 h",
        "1 h 5 min",
        "2 d",
    ]
    assert text.bar(0, 10, 4) == "░░░░" and text.bar(5, 10, 4) == "██░░"
    assert text.bar(10, 10, 4) == "████" and text.bar(3, 0, 4) == "░░░░"
    assert text.scheduled("093000") == "09:30" and text.scheduled("0930") == "09:30"
    assert text.birth_date("19610304") == "1961-03-04" and text.birth_date(None) == ""
    assert text.clip("abcdef", 4) == "abc…"


def test_safety_lines_show_absence_and_flag_what_matters() -> None:
    empty = text.safety_lines({"allergies": [], "medical_alerts": [], "pregnancy_status": None})
    assert empty == [
        ("Allergies", "none recorded", False),
        ("Alerts", "none recorded", False),
        ("Pregnancy", "not recorded", True),
    ]
    item = {"allergies": ["IODINE"], "medical_alerts": [], "pregnancy_status": "not pregnant"}
    assert text.safety_lines(item)[0] == ("Allergies", "IODINE", True)
    assert text.safety_lines(item)[2] == ("Pregnancy", "not pregnant", False)
    assert text.safety_lines({"pregnancy_status": "possibly pregnant"})[2][2] is True
    assert (
        text.weight_size({"weight_kg": "82", "size_m": None}) == "Weight 82 kg  Size not recorded"
    )


def test_echo_health() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert text.echo_health(None, None, now) == "not checked yet"
    ok = {"ok": True, "error": None}
    assert text.echo_health(ok, now - timedelta(minutes=2), now) == "ok 2 min ago"
    assert text.echo_health({"ok": False, "error": "refused"}, now, now) == "FAILED: refused"


def exam(uid: str = "1.2.3") -> dict[str, object]:
    return {"study_instance_uid": uid, "state": "open", "patient_name": "DOE^JANE"}


def test_board_counts_slices_of_the_exam_shown() -> None:
    b = Board()
    b.apply(1, "exam.started", exam())
    series = {"study_instance_uid": "1.2.3", "series_instance_uid": "9", "series_number": 1}
    b.apply(2, "series.started", {**series, "description": "CHEST"})
    for seq in range(3, 6):
        changes = b.apply(seq, "slice.accepted", {**series, "instance_number": seq})
    assert changes.parts == {"exam"} and changes.ask == {"queue"}
    other = {"study_instance_uid": "7.7", "series_instance_uid": "8", "instance_number": 1}
    b.apply(6, "slice.accepted", other)  # a late slice of another exam: not counted here
    b.apply(7, "series.ended", {**series, "slices": 3})
    (s,) = b.series.values()
    assert (s.description, s.slices, s.ended, s.expected) == ("CHEST", 3, True, 3)


def test_board_asks_everything_again_after_a_gap() -> None:
    b = Board()
    assert b.apply(1, "delivery.progress", {}).ask == {"queue"}
    assert b.apply(5, "alarm.cleared", {"kind": "k", "subject": ""}).ask >= {
        "status",
        "exam.status",
        "queue",
    }


def test_acknowledged_alarm_leaves_the_bar_but_not_the_list() -> None:
    b = Board()
    alarm = {"kind": "disk_low", "subject": "", "message": "low", "since": "2026-01-01T08:00:00Z"}
    b.apply(1, "alarm.raised", alarm)
    assert b.newest_unacknowledged() == alarm
    b.acknowledge(("disk_low", ""))
    assert b.newest_unacknowledged() is None and b.alarms_newest_first() == [alarm]
    b.apply(2, "alarm.cleared", alarm)
    again = {**alarm, "since": "2026-01-01T09:00:00Z"}
    b.apply(3, "alarm.raised", again)  # raised anew: to be acknowledged anew
    assert b.newest_unacknowledged() == again


def test_an_alarm_acknowledged_at_another_console_leaves_this_bar_too() -> None:
    """The daemon keeps acknowledgements: an event from another TUI, or a status read after a
    restart of this one, shows the alarm as seen."""
    alarm = {"kind": "disk_low", "subject": "", "message": "low", "since": "2026-01-01T08:00:00Z"}
    b = Board()
    b.apply(1, "alarm.raised", {**alarm, "acknowledged": None})
    seen = {**alarm, "acknowledged": {"by": "RT JONES", "at": "2026-01-01T08:05:00Z"}}
    b.apply(2, "alarm.acknowledged", seen)
    assert b.newest_unacknowledged() is None and b.alarms_newest_first() == [seen]
    fresh = Board()
    fresh.take_status({"exam": None, "alarms": [seen]})
    assert fresh.newest_unacknowledged() is None


def test_emergency_form() -> None:
    blank = {"em-id": "", "em-name": "", "em-birth": "", "em-sex": ""}
    assert request_args(blank) == {"unscheduled": True}
    assert isinstance(request_args({**blank, "em-id": "E1"}), str)  # name missing
    assert isinstance(
        request_args({**blank, "em-id": "E1", "em-name": "X", "em-birth": "1961"}), str
    )
    assert request_args(
        {"em-id": "E1", "em-name": "DOE^J", "em-birth": "19610304", "em-sex": "m"}
    ) == {"patient_id": "E1", "patient_name": "DOE^J", "birth_date": "19610304", "sex": "M"}
