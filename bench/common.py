"""What the send, latency and memory benchmarks share: the machine's description, figures over
several runs (median and spread), DCMTK's tools, a storescp to send to, and a corpus of real
CT instances (mock scanner -> assembler -> spool), made once and sent by every benchmark."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

PDU = 131072  # bytes, both sides, every benchmark
EXPLICIT = "1.2.840.10008.1.2.1"
JPEG_LS = "1.2.840.10008.1.2.4.80"
# short, so that a lost C-STORE response shows in a run as a retry, not a hang (pynetdicom 3.0
# lost one to its own reactor, issue #435, when the agent still sent through it)
DIMSE_TIMEOUT_S = 5


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1e6, 1) if "mem_kb" in locals() else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "load_controlled": False,  # a shared machine: other work may run at the same time
    }


def figure(values: Sequence[float], digits: int = 1) -> dict[str, Any]:
    """Median and spread of one figure measured `len(values)` times."""
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "runs": [round(v, digits) for v in values],
    }


def dcmtk(name: str) -> str:
    """DCMTK's tool, not pynetdicom's app of the same name in the venv's bin."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p != venv_bin
    )
    found = shutil.which(name, path=path)
    if found is None:
        raise SystemExit(f"bench: DCMTK's {name} is not installed (scripts/install-peers)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(host: str, port: int, proc: subprocess.Popen[bytes]) -> None:
    """storescp has no readiness signal: connect until it answers (or dies)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"storescp exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.02)  # nothing to wait on
    raise RuntimeError(f"storescp did not listen on {host}:{port}")


@contextlib.contextmanager
def storescp(
    port: int, host: str = "127.0.0.1", netns: str = "", out: Path | None = None
) -> Iterator[None]:
    """DCMTK storescp accepting every syntax it knows (JPEG-LS included), 128 KiB PDUs,
    TCP_NODELAY; `--ignore` (received and answered, not written) unless `out` is given."""
    store = ["-od", str(out)] if out is not None else ["--ignore"]
    args = [dcmtk("storescp"), "-aet", "ARCHIVE", "+xa", "-pdu", str(PDU), *store, str(port)]
    if netns:
        args = ["ip", "netns", "exec", netns, *args]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    try:
        wait_listening(host, port, proc)
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def storescu_seconds(files: Sequence[Path], host: str, port: int) -> float:
    """DCMTK storescu sending `files` as they are over one association: process start to
    exit (its association set-up and release included)."""
    args = [dcmtk("storescu"), "-aec", "ARCHIVE", "-pdu", str(PDU), host, str(port)]
    t0 = time.perf_counter()
    subprocess.run(
        [*args, *map(str, files)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "TCP_NODELAY": "1"},
        timeout=900,
    )
    return time.perf_counter() - t0


@dataclass
class Corpus:
    """`count` spooled CT Image instances of one series, 512 x 512 x 16 bit."""

    spool_dir: Path
    files: list[Path]
    bytes_total: int


def make_corpus(root: Path, count: int) -> Corpus:
    from agent.config import Equipment
    from agent.dicom import files
    from agent.dicom.assembler import Assembler
    from agent.dicom.files import instance_record
    from agent.dicom.uids import UidFactory
    from agent.exam import Patient, Procedure, open_exam
    from agent.spool import Spool
    from hardware.base import ScanRequest, SeriesStart, SliceReady
    from hardware.mock import MockDriver

    uids = UidFactory("1.2.826.0.1.3680043.10.999")
    equipment = Equipment("Example Medical", "CT-1", "SN0001", "CT1", "General Hospital", "1.0")
    patient = Patient(name="BENCH^SEND", id="BENCH-1", birth_date=date(1970, 1, 1), sex="O")
    procedure = Procedure(accession_number="BENCH", requested_procedure_description="CT CHEST")
    exam = open_exam(patient, procedure, uids, operator="BENCH", destinations=("SEED",))
    assembler = Assembler(equipment, uids)
    driver = MockDriver()
    driver.open()
    paths: list[Path] = []
    with Spool(root / "spool") as spool:
        try:
            driver.request_scan(ScanRequest(exam.token, 1, count))
            series = None
            while len(paths) < count:
                event = driver.read_event(10.0)
                if isinstance(event, SeriesStart):
                    series = assembler.open_series(exam, event)
                elif isinstance(event, SliceReady):
                    assert series is not None
                    ds = assembler.image(series, event)
                    inst = spool.accept(instance_record(ds), files.encode(ds), ["SEED"])
                    paths.append(spool.path(inst))
                    driver.release(event)
        finally:
            driver.close()
    return Corpus(root / "spool", paths, sum(p.stat().st_size for p in paths))


def send_with_agent(
    corpus: Corpus, host: str, port: int, syntaxes: Sequence[str], run: str, associations: int = 1
) -> tuple[float, dict[str, int]]:
    """The agent's delivery loop (DestinationSender, as the daemon runs it) sending every
    instance of the corpus to a new destination `run`: seconds from the queue's release to
    the last acknowledgement, transcoding inside the window; and how many instances went in
    each transfer syntax."""
    from agent.config import Destination
    from agent.delivery import DestinationSender
    from agent.net.outcome import Outcome
    from agent.net.sender import SendResult
    from agent.net.staging import Staging
    from agent.spool import DeliveryState, Spool

    dest = Destination(
        ae_title="ARCHIVE",
        host=host,
        port=port,
        name=run,
        transfer_syntaxes=tuple(syntaxes),
        max_pdu=PDU,
        associations=associations,
        adaptive_compression=True,  # as configured for a fast link (off by default)
        connect_timeout_s=10,
        acse_timeout_s=30,
        dimse_timeout_s=DIMSE_TIMEOUT_S,
        retry_initial_s=0.1,
        retry_max_s=0.2,
    )
    with Spool(corpus.spool_dir) as spool:
        uids = [i.sop_instance_uid for i in spool.instances()]
        sent_in: Counter[str] = Counter()

        def count(result: SendResult) -> None:
            if result.transfer_syntax_uid and result.verdict.outcome is Outcome.OK:
                sent_in[result.transfer_syntax_uid] += 1

        sender = DestinationSender("CT_BENCH", dest, spool, on_delivery=count)
        # the daemon's pool is warm long before an exam ends: its start is not in the window
        concurrent.futures.wait(Staging.warm())
        t0 = time.perf_counter()
        spool.add_destination(uids, run)  # the queue is released
        delivered = 0
        while delivered < len(uids) and time.perf_counter() - t0 < 600:
            if not sender.send_due():  # a retry waits for its (short) backoff
                time.sleep(0.05)
            delivered = spool.count(run, DeliveryState.DELIVERED)
        seconds = time.perf_counter() - t0
        sender.close()
    if delivered != len(uids):
        raise RuntimeError(f"{run}: {delivered} of {len(uids)} delivered")
    return seconds, dict(sent_in)
