"""UID rules (SPEC §4): valid, unique within a factory, across factories (restarts, consoles)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.dicom import uids
from agent.dicom.uids import (
    IMPLEMENTATION_CLASS_UID,
    MAX_ROOT_LENGTH,
    PYDICOM_ROOT,
    UidFactory,
    is_valid_uid,
)

ROOT = "1.2.826.0.1.3680043.10.999"
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "uid",
    ["1.2", "0.0", "2.25.0", "1.2.840.10008.5.1.4.1.1.2", "2.25." + "9" * 59, ROOT + ".0.10.101"],
)
def test_valid(uid: str) -> None:
    assert is_valid_uid(uid)


@pytest.mark.parametrize(
    "uid",
    [
        "",
        "1",
        "1.",
        ".1",
        "1..2",
        "1.02",
        "01.2",
        "1.2.a",
        "1.2 ",
        "1,2",
        "3.1",
        "1.40",
        "2.25." + "9" * 60,  # 65 characters
        "1.2.-3",
    ],
)
def test_invalid(uid: str) -> None:
    assert not is_valid_uid(uid)


@pytest.mark.parametrize(
    "root", [None, ROOT, "2.16.840.1.113669", "2.1." + "2" * (MAX_ROOT_LENGTH - 4)]
)
def test_many_are_valid_and_distinct(root: str | None) -> None:
    factory = UidFactory(root)
    made = [factory.new() for _ in range(20000)]
    assert len(set(made)) == len(made)
    for uid in made:
        assert is_valid_uid(uid), uid
        assert not uid.startswith(PYDICOM_ROOT)
        if root is None:
            assert uid.startswith("2.25.")
        else:
            assert uid.startswith(root + ".")


def test_two_factories_disjoint_like_a_restart() -> None:
    for root in (ROOT, None):
        before, after = UidFactory(root), UidFactory(root)
        first = {before.new() for _ in range(5000)}
        second = {after.new() for _ in range(5000)}
        assert len(first) == len(second) == 5000
        assert not first & second


def test_distinct_across_processes() -> None:
    """A restarted agent (a new process with the same root) never repeats a UID."""
    code = (
        "from agent.dicom.uids import UidFactory\n"
        f"f = UidFactory({ROOT!r})\n"
        "print('\\n'.join(f.new() for _ in range(2000)))\n"
    )
    runs = [
        set(
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
            ).stdout.split()
        )
        for _ in range(2)
    ]
    assert len(runs[0]) == len(runs[1]) == 2000
    assert not runs[0] & runs[1]


def test_thread_safe() -> None:
    factory = UidFactory(ROOT)
    results: list[list[str]] = [[] for _ in range(8)]

    def work(out: list[str]) -> None:
        out.extend(factory.new() for _ in range(2000))

    threads = [threading.Thread(target=work, args=(r,)) for r in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    made = [u for r in results for u in r]
    assert len(set(made)) == len(made) == 16000


def test_counter_wrap_starts_a_new_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uids, "COUNTER_BITS", 2)
    factory = UidFactory(ROOT)
    made = [factory.new() for _ in range(50)]
    assert len(set(made)) == 50
    assert all(is_valid_uid(u) for u in made)


@pytest.mark.parametrize(
    ("root", "message"),
    [
        ("", "non-empty"),
        ("1.2.03", "not a valid UID root"),
        ("1.2.", "not a valid UID root"),
        ("abc", "not a valid UID root"),
        ("4.5", "not a valid UID root"),
        (PYDICOM_ROOT, "pydicom"),
        (PYDICOM_ROOT + ".1", "pydicom"),
        ("2.25", "2.25"),
        ("2.25.123", "2.25"),
        ("2.1." + "2" * (MAX_ROOT_LENGTH - 3), "characters long"),
    ],
)
def test_bad_roots_are_refused(root: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        UidFactory(root)


def test_longest_root_still_leaves_uniqueness() -> None:
    root = "2.1." + "2" * (MAX_ROOT_LENGTH - 4)
    factory = UidFactory(root)
    assert factory._session_bits >= uids.MIN_SESSION_BITS
    assert all(len(factory.new()) <= 64 for _ in range(1000))


def test_implementation_class_uid_is_fixed_and_ours() -> None:
    assert is_valid_uid(IMPLEMENTATION_CLASS_UID)
    assert IMPLEMENTATION_CLASS_UID.startswith("2.25.")
    code = "from agent.dicom.uids import IMPLEMENTATION_CLASS_UID as u; print(u)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == IMPLEMENTATION_CLASS_UID
