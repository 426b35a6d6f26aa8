"""`make bench`: every benchmark of issue 10, one JSON document (stdout and
bench/results/latest.json), each figure the median of several runs with its spread.

    .venv/bin/python -m bench.run [--runs 3] [--small] [--output PATH]

Benchmarks (each also runnable alone): bench.ingest_serial_shm (simulator -> durable spool over
serial-shm), bench.daemon (ingest over mock, latency, peak RSS), bench.send (loopback and
shaped links, agent vs DCMTK storescu, same files, same storescp, same run).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common, daemon, send

ROOT = Path(__file__).resolve().parents[1]
LATEST = ROOT / "bench" / "results" / "latest.json"

# (key, target, "min": at least / "max": at most)
TARGETS: list[tuple[str, float, str]] = [
    ("ingest_slices_per_s", 300.0, "min"),
    ("ingest_3000_slices_per_s", 300.0, "min"),
    ("ingest_rss_growth_1000_to_3000", 0.10, "max"),
    ("loopback_ratio_vs_dcmtk", 0.3, "min"),
    ("link_100mbit_ratio_vs_dcmtk", 2.5, "min"),
    ("link_1gbit_ratio_vs_dcmtk", 1.0, "min"),
    ("latency_last_slice_to_ack_s", 1.0, "max"),
    ("rss_growth_1000_to_3000", 0.10, "max"),
]


def ingest_serial_shm(lengths: tuple[int, int], runs: int, work: Path) -> dict[str, Any]:
    """bench/ingest_serial_shm.py as it is, `runs` series of each of `lengths` (alternating),
    its JSON read back."""
    series = ",".join(str(n) for _ in range(runs) for n in lengths)
    args = ["--slices", series, "--no-dcmtk", "--baseline-files", "10"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.ingest_serial_shm", *args, "--workdir", str(work)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.ingest_serial_shm failed: {done.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def verdicts(keys: dict[str, float | None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, target, kind in TARGETS:
        value = keys.get(key)
        if value is None:
            out[key] = {"target": target, "met": None, "why": "not measured here"}
            continue
        met = value >= target if kind == "min" else value <= target
        entry: dict[str, Any] = {"value": value, "target": target, "kind": kind, "met": met}
        if not met:
            short = (target - value) / target if kind == "min" else (value - target) / target
            entry["missed_by"] = f"{short:.0%} {'below' if kind == 'min' else 'above'} target"
        out[key] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--small", action="store_true", help="tiny numbers: checks the JSON only")
    p.add_argument("--output", type=Path, default=LATEST)
    args = p.parse_args(argv)
    # a kill runs the clean-ups (namespace, veth, storescp) as Ctrl-C would
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    small = args.small
    sizes = (
        ((16, 24), 12, 8, (8, 16), 20) if small else ((1000, 3000), 1000, 300, (1000, 3000), 1000)
    )
    ingest_n, mock_n, latency_n, rss_n, send_n = sizes
    started = time.time()
    machine = common.machine()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        work = Path(tmp)
        ingest = ingest_serial_shm(ingest_n, args.runs, work / "ingest")
        daemons = daemon.measure(args.runs, mock_n, latency_n, list(rss_n), work / "daemon")
        sends = send.measure(send_n, args.runs, ["100mbit", "1gbit"], work / "send")
    short, long = ingest_n

    def ingest_figure(n: int, what: str) -> dict[str, Any]:
        return common.figure([r[what] for r in ingest["runs"] if r["slices"] == n])

    def ingest_rss(n: int) -> dict[str, Any]:
        return common.figure(
            [r["memory_mb"]["peak_rss"] for r in ingest["runs"] if r["slices"] == n]
        )

    links = sends.get("links", {})

    def ratio(rate: str) -> float | None:
        return links[rate]["ratio_vs_dcmtk"]["median"] if rate in links else None

    rss = daemons["rss"]["peak_mb"]
    rss_small, rss_big = (rss[str(n)]["median"] for n in rss_n)
    keys: dict[str, float | None] = {
        "ingest_slices_per_s": ingest_figure(short, "slices_per_s")["median"],
        "ingest_3000_slices_per_s": ingest_figure(long, "slices_per_s")["median"],
        "ingest_rss_growth_1000_to_3000": round(
            ingest_rss(long)["median"] / ingest_rss(short)["median"] - 1, 3
        ),
        "ingest_mock_slices_per_s": daemons["ingest_mock"]["slices_per_s"]["median"],
        "loopback_images_per_s": sends["loopback"]["agent_images_per_s"]["median"],
        "loopback_dcmtk_images_per_s": sends["loopback"]["dcmtk_images_per_s"]["median"],
        "loopback_ratio_vs_dcmtk": sends["loopback"]["ratio_vs_dcmtk"]["median"],
        "link_100mbit_ratio_vs_dcmtk": ratio("100mbit"),
        "link_1gbit_ratio_vs_dcmtk": ratio("1gbit"),
        "latency_last_slice_to_ack_s": daemons["latency"]["seconds"]["median"],
        "rss_mb_1000": rss_small,
        "rss_mb_3000": rss_big,
        "rss_growth_1000_to_3000": round((rss_big - rss_small) / rss_small, 3),
    }
    report: dict[str, Any] = {
        "bench": "make bench",
        "small": small,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.time() - started, 1),
        "machine": {**machine, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "notes": [
            "Load was not controlled: other work shared the machine; compare ratios (agent and "
            "DCMTK alternate within one run) rather than absolute rates.",
            "ingest_slices_per_s, ingest_3000_slices_per_s: bench.ingest_serial_shm (serial-shm "
            "simulator -> durable spool), medians of its runs of 1,000 and of 3,000 slices "
            "(alternating); window: the simulator's first slice -> last slice durable; "
            "ingest_rss_growth_1000_to_3000 from the measured process's peak RSS.",
            "Send windows: agent, queue of accepted uncompressed instances released -> last "
            "C-STORE response, transcoding inside; DCMTK storescu, process start -> exit.",
            f"Links: {send.link.DESCRIPTION}; loopback for everything else.",
        ],
        **keys,
        "targets": verdicts(keys),
        "ingest_serial_shm": {
            "slices": list(ingest_n),
            "slices_per_s": {str(n): ingest_figure(n, "slices_per_s") for n in ingest_n},
            "steady_slices_per_s": {
                str(n): ingest_figure(n, "steady_slices_per_s") for n in ingest_n
            },
            "peak_rss_mb": {str(n): ingest_rss(n) for n in ingest_n},
            "runs": ingest["runs"],
        },
        "daemon": daemons,
        "send": sends,
    }
    text = json.dumps(report, indent=2)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
