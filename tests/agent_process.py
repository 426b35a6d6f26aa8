"""The real daemon as a child process, driven through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

AGENT = [sys.executable, "-m", "agent"]


@dataclass
class Dest:
    name: str
    port: int
    syntaxes: Sequence[str] = ("JPEGLSLossless", "ExplicitVRLittleEndian")
    send_while_scanning: bool = True
    default: bool = True
    ae_title: str = "ARCHIVE"


def write_config(work: Path, dests: Sequence[Dest], extra: str = "") -> Path:
    blocks = []
    for d in dests:
        syntaxes = ", ".join(f'"{s}"' for s in d.syntaxes)
        blocks.append(
            f"""
[[destinations]]
name = "{d.name}"
ae_title = "{d.ae_title}"
host = "127.0.0.1"
port = {d.port}
transfer_syntaxes = [{syntaxes}]
send_while_scanning = {str(d.send_while_scanning).lower()}
default = {str(d.default).lower()}
connect_timeout = 2
acse_timeout = 5
dimse_timeout = 5
retry_initial = 0.5
retry_max = 2
"""
        )
    cfg = work / "agent.toml"
    cfg.write_text(
        f"""[agent]
ae_title = "CT_TEST"
spool_dir = "{work / "spool"}"
control_socket = "{work / "control.sock"}"

[equipment]
manufacturer = "Example Medical"
model_name = "CT-1"
device_serial_number = "SN0001"
station_name = "CT1"
institution_name = "General Hospital"
software_versions = "1.0"

[hardware]
driver = "mock"
{extra}
"""
        + "".join(blocks)
    )
    return cfg


@dataclass
class Agent:
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)
    verbose: bool = False  # log at INFO (the daemon's default is WARNING)

    def start(self, timeout: float = 30) -> None:
        """Start the daemon and return once it told systemd's notify protocol READY=1."""
        self.starts += 1
        address = self.log.parent / f"notify-{self.starts}.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(address))
            notify.settimeout(timeout)
            log = open(self.log, "ab")  # noqa: SIM115 - owned by the child
            env = {**os.environ, "NOTIFY_SOCKET": str(address)}
            self.proc = subprocess.Popen(
                [*AGENT, "run", "-c", str(self.config), *(["-v"] if self.verbose else [])],
                stdout=log,
                stderr=log,
                env=env,
            )
            log.close()
            try:
                while b"READY=1" not in notify.recv(4096):
                    pass
            except TimeoutError:
                self.proc.kill()
                raise TimeoutError(
                    f"no READY=1 in {timeout} s: {self.log.read_text()[-2000:]}"
                ) from None

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*AGENT, *args, "-c", str(self.config)], capture_output=True, text=True, timeout=timeout
        )

    def json(self, *args: str) -> Any:
        r = self.cli(*args, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@dataclass
class Simulator:
    """`modality-agent simulator`: the serial-shm reconstructor of `config`, as a child."""

    config: Path
    log: Path
    proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30) -> None:
        """Start it and return once it said it is ready (its first line)."""
        log = open(self.log, "a")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [*AGENT, "simulator", "-c", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        log.close()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until ready, or "" when it died
        if not line.startswith("simulator ready"):
            self.proc.wait(timeout)
            raise RuntimeError(f"simulator did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code
