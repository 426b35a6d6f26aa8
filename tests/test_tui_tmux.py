"""The same flow once through a real terminal: tmux runs `modality-agent tui` (NO_COLOR set, at
80×24), keys go in with send-keys and the screen comes out with capture-pane. A second TUI at
160×48 watches the same exam at the same time; quitting both leaves the daemon running."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from tests.peers import require
from tests.test_tui_rig import rig

ROOT = Path(__file__).resolve().parents[1]


class Tmux:
    """One private tmux server (its own socket under the test's folder)."""

    def __init__(self, binary: str, socket: Path) -> None:
        self.base = [binary, "-u", "-S", str(socket)]

    def __call__(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            [*self.base, *args], capture_output=True, text=True, check=check, timeout=30
        )
        return done.stdout

    def start(self, name: str, size: tuple[int, int], command: list[str]) -> None:
        env = ["env", "NO_COLOR=1", "LANG=C.UTF-8", "LC_ALL=C.UTF-8", "TERM=xterm-256color"]
        self(
            "new-session", "-d", "-s", name, "-x", str(size[0]), "-y", str(size[1]),
            "-c", str(ROOT), *env, *command,
        )  # fmt: skip

    def screen(self, name: str) -> str:
        return self("capture-pane", "-p", "-t", name, check=False)

    def keys(self, name: str, *keys: str) -> None:
        self("send-keys", "-t", name, *keys)

    def text(self, name: str, text: str) -> None:
        self("send-keys", "-t", name, "-l", text)

    def alive(self, name: str) -> bool:
        return (
            subprocess.run([*self.base, "has-session", "-t", name], capture_output=True).returncode
            == 0
        )

    def wait(self, name: str, check: Callable[[str], bool], what: str, timeout: float = 30) -> str:
        """Poll the pane until `check(screen)`, or fail with what it shows."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen(name)
            if check(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: no {what} after {timeout} s:\n{screen}")
            time.sleep(0.1)

    def shows(self, name: str, text: str, timeout: float = 30) -> str:
        return self.wait(name, lambda s: text in s, repr(text), timeout)


def test_flow_in_a_real_terminal(tmp_path: Path, stack: ExitStack) -> None:
    (binary,) = require("tmux")
    r = rig(tmp_path, stack)
    tmux = Tmux(binary, tmp_path / "tmux.sock")
    stack.callback(lambda: tmux("kill-server", check=False))
    tui = [sys.executable, "-m", "agent", "tui", "-c", str(r.config)]

    tmux.start("one", (80, 24), tui)
    tmux.shows("one", "Enter: sign in")
    tmux.text("one", "RT SMITH")
    tmux.keys("one", "Enter")
    tmux.shows("one", "Müller^Jürgen")
    screen = tmux.shows("one", "3 items")
    assert "SIMULATED HARDWARE" in screen and "connected" in screen
    tmux.keys("one", "Enter")
    tmux.shows("one", "! Allergies   IODINE CONTRAST")
    tmux.shows("one", "[x] PACS             ok")
    tmux.keys("one", "Enter")
    tmux.shows("one", "A1001 · started")

    tmux.start("two", (160, 48), tui)  # another technologist's view of the same console
    tmux.shows("two", "Enter: sign in")
    tmux.text("two", "RT JONES")
    tmux.keys("two", "Enter")
    tmux.shows("two", "RT JONES")
    tmux.keys("two", "2")
    tmux.shows("two", "A1001 · started")

    done = r.agent.cli("simulate", "--series", "1", "--slices", "6")
    assert done.returncode == 0, done.stderr
    for name in ("one", "two"):
        tmux.wait(name, lambda s: "CHEST 5.0 STANDARD" in s and " ended" in s, "series ended")
    tmux.keys("one", "x")
    tmux.shows("one", "as completed?")
    tmux.keys("one", "y")
    tmux.shows("one", "COMPLETED")
    tmux.shows("two", "COMPLETED")  # seen live by the other one too
    tmux.keys("one", "3")
    tmux.shows("one", "delivered")

    for name in ("one", "two"):
        tmux.keys(name, "q")
    deadline = time.monotonic() + 15
    while tmux.alive("one") or tmux.alive("two"):  # a session ends when its TUI exits
        assert time.monotonic() < deadline, "a TUI did not quit on q"
        time.sleep(0.1)
    assert r.agent.proc is not None and r.agent.proc.poll() is None  # the daemon goes on
    status = r.agent.cli("queue")
    assert status.returncode == 0 and "delivered" in status.stdout
