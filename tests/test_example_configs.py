"""The annotated example configs are valid as they are, and each names the driver its file
name says (a copy-paste slip between examples would otherwise go unnoticed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.config import load
from tests.agent_process import AGENT

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.toml"))


def test_there_is_an_example_per_driver() -> None:
    assert {p.stem for p in CONFIGS} >= {"mock", "directory", "serial-shm"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_is_valid(path: Path) -> None:
    r = subprocess.run([*AGENT, "check-config", "-c", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert load(path).hardware.driver == path.stem
