"""The demo end to end, and the bundled archive fed by DCMTK's storescu."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom

from agent.dicom import files
from tests import factory
from tests.peers import VALIDATE_DICOM, free_port, require, wait_port

AGENT = [sys.executable, "-m", "agent"]


def test_demo_json_delivers_every_image_and_they_are_valid(tmp_path: Path) -> None:
    r = subprocess.run(
        [*AGENT, "demo", "--json", "--slices", "13", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert {
        "archive_dir",
        "study_instance_uid",
        "images_sent",
        "transfer_syntax",
        "seconds",
    } <= set(summary)
    assert summary["images_sent"] == 13
    assert summary["images_per_series"] == [7, 6]
    received = [pydicom.dcmread(f) for f in Path(summary["archive_dir"]).rglob("*.dcm")]
    assert len(received) == 13  # no dose report: the mock irradiates nobody
    assert {str(ds.StudyInstanceUID) for ds in received} == {summary["study_instance_uid"]}
    sent_in = Counter(str(ds.file_meta.TransferSyntaxUID) for ds in received)
    assert sent_in == summary["transfer_syntaxes"]  # as the archive has them, counted
    assert summary["transfer_syntax"] == sent_in.most_common(1)[0][0]
    assert all("SIMULATED" in ds.ImageComments for ds in received)
    require("dciodvfy")
    v = subprocess.run(
        [str(VALIDATE_DICOM), summary["archive_dir"]], capture_output=True, text=True
    )
    assert v.returncode == 0, v.stdout


def test_demo_rejects_a_bad_slice_count() -> None:
    r = subprocess.run([*AGENT, "demo", "--slices", "0"], capture_output=True, text=True)
    assert r.returncode == 2 and "--slices" in r.stderr


def test_bundled_archive_stores_what_storescu_sends(tmp_path: Path) -> None:
    (storescu,) = require("storescu")
    (ds,) = factory.ct_images(1)
    f = tmp_path / "ct.dcm"
    f.write_bytes(files.encode(ds))
    port = free_port()
    archive = tmp_path / "archive"
    proc = subprocess.Popen(
        [*AGENT, "archive", "--port", str(port), "--dir", str(archive), "--ae", "TESTARCH"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_port(port)
        env = {**os.environ, "TCP_NODELAY": "1"}
        wrong = subprocess.run(
            [storescu, "-aec", "NOT_US", "127.0.0.1", str(port), str(f)],
            env=env,
            capture_output=True,
        )
        assert wrong.returncode != 0  # the called AE title must be ours
        subprocess.run(
            [storescu, "-aec", "TESTARCH", "127.0.0.1", str(port), str(f)], env=env, check=True
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    stored = archive / str(ds.StudyInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
    back = pydicom.dcmread(stored)
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    assert np.array_equal(back.pixel_array, ds.pixel_array)
    assert "after 1 instances" in out
    assert not [p for p in archive.rglob("*") if p.name.endswith(".tmp")]
