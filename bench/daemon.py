"""The daemon as it runs on a console (`modality-agent run`, mock driver), an archive on
loopback (DCMTK `storescp --ignore`), and what the issue asks of it:

    .venv/bin/python -m bench.daemon [--runs 3] [--ingest 1000] [--latency 300] [--rss 1000,3000]

- ingest over `mock`: slices/s from the series' start (`series.started`) to its last slice
  accepted (`slice.accepted`: durable in the spool), nothing sent meanwhile;
- latency: a series produced at 50 slices/s, send-while-scanning on, from the last slice
  accepted to the archive's last acknowledgement (`delivery.progress`, outcome ok);
- memory: the daemon's peak RSS (VmHWM) over an exam of N slices, sent while scanning, read
  once everything is delivered. The transcoding pool's workers are processes of their own and
  not counted (uncompressed here, they do not run).

Times are the daemon's own event timestamps (milliseconds), read from its control socket.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from agent.control.client import ControlClient
from agent.events import Event
from bench import common
from tests.agent_process import Agent, Dest, write_config


class Recorder:
    """Every slice/series/delivery event of the daemon, as they come."""

    def __init__(self, socket: Path) -> None:
        self.events: list[Event] = []
        self._client = ControlClient(socket, timeout=None)
        self._client.connect()
        self._stream = self._client.events(["series", "slice", "delivery"])
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                self.events.append(event)
        except Exception:  # the daemon went away: the run is over
            return

    def close(self) -> None:
        self._client.close()
        self._thread.join(10)

    def times(self, name: str, **match: Any) -> list[float]:
        return [
            datetime.fromisoformat(e.time).timestamp()
            for e in self.events
            if e.event == name and all(e.data.get(k) == v for k, v in match.items())
        ]


def _exam(work: Path, slices: int, rate: float | None, sending: bool) -> dict[str, Any]:
    """One daemon, one exam of `slices`; returns its event times and peak RSS."""
    work.mkdir(parents=True)
    port = common.free_port()
    with common.storescp(port):
        dest = Dest("PACS", port, ("ExplicitVRLittleEndian",), send_while_scanning=sending)
        agent = Agent(write_config(work, [dest]), work / "agent.log")
        agent.start()
        try:
            started = agent.cli("exam", "start", "--patient-id", "B1", "--patient-name", "BENCH")
            if started.returncode != 0:
                raise RuntimeError(f"exam start: {started.stderr}")
            recorder = Recorder(work / "control.sock")
            pace = ["--rate", str(rate)] if rate else []
            sim = agent.cli("simulate", "--slices", str(slices), *pace, timeout=900)
            if sim.returncode != 0:
                raise RuntimeError(f"simulate: {sim.stderr}")
            if sending:
                waited = agent.cli("wait", "--timeout", "600")
                if waited.returncode != 0:
                    raise RuntimeError(f"wait: {waited.stderr}")
            assert agent.proc is not None
            status = Path(f"/proc/{agent.proc.pid}/status").read_text()
            peak_kb = int(status.split("VmHWM:")[1].split()[0])
            recorder.close()
        finally:
            agent.stop()
    accepted = recorder.times("slice.accepted")
    acks = recorder.times("delivery.progress", outcome="ok")
    if len(accepted) != slices or (sending and len(acks) < slices):
        raise RuntimeError(f"{len(accepted)} accepted, {len(acks)} acknowledged of {slices}")
    return {
        "series_started": min(recorder.times("series.started")),
        "last_accepted": max(accepted),
        "last_ack": max(acks) if acks else None,
        "peak_rss_mb": peak_kb / 1024,
    }


def measure(runs: int, ingest: int, latency: int, rss: list[int], work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"bench": "daemon", "driver": "mock", "archive": "storescp --ignore"}
    rates, latencies = [], []
    peaks: dict[int, list[float]] = {n: [] for n in rss}
    for k in range(runs):
        r = _exam(work / f"ingest{k}", ingest, None, sending=False)
        rates.append(ingest / (r["last_accepted"] - r["series_started"]))
        r = _exam(work / f"latency{k}", latency, 50.0, sending=True)
        latencies.append(r["last_ack"] - r["last_accepted"])
        for n in rss:
            peaks[n].append(_exam(work / f"rss{n}-{k}", n, None, sending=True)["peak_rss_mb"])
    out["ingest_mock"] = {
        "slices": ingest,
        "window": "series.started -> last slice.accepted (durable), nothing sent meanwhile",
        "slices_per_s": common.figure(rates),
    }
    out["latency"] = {
        "slices": latency,
        "rate_per_s": 50,
        "send_while_scanning": True,
        "window": "last slice.accepted -> last delivery.progress ok (archive's C-STORE RSP)",
        "seconds": common.figure(latencies, 3),
    }
    out["rss"] = {
        "what": "daemon VmHWM after the exam is delivered (send while scanning, as fast as "
        "the mock goes)",
        "peak_mb": {str(n): common.figure(v) for n, v in peaks.items()},
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.daemon", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--ingest", type=int, default=1000, help="slices of the mock ingest runs")
    p.add_argument("--latency", type=int, default=300, help="slices of the latency series")
    p.add_argument("--rss", default="1000,3000", help="exam sizes for peak RSS")
    p.add_argument("--workdir", type=Path, help="default: a temporary folder in /var/tmp")
    args = p.parse_args(argv)
    sizes = [int(n) for n in args.rss.split(",") if n]
    with tempfile.TemporaryDirectory(dir=args.workdir or "/var/tmp") as work:
        report = measure(args.runs, args.ingest, args.latency, sizes, Path(work))
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
