"""`modality-agent demo`: the whole pipeline on embedded defaults, no config, no root.

A bundled archive on a free loopback port, the mock scanner, one exam (two series unless a
single image is asked for), every image delivered; then a summary.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from pydicom.uid import UID

from agent.acquisition import Acquisition
from agent.config import AgentSettings, Config, Destination, Equipment, HardwareSettings
from agent.delivery import DestinationSender
from agent.dicom.assembler import Assembler
from agent.dicom.uids import UidFactory
from agent.exam import Patient, Procedure, open_exam
from agent.net.archive import Archive
from agent.net.outcome import Outcome
from agent.net.retry import Backoff
from agent.net.sender import SendResult
from agent.spool import Spool
from hardware.base import ScanRequest
from hardware.mock import MockDriver

DEADLINE_S = 600.0
PREFERRED = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


def demo_config(work: Path, archive_port: int) -> Config:
    return Config(
        source=Path("<demo defaults>"),
        agent=AgentSettings(
            ae_title="CT_DEMO", spool_dir=work / "spool", control_socket=work / "control.sock"
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
            ),
        ),
    )


def series_sizes(total: int) -> list[int]:
    """The exam's images split over two series (one when there is a single image)."""
    return [total] if total == 1 else [(total + 1) // 2, total // 2]


class _Progress:
    def __init__(self, total: int) -> None:
        self.total = total
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def show(self, acquired: int, delivered: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < (0.2 if self.tty else 2.0):
            return
        self._last = now
        line = f"demo: acquired {acquired}/{self.total}, delivered {delivered}/{self.total}"
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr)
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty:
            print(file=sys.stderr)


def run_demo(slices: int, workdir: Path | None, as_json: bool) -> int:
    started = time.monotonic()
    work = (workdir or Path(tempfile.mkdtemp(prefix="modality-agent-demo-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    archive = Archive(work / "archive", port=0, ae_title="DEMO_ARCHIVE").start()
    driver = MockDriver()
    deliveries: list[SendResult] = []
    try:
        cfg = demo_config(work, archive.port)
        dest = cfg.destinations[0]
        uids = UidFactory(None)
        exam = open_exam(
            Patient(name="DEMO^PATIENT", id="DEMO-0001", sex="O"),
            Procedure(
                accession_number="DEMO0001",
                requested_procedure_description="CT CHEST ABDOMEN (SIMULATED)",
            ),
            uids,
            operator="DEMO^OPERATOR",
            destinations=(dest.name,),
        )
        with Spool(cfg.agent.spool_dir) as spool:
            sender = DestinationSender(
                cfg.agent.ae_title, dest, spool, Backoff(0.2, 2.0), deliveries.append
            )
            acquisition = Acquisition(
                driver,
                Assembler(cfg.equipment, uids),
                spool,
                lambda token: exam if token == exam.token else None,
                on_accepted=lambda *_: sender.wake(),
            )
            driver.open()
            driver.set_exam_token(exam.token)
            stop = threading.Event()
            sending = threading.Thread(target=sender.run, args=(stop, 0.2), name="sender")
            sending.start()
            try:
                ok, why = _acquire_and_deliver(driver, acquisition, archive, exam.token, slices)
            finally:
                stop.set()
                sender.wake()
                sending.join()
    finally:
        driver.close()
        archive.stop()
    seconds = time.monotonic() - started
    sent = [d for d in deliveries if d.verdict.outcome is Outcome.OK]
    syntaxes = Counter(d.transfer_syntax_uid for d in sent)
    ts = syntaxes.most_common(1)[0][0] if syntaxes else None
    summary = {
        "archive_dir": str(archive.directory),
        "study_instance_uid": exam.study_instance_uid,
        "images_sent": len({d.sop_instance_uid for d in sent}),
        "images_per_series": series_sizes(slices),
        "transfer_syntax": ts,
        "transfer_syntax_name": UID(ts).name if ts else None,
        "seconds": round(seconds, 3),
        "images_per_second": round(len(sent) / seconds, 1) if seconds else None,
        "spool_dir": str(cfg.agent.spool_dir),
        "ok": ok,
        "error": why,
    }
    _print_summary(summary, as_json)
    return 0 if ok and summary["images_sent"] == slices else 1


def _acquire_and_deliver(
    driver: MockDriver, acquisition: Acquisition, archive: Archive, token: str, total: int
) -> tuple[bool, str | None]:
    sizes = series_sizes(total)
    for n in sizes:
        driver.request_scan(ScanRequest(token=token, series=1, slices_per_series=n))
    progress = _Progress(total)
    deadline = time.monotonic() + DEADLINE_S
    while acquisition.counts.series_ended < len(sizes):
        if time.monotonic() > deadline:
            return False, "timed out waiting for the mock scanner"
        acquisition.poll(0.2)
        if acquisition.counts.hardware_errors or acquisition.counts.bad_events:
            return False, f"acquisition failed: {acquisition.counts}"
        progress.show(acquisition.counts.slices_accepted, archive.received)
    while not archive.wait_for(total, 0.2):
        if time.monotonic() > deadline:
            return False, f"timed out: the archive has {archive.received} of {total} images"
        progress.show(total, archive.received)
    progress.show(total, archive.received, force=True)
    progress.done()
    return True, None


def _print_summary(s: dict[str, object], as_json: bool) -> None:
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
  transfer syntax     {s["transfer_syntax_name"]} ({s["transfer_syntax"]})
  time                {s["seconds"]} s ({s["images_per_second"]} images/s)
  archive wrote to    {s["archive_dir"]}
  spool               {s["spool_dir"]}
Images are from the mock scanner and marked SIMULATED."""
    )
