"""What the TUI tests share (no tests here): a real daemon with the mock scanner, a real
worklist SCP (DCMTK wlmscpfs), a real archive (DCMTK storescp, or the fault-injecting SCP), and
helpers to drive the app with Textual's pilot and read its screen as text."""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from textual.app import App
from textual.pilot import Pilot

from agent import config
from agent.control.client import ControlClient
from agent.tui.app import AgentApp
from tests import test_worklist as wl
from tests.agent_process import Agent, Dest, write_config
from tests.fault_scp import CT_IMAGE_STORAGE, SYNTAXES, FaultSCP
from tests.peers import storescp

ITEMS = [
    wl.Item(
        "A1001",
        wl.LATIN1_NAME,
        "ISO_IR 100",
        patient_id="P12345",
        sex="M",
        birth_date="19610304",
        weight="82",
        size="1.80",
        allergies=["IODINE CONTRAST"],
        alerts=["PACEMAKER"],
        pregnancy=1,
        sps_id="S1001",
    ),
    wl.Item("A1002", b"DOE^JANE", patient_id="P22222", pregnancy=2, sps_id="S1002"),
    wl.Item("A1003", b"ROE^RICHARD", patient_id="P33333", sex="M", weight="", sps_id="S1003"),
]
# a fixed clock for the screens, so that snapshots do not depend on the day
FIXED_NOW = datetime(2026, 11, 26, 9, 41).astimezone()


class AnyStorageFaultSCP(FaultSCP):
    """The fault-injecting archive, taking every storage SOP class (the exam sends a dose
    report besides the CT images), each answered as `answer` says."""

    def contexts(self) -> list[tuple[str, list[str] | None]]:
        from pynetdicom import AllStoragePresentationContexts

        others = [
            (str(c.abstract_syntax), list(SYNTAXES))
            for c in AllStoragePresentationContexts
            if c.abstract_syntax != CT_IMAGE_STORAGE
        ]
        return [*super().contexts(), *others]


@dataclass
class Rig:
    agent: Agent
    config: Path
    tmp: Path
    scp: FaultSCP | None = None

    def app(self, fixed_clock: bool = False) -> AgentApp:
        return AgentApp(config.load(self.config), now=(lambda: FIXED_NOW) if fixed_clock else None)

    def request(
        self, op: str, args: dict[str, Any] | None = None, timeout: float = 120
    ) -> dict[str, Any]:
        with ControlClient(self.config.parent / "control.sock", timeout=timeout) as client:
            return client.request(op, dict(args or {}), timeout=timeout)


def rig(
    tmp_path: Path,
    stack: ExitStack,
    items: Sequence[wl.Item] = ITEMS,
    fault: FaultSCP | None = None,
    extra: str = "",
    research: bool = False,
) -> Rig:
    """The daemon (mock scanner) with a worklist and one archive, `PACS` (storescp, or `fault`
    when given); with `research`, a second non-default destination `RESEARCH`."""
    ris = stack.enter_context(wl.wlmscpfs(tmp_path / "wl", items))
    if fault is not None:
        stack.enter_context(fault)
        port = fault.port
    else:
        port = stack.enter_context(storescp(tmp_path / "archive"))
    dests = [Dest("PACS", port)]
    if research:
        dests.append(
            Dest("RESEARCH", stack.enter_context(storescp(tmp_path / "research")), default=False)
        )
    worklist = (
        f'\n[worklist]\nae_title = "RIS"\nhost = "127.0.0.1"\nport = {ris}\n'
        "connect_timeout = 2\nacse_timeout = 5\ndimse_timeout = 5\nquery_timeout = 20\n"
        f"refresh_interval = 3600\n{extra}"
    )
    cfg = write_config(tmp_path, dests, worklist)
    agent = Agent(cfg, tmp_path / "daemon.log")
    agent.start()
    stack.callback(agent.stop)
    return Rig(agent, cfg, tmp_path, fault)


# -- reading and driving the screen -----------------------------------------------------------


def screen_text(app: App[Any]) -> str:
    """The screen as plain text, as a terminal would show it (what the snapshots keep)."""
    width, height = app.size
    console = Console(
        width=width,
        height=height,
        file=io.StringIO(),
        force_terminal=True,
        color_system=None,
        record=True,
        legacy_windows=False,
        safe_box=False,
    )
    console.print(
        app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    )
    return "\n".join(line.rstrip() for line in console.export_text().splitlines())


async def until(
    pilot: Pilot[Any], check: Callable[[], bool], what: str, timeout: float = 30
) -> None:
    """Wait (polling the app between its own updates) until `check()` is true."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{screen_text(pilot.app)}")
        await pilot.pause(0.05)


async def until_shown(pilot: Pilot[Any], text: str, timeout: float = 30) -> None:
    await until(pilot, lambda: text in screen_text(pilot.app), repr(text), timeout)


async def type_text(pilot: Pilot[Any], text: str) -> None:
    await pilot.press(*["space" if c == " " else c for c in text])


async def sign_in(pilot: Pilot[Any], name: str = "RT SMITH") -> None:
    await until_shown(pilot, "Enter: sign in")
    await type_text(pilot, name)
    await pilot.press("enter")
    await until_shown(pilot, name)


MASKS = [
    (re.compile(r"\b\d{2}:\d{2}\b"), "hh:mm"),
    (re.compile(r"\b\d{4}-\d{2}-\d{2}\b"), "yyyy-mm-dd"),
    (re.compile(r"\b\d+(\.\d+){3,}\b"), "<uid>"),
    (re.compile(r"EMERG-[0-9A-Za-z-]+"), "EMERG-<id>"),
    (re.compile(r"\b\d+(\.\d+)? s\b"), "n s"),
    (re.compile(r"\b\d+ min ago\b"), "n min ago"),
]


def masked(text: str) -> str:
    """Clocks, dates, UIDs, generated IDs and durations masked: what changes run to run."""
    for pattern, mask in MASKS:
        text = pattern.sub(mask, text)
    return text
