"""Real DICOM peers for the tests: DCMTK's storescp on a free loopback port."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pydicom
import pytest

# DCMTK's names for the syntaxes in storescp's profile files (/etc/dcmtk/storescp.cfg).
DCMTK_SYNTAX = {
    "1.2.840.10008.1.2": "LittleEndianImplicit",
    "1.2.840.10008.1.2.1": "LocalEndianExplicit",
    "1.2.840.10008.1.2.1.99": "DeflatedLittleEndianExplicit",
    "1.2.840.10008.1.2.4.70": "JPEGLossless:Non-hierarchical-1stOrderPrediction",
    "1.2.840.10008.1.2.4.80": "JPEGLSLossless",
    "1.2.840.10008.1.2.4.90": "JPEG2000LosslessOnly",
    "1.2.840.10008.1.2.5": "RLELossless",
}
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
XRAY_DOSE_SR = "1.2.840.10008.5.1.4.1.1.88.67"
# shared/ lies beside the project (in CI: beside the clone)
VALIDATE_DICOM = Path(__file__).resolve().parents[2] / "shared" / "tools" / "validate-dicom"


def tool(name: str) -> str | None:
    """A system tool by name, never pynetdicom's namesakes in our virtual environment (it
    installs its own `storescp`, `storescu`, `findscu`, ... which take other options)."""
    venv_bin = os.path.dirname(sys.executable)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return shutil.which(name, path=path)


def require(*tools: str) -> list[str]:
    """The full paths of `tools`; the test is skipped, naming them, when one is missing."""
    found = [tool(t) for t in tools]
    missing = [t for t, f in zip(tools, found, strict=True) if f is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (scripts/install-peers installs them)")
    return [f for f in found if f is not None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 15) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"peer exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def storescp_profile(
    directory: Path, syntaxes: Sequence[str], sop_class: str = "CTImageStorage"
) -> Path:
    """A storescp -xf profile accepting only `sop_class` in only `syntaxes`."""
    names = "\n".join(f"TransferSyntax{i} = {DCMTK_SYNTAX[ts]}" for i, ts in enumerate(syntaxes, 1))
    text = (
        "[[TransferSyntaxes]]\n[Only]\n" + names + "\n"
        "[Uncompressed]\nTransferSyntax1 = LittleEndianImplicit\n"
        "[[PresentationContexts]]\n[OnlyThese]\n"
        "PresentationContext1 = VerificationSOPClass\\Uncompressed\n"
        f"PresentationContext2 = {sop_class}\\Only\n"
        "[[Profiles]]\n[Test]\nPresentationContexts = OnlyThese\n"
    )
    f = directory / "storescp.cfg"
    f.write_text(text)
    return f


@contextlib.contextmanager
def storescp(
    out: Path,
    syntaxes: Sequence[str] | None = None,
    extra: Sequence[str] = (),
    ae_title: str = "ARCHIVE",
    port: int | None = None,
    sop_class: str = "CTImageStorage",
) -> Iterator[int]:
    """Run DCMTK storescp writing to `out`; yields its port. `syntaxes` restricts CT storage."""
    (binary,) = require("storescp")
    out.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    args = [binary, "-aet", ae_title, "-od", str(out), *extra]
    if syntaxes is not None:
        args += ["-xf", str(storescp_profile(out.parent, syntaxes, sop_class)), "Test"]
    else:
        args += ["+xa"]
    log = open(out.parent / f"storescp-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [*args, str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    try:
        wait_port(port, proc)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def archived(directory: Path, *, reports: bool = False) -> list[pydicom.Dataset]:
    """The images a storescp wrote under `directory`, headers only; with `reports`, also the
    exam's CT Radiation Dose SR (agent/dose), which every irradiating exam now sends."""
    found = [
        pydicom.dcmread(f, stop_before_pixels=True) for f in directory.rglob("*") if f.is_file()
    ]
    return [ds for ds in found if reports or ds.SOPClassUID != XRAY_DOSE_SR]
