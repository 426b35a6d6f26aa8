"""The TUI when things go wrong, against the real daemon: an archive that refuses every image
(the fault-injecting SCP) shows FAILED with its error until `t` retries it to `delivered`; the
alarm stays in the bar until `a`; an emergency patient started from the form; the daemon
stopping shows DISCONNECTED, and its return is picked up by itself (re-subscribed, refreshed)."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from pathlib import Path

from tests.fault_scp import always
from tests.test_tui_rig import (
    AnyStorageFaultSCP,
    rig,
    screen_text,
    sign_in,
    type_text,
    until,
    until_shown,
)


def test_failing_archive_shows_its_error_and_retry_delivers(
    tmp_path: Path, stack: ExitStack
) -> None:
    scp = AnyStorageFaultSCP(always(0xC000))  # "cannot understand": a permanent failure, parked
    r = rig(tmp_path, stack, fault=scp)

    async def go() -> None:
        app = r.app()
        async with app.run_test(size=(80, 24)) as pilot:
            await sign_in(pilot)
            await pilot.press("e")  # an emergency patient, registered by hand
            await until_shown(pilot, "EMERGENCY patient")
            await type_text(pilot, "E999")
            await pilot.press("tab")
            await type_text(pilot, "DOE^JOHN")
            await pilot.press("enter")
            await until_shown(pilot, "DOE^JOHN · E999 · unscheduled · started")
            assert (await asyncio.to_thread(r.request, "simulate", {"slices": 3}))["accepted"] == 3
            await pilot.press("d")  # discontinue, with a reason from the list
            await until_shown(pilot, "Discontinue the exam: why?")
            await pilot.press("down", "enter")
            await until_shown(pilot, "DISCONTINUED")
            assert "(Equipment failure)" in screen_text(app)

            await pilot.press("3")
            await until_shown(pilot, "FAILED")
            await until_shown(pilot, "cannot understand")
            await until_shown(pilot, "! DELIVERY FAILED")  # the alarm bar
            await pilot.press("a")
            await until(pilot, lambda: "[a] acknowledge" not in screen_text(app), "acknowledged")
            await pilot.press("4")
            await until_shown(pilot, "seen")  # still listed while its cause lasts

            scp.answer = always(0x0000)  # the archive is mended
            await pilot.press("3", "t")
            await until_shown(pilot, "delivered")
            await until(pilot, lambda: "4 Alarms 1" not in screen_text(app), "alarm cleared")

    asyncio.run(go())
    assert len(scp.stored()) >= 3
    study = r.agent.json("queue")["studies"][0]
    assert study["unscheduled"] is True and study["exam_state"] == "discontinued"
    actions = {(x["action"], x["operator"]) for x in r.agent.json("audit")["records"]}
    assert ("alarm.acknowledge", "RT SMITH") in actions
    assert ("exam.start", "RT SMITH") in actions


def test_daemon_stopping_shows_disconnected_and_recovers(tmp_path: Path, stack: ExitStack) -> None:
    r = rig(tmp_path, stack)

    async def go() -> None:
        app = r.app()
        async with app.run_test(size=(80, 24)) as pilot:
            await sign_in(pilot)
            await until_shown(pilot, "· connected")
            await asyncio.to_thread(r.agent.stop)
            await until_shown(pilot, "DISCONNECTED — retrying")
            await pilot.press("2")  # still answers keys while the daemon is away
            await until_shown(pilot, "No exam open")
            await asyncio.to_thread(r.agent.start)
            await until_shown(pilot, "· connected")
            # an exam started by someone else (the CLI) shows: subscribed again
            started = await asyncio.to_thread(
                r.agent.cli, "exam", "start", "--accession", "A1002", "--operator", "RT CLI"
            )
            assert started.returncode == 0, started.stderr
            await until_shown(pilot, "DOE^JANE · P22222 · A1002 · started")
            assert (await asyncio.to_thread(r.request, "simulate", {"slices": 4}))["accepted"] == 4
            await until_shown(pilot, " 4 ")

    asyncio.run(go())
