"""The same exam, end to end, on each hardware driver: the real daemon, the real CLI (whose
`simulate` plays the reconstructor: in the daemon for the mock, in the CLI process for the
drop folder, by ordering a scan from `modality-agent simulator` for serial-shm), a real DCMTK
storescp, and the images checked by validate-dicom."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest

from agent.control.client import ControlClient
from hardware.directory import END_FILE
from hardware.serial_simulator import SerialReconstructor
from hardware.simulator import DropFolderReconstructor, Plan
from tests.agent_process import Agent, Dest, Simulator, write_config
from tests.peers import VALIDATE_DICOM, archived, require, storescp

DRIVERS = ["mock", "directory", "serial-shm"]


def driver_config(work: Path, driver: str, port: int) -> Path:
    """tests.agent_process's config, with `driver` (and its keys) in [hardware]."""
    cfg = write_config(work, [Dest("PACS", port)])
    if driver == "mock":
        return cfg
    if driver == "directory":
        drop = work / "drop"
        drop.mkdir()
        hardware = f'driver = "directory"\nfolder = "{drop}"\n'
    else:  # a ring name of its own: tests run side by side
        ring = f"mat-test-{uuid.uuid4().hex[:12]}"
        hardware = f'driver = "serial-shm"\nport = "{work / "ttyCT"}"\nring_name = "{ring}"\n'
    cfg.write_text(cfg.read_text().replace('driver = "mock"\n', hardware, 1))
    return cfg


def start(tmp_path: Path, driver: str, stack: ExitStack) -> Agent:
    port = stack.enter_context(storescp(tmp_path / "archive"))
    cfg = driver_config(tmp_path, driver, port)
    if driver == "serial-shm":  # the device is there before the agent, as on a console
        simulator = Simulator(cfg, tmp_path / "simulator.log")
        simulator.start()
        stack.callback(simulator.stop)
    agent = Agent(cfg, tmp_path / "daemon.log")
    agent.start()
    stack.callback(agent.stop)
    return agent


def start_exam(agent: Agent) -> dict[str, str]:
    exam: dict[str, str] = agent.json(
        "exam", "start", "--patient-id", "P1", "--patient-name", "DOE^JANE"
    )["exam"]
    return exam


def wait_accepted(socket: Path, n: int) -> None:
    """Until the daemon has accepted `n` slices (woken by its slice events)."""
    with ControlClient(socket, timeout=60) as ask, ControlClient(socket, timeout=60) as events:
        stream = iter(events.events(["slice"]))  # subscribed before the first look
        while ask.request("status")["counts"]["slices_accepted"] < n:
            next(stream)


@pytest.mark.parametrize("driver", DRIVERS)
def test_two_series_delivered_and_valid(tmp_path: Path, stack: ExitStack, driver: str) -> None:
    agent = start(tmp_path, driver, stack)
    exam = start_exam(agent)
    r = agent.cli("simulate", "--series", "2", "--slices", "5")
    assert r.returncode == 0, r.stderr
    assert agent.cli("exam", "end").returncode == 0
    r = agent.cli("wait", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    images = archived(tmp_path / "archive")
    assert len(images) == 10
    assert {ds.StudyInstanceUID for ds in images} == {exam["study_instance_uid"]}
    assert len({ds.SeriesInstanceUID for ds in images}) == 2
    assert len({ds.SeriesNumber for ds in images}) == 2
    assert all("SIMULATED" in str(ds.ImageComments) for ds in images)
    (study,) = agent.json("queue")["studies"]
    assert study["images"] == 10 and study["destinations"][0]["state"] == "delivered"
    # the acquisition's dose record, kept durably (the drop folder has no form for one)
    records = list((tmp_path / "spool" / "irradiation").glob("*.json"))
    assert len(records) == (0 if driver == "directory" else 1)
    if driver == "directory":  # everything taken was moved aside, nothing quarantined
        drop = tmp_path / "drop"
        assert sorted(p.name for p in drop.iterdir()) == [".done", ".quarantine"]
        assert len(list((drop / ".done").rglob("slice-*.raw"))) == 10
        assert not any((drop / ".quarantine").iterdir())
    require("dciodvfy")
    v = subprocess.run(
        [str(VALIDATE_DICOM), str(tmp_path / "archive")], capture_output=True, text=True
    )
    assert v.returncode == 0, v.stdout


def test_directory_faults_end_to_end(tmp_path: Path, stack: ExitStack) -> None:
    """Every drop-folder fault at once: the CLI returns once all intact slices are in, the
    daemon survives, bad files are alarmed, the lost slice and the aborted series are named."""
    agent = start(tmp_path, "directory", stack)
    start_exam(agent)
    faults = "partial,garbage,duplicate,reorder,lose,hw-error"
    r = agent.cli("simulate", "--series", "2", "--slices", "6", "--fault", faults, "--json")
    assert r.returncode == 0, r.stderr
    # series 1: 6 slices but index 3 lost -> 5; series 2 aborted after 3 of 6, index 3 lost
    assert '"written": 8' in r.stdout
    assert agent.cli("exam", "end").returncode == 0
    assert agent.cli("wait", "--timeout", "60").returncode == 0
    images = archived(tmp_path / "archive")
    assert sorted(int(ds.InstanceNumber) for ds in images) == [1, 1, 2, 2, 3, 3, 5, 6]
    alarms = agent.json("queue")["alarms"]
    messages = "\n".join(f"{a['kind']}: {a['message']}" for a in alarms)
    assert "hardware_error" in messages and "series_gap" in messages, messages
    with ControlClient(tmp_path / "control.sock") as client:
        counts = client.request("status")["counts"]
    assert counts["slices_accepted"] == 8 and counts["bad_events"] == 0, counts


def test_directory_kill_9_between_accept_and_release_keeps_one(
    tmp_path: Path, stack: ExitStack
) -> None:
    """The agent dies after a slice is durable in the spool but before its files were moved
    aside: the restarted driver announces it again, and the agent keeps it once."""
    agent = start(tmp_path, "directory", stack)
    exam = start_exam(agent)
    drop = tmp_path / "drop"
    # a reconstructor that has written 4 slices and not yet its series end
    played = DropFolderReconstructor(drop).play(Plan(exam["token"], 1, 4))
    (series,) = played.series
    end = drop / series.series_key / END_FILE
    end_bytes = end.read_bytes()
    end.unlink()
    wait_accepted(tmp_path / "control.sock", 4)
    agent.kill()
    # the state a kill -9 between spool.accept() and driver.release() of slice 3 leaves
    done = drop / ".done" / series.series_key
    for name in ("slice-00003.json", "slice-00003.raw"):
        if (done / name).exists():  # released before the kill (nearly always)
            shutil.move(done / name, drop / series.series_key / name)
    agent.start()
    (drop / series.series_key / ".end.tmp").write_bytes(end_bytes)
    (drop / series.series_key / ".end.tmp").rename(end)
    assert agent.cli("exam", "end").returncode == 0
    assert agent.cli("wait", "--timeout", "60").returncode == 0
    images = archived(tmp_path / "archive")
    assert sorted(int(ds.InstanceNumber) for ds in images) == [1, 2, 3, 4]


# fault -> instance numbers delivered for 2 series of 6 slices (PROTOCOL.md appendix A)
SERIAL_FAULTS = {
    "crc": [1, 2, 3, 4, 5, 6] * 2,
    "garbage": [1, 2, 3, 4, 5, 6] * 2,
    "drop": [1, 2, 3, 4, 5, 6] * 2,
    "reorder": [1, 2, 3, 4, 5, 6] * 2,
    "torn": [1, 2, 3, 4, 5, 6] * 2,
    "disconnect": [1, 2, 3, 4, 5, 6] * 2,
    "duplicate": [1, 2, 3, 4, 5, 6] * 2,
    "lose": [1, 2, 3, 5, 6] * 2,  # index 3 lost by the hardware in each series
    "hw-error": [1, 2, 3, 4, 5, 6, 1, 2, 3],  # the last series aborted after 3
}


@pytest.mark.parametrize("fault", SERIAL_FAULTS)
def test_serial_shm_fault_end_to_end(tmp_path: Path, stack: ExitStack, fault: str) -> None:
    """Each line fault through the real simulator, driver and daemon: the documented
    outcome, the daemon still running, every slice the device produced delivered once."""
    agent = start(tmp_path, "serial-shm", stack)
    start_exam(agent)
    r = agent.cli("simulate", "--series", "2", "--slices", "6", "--fault", fault, "--json")
    assert r.returncode == 0, r.stderr
    expected = SERIAL_FAULTS[fault]
    played = json.loads(r.stdout)
    assert played["written"] == len(expected)
    assert played["injected"].get(fault, 0) >= 1, played  # the fault did happen
    assert agent.cli("exam", "end").returncode == 0
    assert agent.cli("wait", "--timeout", "60").returncode == 0
    images = archived(tmp_path / "archive")
    assert sorted(int(ds.InstanceNumber) for ds in images) == sorted(expected)
    assert len({(ds.SeriesInstanceUID, ds.InstanceNumber) for ds in images}) == len(images)
    assert agent.proc is not None and agent.proc.poll() is None
    alarms = agent.json("queue")["alarms"]
    kinds = {a["kind"] for a in alarms}
    messages = "\n".join(f"{a['kind']}: {a['message']}" for a in alarms)
    gaps = sorted(a["message"].split("missing ")[1] for a in alarms if a["kind"] == "series_gap")
    if fault == "lose":
        assert gaps == ["indices 3", "indices 3"], messages
        assert "hardware_error" not in kinds, messages  # the gap alarm only (Appendix A)
    elif fault == "hw-error":
        assert gaps == ["indices 3-5"], messages
        assert "RECON_ABORTED" in messages, messages
    else:
        assert gaps == [], messages
        assert "hardware_disconnected" not in kinds, messages  # raised and cleared, if at all


def test_serial_shm_kill_9_mid_series_keeps_every_slice_once(
    tmp_path: Path, stack: ExitStack
) -> None:
    """The daemon is killed (-9) while the device is mid-series: the slots it had not yet
    released are announced again after the restart (state replay), the slices already durable
    are not filed twice, and the device, held back by its full ring meanwhile, loses nothing."""
    agent = start(tmp_path, "serial-shm", stack)
    exam = start_exam(agent)
    device = SerialReconstructor(str(tmp_path / "ttyCT"), timeout=120)
    plan = Plan(exam["token"], series=1, slices=40, rate_per_s=20)
    with ThreadPoolExecutor(1) as pool:
        played = pool.submit(device.play, plan)
        wait_accepted(tmp_path / "control.sock", 10)
        agent.kill()
        agent.start()
        assert len(played.result(timeout=120).series[0].written) == 40
    assert agent.cli("exam", "end").returncode == 0
    assert agent.cli("wait", "--timeout", "60").returncode == 0
    images = archived(tmp_path / "archive")
    assert sorted(int(ds.InstanceNumber) for ds in images) == list(range(1, 41))
    assert device.held() == []
