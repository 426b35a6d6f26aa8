"""Sustained ingest over serial-shm: simulator -> driver -> DICOM instance -> durable spool.

    .venv/bin/python -m bench.ingest_serial_shm [--slices 1000,3000] [--rows 512] [--json-indent N]

Prints one JSON document on stdout (see bench/README.md for every key). What is measured, per
series length N (each in a fresh process, so that its peak RSS is its own):

- the reconstructor is `hardware.serial_device.SerialDevice` in a child process (a separate
  interpreter: it does not share the measured side's GIL, as a real reconstructor shares
  nothing with the agent), writing N phantom slices of rows x rows x 16 bit into its
  /dev/shm ring as fast as its free slots allow, announcing each on a pty;
- the measured process runs what the daemon's acquisition thread runs: the real
  `SerialShmDriver` (its I/O thread copies each slot out and checks its CRC-32) and
  `agent.acquisition.Acquisition`, polled as the daemon polls it (the assembler builds the CT
  Image instance; up to `--in-flight` workers make slices durable at once: the spool writes
  and fsyncs each file and its folder and commits the index row), which releases each slot
  only once its slice is durable.

The rate is N over the time from the simulator's first slice (put into its ring) to the
durable series end (the last slice durable, its SERIES_END acknowledged), as issue 10 defines
the window; `seconds_from_scan_command` also counts the device's set-up before that slice.
`steady` leaves out the first tenth (start-up, page faults of a fresh ring). Memory: RSS
sampled every 50 slices after that first tenth, and the peak (ru_maxrss), of the measured
process.

Baselines on the same data in the same run (there is no DCMTK tool that ingests from a
shared-memory ring, so no like-for-like DCMTK figure exists): `raw_fsync` writes the same
encoded files with the spool's file discipline alone (temporary file, its whole blocks
written with O_DIRECT, fsync, rename, fsync of the folder; no index, no assembly, no ring):
the disk's ceiling for one durable file per slice (`raw_fsync_2_threads`: two files in
flight, what a pipelined writer could get).
`dcmtk_storescp` sends the same files with DCMTK `storescu` to DCMTK `storescp` over
loopback, which writes them to the same disk (without fsync: storescp has no such option):
DCMTK's own ingest rate of these instances, for scale.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

TARGET_SLICES_PER_S = 300
WARMUP_FRACTION = 0.1
RSS_EVERY = 50  # slices between two RSS samples (at most one sample per poll)
POLL_S = 0.2  # as the daemon's acquisition thread polls
MB = 1_000_000


# -- the device, in its own process ------------------------------------------------------------


def _device_main(
    conn: Connection, ring_name: str, line_path: str, slot_count: int, rows: int, timeout: float
) -> None:
    """The child process: create the ring and the line, scan on command, report when idle."""
    from hardware.serial_device import SerialDevice

    class TimedDevice(SerialDevice):
        """Notes when its first slice goes into the ring: where the timed window starts."""

        first_slice_at: float | None = None

        def put_slice(self, *args: Any, **kwargs: Any) -> bool:
            if self.first_slice_at is None:
                self.first_slice_at = time.perf_counter()  # CLOCK_MONOTONIC: one clock for both
            return super().put_slice(*args, **kwargs)

    device = TimedDevice(  # no copy of each slice kept: 3 000 would cost the device 1.5 GB
        ring_name,
        line_path,
        slot_count=slot_count,
        max_rows=rows,
        max_columns=rows,
        keep_written=False,
    )
    device.start()
    try:
        conn.send(("ready", None))
        command, args = conn.recv()
        if command != "scan":
            return
        slices, token = args
        cpu0, t0 = time.process_time(), time.perf_counter()
        device.scan(1, slices, token=token)
        idle = device.wait_for(device.idle, timeout)
        conn.send(
            (
                "done",
                {
                    "idle": idle,
                    "seconds": time.perf_counter() - t0,
                    "first_slice_at": device.first_slice_at,
                    "cpu_seconds": time.process_time() - cpu0,
                    "cpu_ms_per_slice": (time.process_time() - cpu0) / slices * 1000,
                    "releases": device.releases,
                    "slices_that_waited_for_a_slot": device.blocked,
                    "resend_requests": len(device.resend_requests),
                    "peak_rss_mb": _peak_rss_mb(),
                },
            )
        )
        conn.recv()  # "close": the host has closed its side
    finally:
        device.close()


@contextlib.contextmanager
def _device_process(
    workdir: Path, slot_count: int, rows: int, timeout: float
) -> Iterator[tuple[Connection, str, str]]:
    ctx = multiprocessing.get_context("spawn")  # a fresh interpreter: no fork of our threads
    parent, child = ctx.Pipe()
    ring_name = f"modality-agent-bench-{uuid.uuid4().hex[:12]}"
    line_path = str(workdir / "tty")
    proc = ctx.Process(
        target=_device_main,
        args=(child, ring_name, line_path, slot_count, rows, timeout),
        name="bench-device",
        daemon=True,
    )
    proc.start()
    try:
        if not parent.poll(60) or parent.recv()[0] != "ready":
            raise RuntimeError("the simulated device did not start")
        yield parent, ring_name, line_path
        with contextlib.suppress(OSError):
            parent.send(("close", None))
        proc.join(30)
    finally:
        if proc.is_alive():
            proc.terminate()
            proc.join(10)
        Path("/dev/shm", ring_name).unlink(missing_ok=True)


# -- the measured side -------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # KiB on Linux


def _rss() -> dict[str, float]:
    """Current VmRSS and its parts (anonymous, file, shared memory: the ring), in MB."""
    out: dict[str, float] = {}
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[name] = int(value.split()[0]) * 1024 / MB
    return out


@dataclass
class _Samples:
    at_warmup: dict[str, float] = field(default_factory=dict)
    max_after_warmup: float = 0.0

    def take(self) -> dict[str, float]:
        now = _rss()
        self.max_after_warmup = max(self.max_after_warmup, now["VmRSS"])
        return now


def _bench_exam() -> Any:
    from agent.dicom.uids import UidFactory
    from agent.exam import Patient, Procedure, open_exam

    uids = UidFactory("1.2.826.0.1.3680043.10.999")
    patient = Patient(name="BENCH^INGEST", id="BENCH-1", birth_date=date(1970, 1, 1), sex="O")
    procedure = Procedure(accession_number="BENCH", requested_procedure_description="CT CHEST")
    exam = open_exam(patient, procedure, uids, operator="BENCH^OPERATOR", destinations=("PACS",))
    return uids, exam


def measure(
    slices: int,
    *,
    rows: int,
    slot_count: int,
    workdir: Path,
    timeout: float,
    in_flight: int | None = None,
) -> dict:
    """One series of `slices` slices from a device process into a spool under `workdir`."""
    from agent.acquisition import IN_FLIGHT, Acquisition
    from agent.config import Equipment
    from agent.dicom.assembler import Assembler
    from agent.spool import Spool
    from hardware.serial_shm import SerialShmDriver

    equipment = Equipment(
        manufacturer="Example Medical",
        model_name="CT-BENCH",
        device_serial_number="BENCH0001",
        station_name="BENCH",
        institution_name="Bench",
        software_versions="1.0",
    )
    uids, exam = _bench_exam()
    warmup = max(1, int(slices * WARMUP_FRACTION))
    with _device_process(workdir, slot_count, rows, timeout) as (conn, ring_name, line):
        spool = Spool(workdir / "spool")
        driver = SerialShmDriver(port=line, ring_name=ring_name)
        acquisition = Acquisition(
            driver,
            Assembler(equipment, uids),
            spool,
            lambda token: exam if token == exam.token else None,
            in_flight=in_flight or IN_FLIGHT,
        )
        samples = _Samples()
        try:
            driver.set_exam_token(exam.token)
            driver.open()
            counts = acquisition.counts
            deadline = time.monotonic() + timeout
            cpu0, t0 = time.process_time(), time.perf_counter()
            conn.send(("scan", (slices, exam.token)))
            t_warm = t0
            sampled = 0
            while counts.series_ended < 1:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"timed out after {counts.slices_accepted} slices")
                acquisition.poll(POLL_S)
                if acquisition.pending is not None:
                    raise RuntimeError("a slice could not be made durable (see the log)")
                accepted = counts.slices_accepted
                if not samples.at_warmup and accepted >= warmup:
                    t_warm = time.perf_counter()
                    samples.at_warmup = samples.take()
                    sampled = accepted
                elif samples.at_warmup and accepted - sampled >= RSS_EVERY:
                    samples.take()
                    sampled = accepted
            t_end = time.perf_counter()
            cpu = time.process_time() - cpu0
            at_end = samples.take()
            if not conn.poll(timeout):
                raise RuntimeError("the device did not report")
            _, device = conn.recv()
            # the window: the simulator's first slice -> the last one durable (issue 10); the
            # scan command before it sets the device up (its phantom slices), not the agent
            first = device.pop("first_slice_at") or t0
            from_command = t_end - t0
            seconds = t_end - first
            link = {
                "bad_frames": sum(driver.bad_frames.values()),
                "duplicates": driver.duplicates,
                "torn_reads": driver.torn_reads,
                "resend_requests": driver.resends,
            }
        finally:
            driver.close()
            spool.close()
    if counts.slices_accepted != slices:
        raise RuntimeError(f"{counts.slices_accepted} of {slices} slices accepted")
    stored = sum(p.stat().st_size for p in (workdir / "spool" / "instances").rglob("*.dcm"))
    pixel_bytes = slices * rows * rows * 2
    steady = slices - warmup
    return {
        "slices": slices,
        "seconds": round(seconds, 3),
        "seconds_from_scan_command": round(from_command, 3),
        "slices_per_s": round(slices / seconds, 1),
        "steady_slices_per_s": round(steady / (t_end - t_warm), 1) if steady else None,
        "pixel_mb_per_s": round(pixel_bytes / seconds / MB, 1),
        "stored_mb_per_s": round(stored / seconds / MB, 1),
        "stored_bytes": stored,
        "cpu_seconds": round(cpu, 2),  # this process, all threads
        "cpu_ms_per_slice": round(cpu / slices * 1000, 3),  # steadier than rates on a busy VM
        "memory_mb": {
            "rss_after_warmup": round(samples.at_warmup.get("VmRSS", 0.0), 1),
            "rss_at_end": round(at_end["VmRSS"], 1),
            "rss_max_after_warmup": round(samples.max_after_warmup, 1),
            "rss_growth_after_warmup": round(
                samples.max_after_warmup - samples.at_warmup.get("VmRSS", 0.0), 1
            ),
            "peak_rss": round(_peak_rss_mb(), 1),
            "at_end": {k: round(v, 1) for k, v in at_end.items()},
        },
        "link": link,
        "device": {k: round(v, 3) if isinstance(v, float) else v for k, v in device.items()},
    }


# -- baselines on the same data ----------------------------------------------------------------


def raw_fsync(sources: list[Path], workdir: Path, threads: int = 1) -> dict:
    """The same bytes, one durable file each (the spool's file discipline), no index; with
    `threads` > 1, that many files in flight at once."""
    from concurrent.futures import ThreadPoolExecutor

    from agent.spool.files import write_durable

    out = workdir / f"raw-{threads}"
    out.mkdir()
    data = [p.read_bytes() for p in sources]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda i: write_durable(out / f"{i}.dcm", data[i]), range(len(data))))
    seconds = time.perf_counter() - t0
    total = sum(len(b) for b in data)
    shutil.rmtree(out)
    return {
        "files": len(data),
        "threads": threads,
        "seconds": round(seconds, 3),
        "files_per_s": round(len(data) / seconds, 1),
        "mb_per_s": round(total / seconds / MB, 1),
    }


def _dcmtk(name: str) -> str | None:
    """DCMTK's tool, not pynetdicom's app of the same name in the venv."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p != venv_bin
    )
    return shutil.which(name, path=path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"storescp exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)  # nothing to wait on: storescp has no readiness signal
    raise RuntimeError("storescp did not listen")


def dcmtk_storescp(sources: list[Path], workdir: Path) -> dict:
    """DCMTK storescu -> storescp over loopback, the same files, written to the same disk."""
    storescp, storescu = _dcmtk("storescp"), _dcmtk("storescu")
    if storescp is None or storescu is None:
        return {"skipped": "DCMTK storescp/storescu not found"}
    out = workdir / "dcmtk"
    out.mkdir()
    for attempt in range(3):  # another process may take the free port before storescp does
        port = _free_port()
        scp = subprocess.Popen(
            [storescp, "-aet", "BENCHSCP", "-od", str(out), str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_listening(port, scp, 10)
            break
        except RuntimeError:
            scp.terminate()
            scp.wait(10)
            if attempt == 2:
                raise
    try:
        t0 = time.perf_counter()
        subprocess.run(
            [storescu, "-aec", "BENCHSCP", "127.0.0.1", str(port), *map(str, sources)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=600,
        )
        seconds = time.perf_counter() - t0
    finally:
        scp.terminate()
        scp.wait(10)
    received = list(out.iterdir())
    total = sum(p.stat().st_size for p in received)
    shutil.rmtree(out)
    if len(received) != len(sources):
        raise RuntimeError(f"storescp stored {len(received)} of {len(sources)} files")
    return {
        "files": len(received),
        "seconds": round(seconds, 3),
        "files_per_s": round(len(received) / seconds, 1),
        "mb_per_s": round(total / seconds / MB, 1),
        "fsync": False,
    }


# -- the command -------------------------------------------------------------------------------


def _one(args: argparse.Namespace) -> int:
    result = measure(
        args.one, rows=args.rows, slot_count=args.slot_count, workdir=args.workdir,
        timeout=args.timeout, in_flight=args.in_flight,
    )  # fmt: skip
    json.dump(result, sys.stdout)
    return 0


def _run_one(slices: int, args: argparse.Namespace, workdir: Path) -> dict:
    cmd = [
        sys.executable, "-m", "bench.ingest_serial_shm", "--one", str(slices),
        "--rows", str(args.rows), "--slot-count", str(args.slot_count),
        "--workdir", str(workdir), "--timeout", str(args.timeout),
        *(["--in-flight", str(args.in_flight)] if args.in_flight else []),
    ]  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=args.timeout + 120)
    if done.returncode != 0:
        raise RuntimeError(f"the run of {slices} slices failed:\n{done.stderr}")
    result: dict = json.loads(done.stdout)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.ingest_serial_shm", description=__doc__.split("\n")[0])
    p.add_argument("--slices", default="1000,3000", help="series lengths, comma-separated")
    p.add_argument("--rows", type=int, default=512, help="rows = columns of every slice")
    p.add_argument("--slot-count", type=int, default=16, help="ring slots of the device")
    p.add_argument(
        "--in-flight", type=int, help="slices made durable at once (default: the agent's own)"
    )
    p.add_argument("--baseline-files", type=int, default=1000, help="files for the baselines")
    p.add_argument("--no-dcmtk", action="store_true", help="skip the DCMTK baseline")
    p.add_argument("--workdir", type=Path, help="spools go here (default: a temporary folder)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    p.add_argument("--json-indent", type=int, default=2)
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one measured run
    args = p.parse_args(argv)
    if args.one is not None:
        return _one(args)
    from agent.acquisition import IN_FLIGHT

    sizes = [int(s) for s in args.slices.split(",") if s.strip()]
    base = args.workdir or Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        runs, workdirs = [], []
        for n in sizes:
            workdirs.append(Path(tempfile.mkdtemp(prefix=f"n{n}-", dir=base)))
            runs.append(_run_one(n, args, workdirs[-1]))
        # the baselines use the files the first run spooled: the same instances, same disk
        spooled = workdirs[0] / "spool" / "instances"
        sources = sorted(spooled.rglob("*.dcm"))[: args.baseline_files]
        baseline: dict[str, Any] = {
            "raw_fsync": raw_fsync(sources, base),
            "raw_fsync_2_threads": raw_fsync(sources, base, threads=2),
        }
        if not args.no_dcmtk:
            baseline["dcmtk_storescp"] = dcmtk_storescp(sources, base)
    finally:
        if args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    peaks = {str(r["slices"]): r["memory_mb"]["peak_rss"] for r in runs}
    report = {
        "bench": "ingest_serial_shm",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "config": {
            "rows": args.rows,
            "columns": args.rows,
            "bytes_per_pixel": 2,
            "slot_count": args.slot_count,
            "in_flight": args.in_flight or IN_FLIGHT,
            "device": "SerialDevice in a child process (spawn), pty line, /dev/shm ring",
            "path": "SerialShmDriver -> Acquisition (assembler, Spool.accept fsynced) -> release",
        },
        "runs": runs,
        "target": {
            "slices_per_s": TARGET_SLICES_PER_S,
            "met": all(r["slices_per_s"] >= TARGET_SLICES_PER_S for r in runs),
        },
        "memory": {
            "peak_rss_mb": peaks,
            "peak_growth_mb": round(max(peaks.values()) - min(peaks.values()), 1),
        },
        "baseline": baseline,
    }
    json.dump(report, sys.stdout, indent=args.json_indent or None)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
