"""The TUI driven by Textual's pilot against the real daemon (mock scanner), a real RIS
(DCMTK wlmscpfs) and a real archive (DCMTK storescp): search the worklist, confirm the patient
(safety information shown), start, watch slices arrive live, end, see `delivered`; the sign-in
and the idle lock recorded in the daemon's audit trail."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from pathlib import Path

from tests.peers import archived
from tests.test_tui_rig import rig, screen_text, sign_in, type_text, until, until_shown


def test_worklist_to_delivered(tmp_path: Path, stack: ExitStack) -> None:
    r = rig(tmp_path, stack)

    async def go() -> None:
        app = r.app()
        async with app.run_test(size=(80, 24)) as pilot:
            await sign_in(pilot)
            await until_shown(pilot, "3 items")
            # search as you type, accents ignored; Esc clears
            await pilot.press("slash")
            await type_text(pilot, "mul")
            await until(pilot, lambda: "DOE^JANE" not in screen_text(app), "filtered")
            assert "Müller^Jürgen" in screen_text(app)
            await pilot.press("escape")
            await until_shown(pilot, "DOE^JANE")
            # the list is sorted by time then accession: A1001 (Müller) is the first row
            await pilot.press("enter")
            await until_shown(pilot, "Start this exam?")
            text = screen_text(app)
            for shown in ("P12345", "1961-03-04", "Weight 82 kg", "Sex M"):
                assert shown in text, shown
            assert "! Allergies   IODINE CONTRAST" in text
            assert "! Alerts      PACEMAKER" in text
            assert "Pregnancy   not pregnant" in text
            await until_shown(pilot, "[x] PACS             ok")  # health from a real C-ECHO
            await pilot.press("enter")
            await until_shown(pilot, "started")
            assert "by RT SMITH" in screen_text(app)

            simulate = asyncio.create_task(
                asyncio.to_thread(r.request, "simulate", {"series": 2, "slices": 20, "rate": 20})
            )
            await until_shown(pilot, "acquiring")  # live, while the series is acquired
            assert (await simulate)["accepted"] == 40
            await until(pilot, lambda: screen_text(app).count(" ended") == 2, "2 series ended")
            text = screen_text(app)
            assert "CHEST 5.0 STANDARD" in text and " 20 " in text

            await pilot.press("x")
            await until_shown(pilot, "as completed?")
            await pilot.press("y")
            await until_shown(pilot, "COMPLETED")
            await pilot.press("3")
            await until_shown(pilot, "delivered")
            assert "A1001" in screen_text(app)

    asyncio.run(go())
    exam = r.agent.json("exam", "status")["exam"]
    assert exam is None  # ended
    (study,) = r.agent.json("queue")["studies"]
    assert study["accession_number"] == "A1001" and study["exam_state"] == "completed"
    ct = [ds for ds in archived(tmp_path / "archive") if ds.Modality == "CT"]
    assert len(ct) == 40
    assert {str(ds.OperatorsName) for ds in ct} == {"RT SMITH"}
    assert {ds.AccessionNumber for ds in ct} == {"A1001"}


def test_idle_lock_asks_the_name_again(tmp_path: Path, stack: ExitStack) -> None:
    r = rig(tmp_path, stack, extra="\n[tui]\nidle_lock_minutes = 0.03\n")

    async def go() -> None:
        app = r.app()
        async with app.run_test(size=(80, 24)) as pilot:
            await sign_in(pilot, "RT JONES")
            await until_shown(pilot, "Locked: no key for a while (RT JONES)")
            assert "Müller" not in screen_text(app)  # nothing of the patient left showing
            await type_text(pilot, "RT BROWN")
            await pilot.press("enter")
            await until_shown(pilot, "RT BROWN")

    asyncio.run(go())
    records = r.agent.json("audit")["records"]
    seen = [(x["action"], x["operator"]) for x in records if x["action"].startswith("operator.")]
    assert seen[:3] == [
        ("operator.sign_in", "RT JONES"),
        ("operator.lock", "RT JONES"),
        ("operator.sign_in", "RT BROWN"),
    ]
