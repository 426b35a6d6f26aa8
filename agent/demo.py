"""`modality-agent demo`: the whole pipeline on embedded defaults, no config, no root.

A bundled archive on a free loopback port, the real daemon on the mock scanner, one exam (two
series unless a single image is asked for), every image delivered; then a summary.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pydicom.uid import UID

from agent.config import AgentSettings, Config, Destination, Equipment, HardwareSettings
from agent.control.protocol import OpError
from agent.daemon import Daemon
from agent.events import Event, Subscription
from agent.net.archive import Archive

DEADLINE_S = 600.0
PREFERRED = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


def demo_config(work: Path, archive_port: int, socket_dir: Path) -> Config:
    return Config(
        source=Path("<demo defaults>"),
        agent=AgentSettings(
            ae_title="CT_DEMO",
            spool_dir=work / "spool",
            # a short path of its own: Unix socket paths are limited to 107 bytes
            control_socket=socket_dir / "control.sock",
        ),
        equipment=Equipment(
            manufacturer="modality-agent",
            model_name="Mock CT",
            device_serial_number="DEMO0001",
            station_name="DEMO_CT",
            institution_name="Demo Hospital",
            software_versions="modality-agent demo",
        ),
        hardware=HardwareSettings(driver="mock"),
        destinations=(
            Destination(
                ae_title="DEMO_ARCHIVE",
                host="127.0.0.1",
                port=archive_port,
                name="DEMO-ARCHIVE",
                transfer_syntaxes=PREFERRED,
                default=True,
                retry_initial_s=0.2,
                retry_max_s=2.0,
            ),
        ),
    )


def series_sizes(total: int) -> list[int]:
    """The exam's images split over two series (one when there is a single image)."""
    return [total] if total == 1 else [(total + 1) // 2, total // 2]


class _Progress:
    """Counts what the daemon reports, and shows it on stderr while the demo runs."""

    def __init__(self, events: Subscription, total: int) -> None:
        self.total = total
        self.acquired = 0
        self.sent: set[str] = set()
        self.syntaxes: Counter[str] = Counter()
        self._events = events
        self._tty = sys.stderr.isatty()
        self._last = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            event = self._events.get(timeout=0.1)
            if event is not None:
                self._count(event)

    def _count(self, event: Event) -> None:
        if event.event == "slice.accepted":
            self.acquired += 1
        elif event.event == "delivery.progress" and event.data["outcome"] == "ok":
            self.sent.add(event.data["sop_instance_uid"])
            self.syntaxes[event.data["transfer_syntax"]] += 1
        self._show()

    def _show(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < (0.2 if self._tty else 2.0):
            return
        self._last = now
        line = (
            f"demo: acquired {self.acquired}/{self.total}, delivered {len(self.sent)}/{self.total}"
        )
        print(("\r" + line) if self._tty else line, end="" if self._tty else "\n", file=sys.stderr)
        sys.stderr.flush()

    def finish(self) -> None:
        self._stop.set()
        self._thread.join()
        while (event := self._events.get(timeout=0)) is not None:  # what is still queued
            self._count(event)
        self._events.close()
        self._show(force=True)
        if self._tty:
            print(file=sys.stderr)


def run_demo(slices: int, workdir: Path | None, as_json: bool) -> int:
    started = time.monotonic()
    work = (workdir or Path(tempfile.mkdtemp(prefix="modality-agent-demo-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    archive = Archive(work / "archive", port=0, ae_title="DEMO_ARCHIVE").start()
    socket_dir = Path(tempfile.mkdtemp(prefix="ma-demo-"))
    cfg = demo_config(work, archive.port, socket_dir)
    daemon = Daemon(cfg)
    error = None
    try:
        daemon.start()
    except Exception as e:
        archive.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)
        print(f"demo: the agent could not start: {e}", file=sys.stderr)
        return 1
    try:
        progress = _Progress(daemon.bus.subscribe(["slice", "delivery"]), slices)
        try:
            study = _one_exam(daemon, slices)
        except OpError as e:
            error, study = e.message, None
        finally:
            progress.finish()
        delivered = _delivered(daemon, study)
    finally:
        daemon.stop()
        archive.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)
    seconds = time.monotonic() - started
    ts = progress.syntaxes.most_common(1)[0][0] if progress.syntaxes else None
    summary: dict[str, Any] = {
        "archive_dir": str(archive.directory),
        "study_instance_uid": study,
        "images_sent": delivered,
        "images_per_series": series_sizes(slices),
        "transfer_syntax": ts,  # the one most images went in
        "transfer_syntax_name": UID(ts).name if ts else None,
        # every syntax used, with its count: with adaptive compression a fast link mixes them
        "transfer_syntaxes": dict(progress.syntaxes.most_common()),
        "seconds": round(seconds, 3),
        "images_per_second": round(delivered / seconds, 1) if seconds else None,
        "spool_dir": str(cfg.agent.spool_dir),
        "ok": error is None and delivered == slices,
        "error": error,
    }
    _print_summary(summary, as_json)
    return 0 if summary["ok"] else 1


def _one_exam(daemon: Daemon, total: int) -> str:
    """Start an exam, acquire its series, end it, wait for delivery; its Study UID."""
    ops = daemon.ops
    exam = ops.exam_start(
        {
            "patient_id": "DEMO-0001",
            "patient_name": "DEMO^PATIENT",
            "sex": "O",
            "accession": "DEMO0001",
            "operator": "DEMO^OPERATOR",
        }
    )["exam"]
    for n in series_sizes(total):
        ops.simulate({"series": 1, "slices": n, "timeout": DEADLINE_S})
    ops.exam_end({})
    ops.wait({"timeout": DEADLINE_S})
    return str(exam["study_instance_uid"])


def _delivered(daemon: Daemon, study: str | None) -> int:
    """Images the archive acknowledged, as the daemon's queue counts them."""
    for s in daemon.ops.queue({})["studies"]:
        if s["study_instance_uid"] == study:
            return sum(int(d["sent"]) for d in s["destinations"])
    return 0


def _syntaxes(counts: dict[str, int]) -> str:
    return ", ".join(f"{UID(ts).name} ({ts}): {n}" for ts, n in counts.items()) or "none"


def _print_summary(s: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(s, indent=2))
        return
    status = "delivered" if s["ok"] else f"FAILED: {s['error']}"
    print(
        f"""
Demo exam {status}.
  Study Instance UID  {s["study_instance_uid"]}
  images per series   {s["images_per_series"]}
  images sent         {s["images_sent"]}
  transfer syntax     {_syntaxes(s["transfer_syntaxes"])}
  time                {s["seconds"]} s ({s["images_per_second"]} images/s)
  archive wrote to    {s["archive_dir"]}
  spool               {s["spool_dir"]}
Images are from the mock scanner and marked SIMULATED."""
    )
