"""Smoke test of `make bench` (bench/run.py) with tiny numbers: every benchmark runs and the
JSON has the issue's keys as numbers. Tests never assert on timings or targets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.peers import require

ROOT = Path(__file__).resolve().parents[1]
KEYS = (
    "ingest_slices_per_s",
    "ingest_3000_slices_per_s",
    "loopback_images_per_s",
    "loopback_dcmtk_images_per_s",
    "loopback_ratio_vs_dcmtk",
    "link_100mbit_ratio_vs_dcmtk",
    "link_1gbit_ratio_vs_dcmtk",
    "latency_last_slice_to_ack_s",
    "rss_mb_1000",
    "rss_mb_3000",
)


def test_make_bench_runs_small_and_writes_its_json(tmp_path: Path) -> None:
    require("storescp", "storescu")
    out = tmp_path / "latest.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--small", "--runs", "1", "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert json.loads(done.stdout) == report
    assert report["small"] is True
    assert report["machine"]["cores"] and report["machine"]["load_controlled"] is False
    for key in KEYS:
        value = report[key]
        if key.startswith("link_") and value is None:  # no root or no netns here: said why
            assert "skipped" in report["send"]["links"]
            continue
        assert isinstance(value, int | float) and value > 0, key
    for verdict in report["targets"].values():
        assert verdict["met"] in (True, False, None)
        assert verdict["met"] is not False or "missed_by" in verdict
    loopback = report["send"]["loopback"]
    assert loopback["agent_images_per_s"]["runs"] and loopback["dcmtk_images_per_s"]["runs"]
