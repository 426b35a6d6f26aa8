"""The exam tab knows what the daemon knows, not only what this TUI saw: opened in the middle
of an exam it lists every series already acquired (from `exam.status`, which reads the spool),
and with several held series `g` asks which one to assign. Real daemon (mock scanner), real RIS
(wlmscpfs) and archive (storescp), as in test_tui_flow."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from pathlib import Path

from agent.control.client import ControlClient
from tests.test_tui_rig import rig, screen_text, sign_in, until, until_shown


def test_a_tui_opened_mid_exam_lists_the_series_already_acquired(
    tmp_path: Path, stack: ExitStack
) -> None:
    r = rig(tmp_path, stack)
    exam = r.request("exam.start", {"patient_id": "P1", "patient_name": "DOE^JANE"})["exam"]
    with ControlClient(r.config.parent / "control.sock", timeout=60) as client:
        series_events = client.events(["series"])
        assert r.request("simulate", {"series": 2, "slices": 5})["accepted"] == 10
        ended = (e for e in series_events if e.event == "series.ended")
        next(ended), next(ended)

    status = r.request("exam.status")
    assert status["exam"]["token"] == exam["token"]
    listed = status["series"]
    assert [s["slices"] for s in listed] == [5, 5] and all(s["ended"] for s in listed)
    assert [s["series_number"] for s in listed] == sorted(s["series_number"] for s in listed)
    assert all(s["description"] for s in listed)

    async def go() -> None:
        app = r.app()
        async with app.run_test(size=(80, 24)) as pilot:
            await sign_in(pilot)
            await pilot.press("2")
            await until(pilot, lambda: screen_text(app).count(" ended") == 2, "2 series ended")
            text = screen_text(app)
            for s in listed:
                assert s["description"][:30] in text

    asyncio.run(go())


def test_with_two_held_series_g_asks_which_one(tmp_path: Path, stack: ExitStack) -> None:
    r = rig(tmp_path, stack)
    exam = r.request("exam.start", {"patient_id": "P1", "patient_name": "DOE^JANE"})["exam"]
    for token, slices in (("0badc0de", 2), ("0badc0df", 3)):
        r.request("simulate", {"slices": slices, "token": token})
    held = r.request("exam.status")["unassigned"]
    assert sorted(h["slices"] for h in held) == [2, 3]
    second = held[1]

    async def go() -> None:
        app = r.app()
        async with app.run_test(size=(80, 24)) as pilot:
            await sign_in(pilot)
            await pilot.press("2")
            await until_shown(pilot, "g assigns")
            await pilot.press("g")
            await until_shown(pilot, "Which held series?")
            await pilot.press("down", "enter")
            await until_shown(pilot, f"{second['slices']} slices) to:")
            await pilot.press("enter")  # the open exam is the first target
            await until(pilot, lambda: "Assign the held" not in screen_text(app), "assigned")

    asyncio.run(go())
    left = r.request("exam.status")["unassigned"]
    assert [h["series_instance_uid"] for h in left] == [held[0]["series_instance_uid"]]
    in_exam = r.request("exam.status")["series"]
    assert second["series_instance_uid"] in {s["series_instance_uid"] for s in in_exam}
    assert r.request("exam.status")["exam"]["token"] == exam["token"]
