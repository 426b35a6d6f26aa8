"""Smoke test of bench/ingest_serial_shm.py: tiny numbers, the JSON's shape only (tests never
assert on timings)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ingest_bench_runs_and_prints_its_json(tmp_path: Path) -> None:
    args = ["--slices", "6,12", "--rows", "32", "--slot-count", "4", "--baseline-files", "4"]
    args += ["--workdir", str(tmp_path), "--timeout", "60"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.ingest_serial_shm", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["bench"] == "ingest_serial_shm"
    assert report["config"]["rows"] == report["config"]["columns"] == 32
    assert [r["slices"] for r in report["runs"]] == [6, 12]
    for run in report["runs"]:
        assert run["seconds"] > 0
        for key in ("slices_per_s", "pixel_mb_per_s", "stored_mb_per_s"):
            assert isinstance(run[key], float) and run[key] >= 0  # rounded: tiny runs give 0.0
        assert run["memory_mb"]["peak_rss"] > 0
        assert run["device"]["idle"] is True
        assert run["device"]["releases"] == run["slices"]  # every slot released after durable
    assert set(report["memory"]["peak_rss_mb"]) == {"6", "12"}
    assert isinstance(report["target"]["met"], bool)
    baseline = report["baseline"]
    assert baseline["raw_fsync"]["files"] == baseline["raw_fsync_2_threads"]["files"] == 4
    dcmtk = baseline["dcmtk_storescp"]
    assert "skipped" in dcmtk or dcmtk["files"] == 4
