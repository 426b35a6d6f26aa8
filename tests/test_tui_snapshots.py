"""Snapshots of the main screens at 80×24 and 160×48, as text (what a terminal shows), against
the real daemon, RIS and archive; clocks, dates, UIDs and durations masked. A screen that
changes on purpose: `UPDATE_SNAPSHOTS=1 pytest tests/test_tui_snapshots.py`, then review the
diff of tests/snapshots/tui/."""

from __future__ import annotations

import asyncio
import difflib
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from tests.test_tui_rig import masked, rig, screen_text, sign_in, until_shown

SNAPSHOTS = Path(__file__).parent / "snapshots" / "tui"
UPDATE = os.environ.get("UPDATE_SNAPSHOTS") == "1"


async def snapshot(pilot: Pilot[Any], name: str, timeout: float = 20) -> None:
    """The screen matches the stored one (it may take a moment to settle), or the test fails
    with the difference."""
    width, height = pilot.app.size
    stored = SNAPSHOTS / f"{name}-{width}x{height}.txt"
    await pilot.wait_for_scheduled_animations()
    await pilot.pause(0.3)
    if UPDATE or not stored.exists():
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_text(masked(screen_text(pilot.app)) + "\n")
        if not UPDATE:
            pytest.fail(f"{stored} written: review it and run again")
        return
    want = stored.read_text()
    deadline = time.monotonic() + timeout
    while (got := masked(screen_text(pilot.app)) + "\n") != want:
        if time.monotonic() > deadline:
            diff = "".join(
                difflib.unified_diff(want.splitlines(True), got.splitlines(True), "stored", "now")
            )
            raise AssertionError(f"{stored.name} differs:\n{diff}")
        await pilot.pause(0.1)


@pytest.mark.parametrize("size", [(80, 24), (160, 48)], ids=["80x24", "160x48"])
def test_main_screens(tmp_path: Path, stack: ExitStack, size: tuple[int, int]) -> None:
    r = rig(tmp_path, stack, research=True)

    async def go() -> None:
        app = r.app(fixed_clock=True)
        async with app.run_test(size=size) as pilot:
            await until_shown(pilot, "Enter: sign in")
            await snapshot(pilot, "sign-in")
            await sign_in(pilot)
            await until_shown(pilot, "3 items")
            await snapshot(pilot, "worklist")
            await pilot.press("enter")
            await until_shown(pilot, "[x] PACS             ok")
            await until_shown(pilot, "[ ] RESEARCH         ok")
            await pilot.press("down", "space")  # RESEARCH too, for this exam
            await until_shown(pilot, "[x] RESEARCH")
            await snapshot(pilot, "confirm")
            await pilot.press("enter")
            await until_shown(pilot, "started")
            await asyncio.to_thread(r.request, "simulate", {"series": 2, "slices": 5})
            await until_shown(pilot, "CHEST 1.25 LUNG")
            await snapshot(pilot, "exam")
            await pilot.press("x", "y")
            await until_shown(pilot, "COMPLETED")
            await asyncio.to_thread(r.request, "wait", {"timeout": 60})
            await pilot.press("3")
            await until_shown(pilot, "delivered")
            await snapshot(pilot, "delivery")
            await pilot.press("4")
            await snapshot(pilot, "alarms")
            await pilot.press("f1")
            await until_shown(pilot, "Keys (Esc closes)")
            await snapshot(pilot, "help")
            await pilot.press("escape", "1", "e")
            await until_shown(pilot, "EMERGENCY patient")
            await snapshot(pilot, "emergency")

    asyncio.run(go())
