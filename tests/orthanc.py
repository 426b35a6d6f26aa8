"""Orthanc (Debian package `orthanc`) as a real peer for the tests: started from a JSON config
of its own, on free loopback ports, HTTP off, in a folder of the test's; skipped (with the
reason) where it is not installed."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.peers import free_port, wait_port

PLUGINS = Path("/usr/share/orthanc/plugins")


def binary() -> str:
    found = shutil.which("Orthanc") or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None
    )
    if found is None:
        pytest.skip("Orthanc not installed (Debian package orthanc)")
    return found


def plugin(name: str) -> Path:
    path = PLUGINS / f"lib{name}.so"
    if not path.exists():
        pytest.skip(f"Orthanc's {name} plugin not found in {PLUGINS}")
    return path


@contextmanager
def orthanc(folder: Path, **settings: Any) -> Iterator[int]:
    """Orthanc as ORTHANC on a free port (yielded), `settings` added to its config (e.g.
    DicomModalities, Plugins)."""
    exe = binary()
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "Name": "modality-agent tests",
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "DicomAet": "ORTHANC",
        "DicomPort": port,
        "DicomCheckCalledAet": True,
        "DicomAssociationCloseDelay": 0,
        "DicomScuTimeout": 10,
        "HttpServerEnabled": False,
        "HttpPort": free_port(),
        "RemoteAccessAllowed": False,
        "SaveJobs": False,
        "Plugins": [],
        **settings,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    with open(folder / "orthanc.log", "wb") as log:
        proc = subprocess.Popen(
            [exe, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            wait_port(port, proc, timeout=60)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
