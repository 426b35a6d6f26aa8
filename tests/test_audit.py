"""The audit trail: durable records with their ATNA event, a torn line survived."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.audit import AuditTrail


def test_records_are_appended_with_their_atna_event(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.log")
    trail.record("exam.start", operator="RT Smith", os_user="tech", token="T1", study="1.2.3")
    trail.record("exam.end", operator="RT Smith", os_user="tech", token="T1")
    records, bad = AuditTrail(tmp_path / "audit.log").read()
    assert bad == []
    assert [r["action"] for r in records] == ["exam.start", "exam.end"]
    assert records[0]["atna_event"] == "110111 Procedure Record"
    assert records[0]["atna_action"] == "C"
    assert records[0]["operator"] == "RT Smith" and records[0]["os_user"] == "tech"
    assert records[0]["objects"] == {"token": "T1", "study": "1.2.3"}
    assert records[0]["time"].endswith("Z")
    mode = stat.S_IMODE((tmp_path / "audit.log").stat().st_mode)
    assert mode & 0o007 == 0  # nothing for others: the trail names patients' studies


def test_a_torn_line_is_reported_and_the_rest_stands(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.log")
    trail.record("agent.start")
    with (tmp_path / "audit.log").open("ab") as f:
        f.write(b'{"time": "2026-11-26T')  # a crash mid-append
    after = AuditTrail(tmp_path / "audit.log")  # the restarted agent
    after.record("agent.start")
    after.record("purge", study="1.2.3")
    records, bad = after.read()
    assert [r["action"] for r in records] == ["agent.start", "agent.start", "purge"]
    assert bad == [2]


def test_unknown_action_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown audit action"):
        AuditTrail(tmp_path / "audit.log").record("exam.explode")


def test_a_failed_append_never_swallows_the_next_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills mid-append: part of the line is written, the call raises; the next
    record, once space is back, is whole and on a line of its own."""
    trail = AuditTrail(tmp_path / "audit.log")
    trail.record("agent.start")

    def disk_full(path: Path, data: bytes) -> None:
        with path.open("ab") as f:
            f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr("agent.audit.append_durable", disk_full)
        with pytest.raises(OSError):
            trail.record("exam.start", token="T1")
    trail.record("exam.end", token="T1")
    records, bad = trail.read()
    assert [r["action"] for r in records] == ["agent.start", "exam.end"] and bad == [2]
