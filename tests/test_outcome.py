"""The C-STORE status map of SPEC §6 and the backoff it drives."""

from __future__ import annotations

import random

import pytest

from agent.net.outcome import Outcome, store_verdict
from agent.net.retry import Backoff


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (0x0000, Outcome.OK),
        (0xB000, Outcome.OK),
        (0xB006, Outcome.OK),
        (0xB007, Outcome.OK),
        (0xA700, Outcome.RETRY),
        (0xA7FF, Outcome.RETRY),
        (0x0213, Outcome.RETRY),
        (None, Outcome.RETRY),
        (0xA900, Outcome.FAIL),
        (0xA9FF, Outcome.FAIL),
        (0xC000, Outcome.FAIL),
        (0xCFFF, Outcome.FAIL),
        (0x0122, Outcome.FAIL),
        (0x0124, Outcome.FAIL),
        (0xDEAD, Outcome.FAIL),
    ],
)
def test_store_status_map(status: int | None, outcome: Outcome) -> None:
    verdict = store_verdict(status)
    assert verdict.outcome is outcome
    assert verdict.reason
    if status is not None:
        assert f"0x{status:04X}" in verdict.reason


def test_warnings_are_reported_as_warnings() -> None:
    assert "warning" in store_verdict(0xB007).reason


def test_backoff_grows_is_capped_and_never_zero() -> None:
    b = Backoff(first_s=1, cap_s=60)
    rng = random.Random(7)
    ceilings = [b.ceiling(n) for n in range(1, 12)]
    assert ceilings == sorted(ceilings)
    assert ceilings[0] == 1 and ceilings[-1] == 60
    for n in range(1, 12):
        d = b.delay(n, rng)
        assert b.ceiling(n) / 2 <= d <= b.ceiling(n)
