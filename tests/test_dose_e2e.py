"""The CT Radiation Dose SR end to end: the real daemon (mock scanner) and CLI, a real
storescp, the test MPPS SCP (tests/mpps_scp.py). The report arrives with the images, passes
dciodvfy, and its rows equal the irradiation records the daemon kept from the hardware; the
MPPS final N-SET references it; a discontinued exam gets one; an exam that irradiated nothing
gets none. A daemon in this process, on a mock asked for a localizer and a dose-check
notification, shows those rows too."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

import hardware.mock
from agent.config.load import load
from agent.daemon import Daemon
from agent.dose import check
from hardware.base import SeriesStart
from hardware.dose import AcquisitionType, IrradiationEvent
from hardware.event_codec import irradiation_from_json
from hardware.mock import MockDriver
from tests.agent_process import Agent, Dest, Simulator, write_config
from tests.mpps_scp import MppsSCP
from tests.peers import CT_IMAGE_STORAGE, VALIDATE_DICOM, require, storescp
from tests.test_dose import check_against_records
from tests.test_drivers_e2e import driver_config

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.67"


def received(archive: Path) -> tuple[list[Dataset], list[Dataset]]:
    """What the storescp holds: (images, dose reports)."""
    files: list[Dataset] = [
        pydicom.dcmread(f, stop_before_pixels=True) for f in archive.rglob("*") if f.is_file()
    ]
    images = [ds for ds in files if ds.SOPClassUID == CT_IMAGE_STORAGE]
    return images, [ds for ds in files if ds.SOPClassUID == SR_CLASS]


def records(spool: Path, token: str) -> list[IrradiationEvent]:
    """The irradiation records the daemon kept durably, as the hardware reported them."""
    events = [
        irradiation_from_json(json.loads(p.read_bytes()))
        for p in (spool / "irradiation").glob("*.json")
    ]
    return [e for e in events if e.token == token]


def valid(archive: Path) -> None:
    require("dciodvfy", "dsrdump")
    v = subprocess.run([str(VALIDATE_DICOM), str(archive)], capture_output=True, text=True)
    assert v.returncode == 0, v.stdout
    for sr in archive.rglob("SR*"):
        out = subprocess.run(["dsrdump", str(sr)], capture_output=True, text=True)
        assert out.returncode == 0 and "E:" not in out.stderr, out.stderr


def simulated_too(cfg: Path) -> None:
    """The mock's acquisitions get a report only when asked (no made-up dose in a registry)."""
    text = cfg.read_text().replace("[agent]\n", "[agent]\ndose_report_when_simulated = true\n", 1)
    cfg.write_text(text)


def start(tmp_path: Path, stack: ExitStack, ris_port: int) -> Agent:
    archive = stack.enter_context(storescp(tmp_path / "archive"))
    extra = (
        f'\n[mpps]\nae_title = "RIS"\nhost = "127.0.0.1"\nport = {ris_port}\n'
        "connect_timeout = 2\nacse_timeout = 5\ndimse_timeout = 5\n"
    )
    cfg = write_config(tmp_path, [Dest("PACS", archive)], extra)
    simulated_too(cfg)
    agent = Agent(cfg, tmp_path / "d.log")
    agent.start()
    stack.callback(agent.stop)
    return agent


def ok(r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode == 0, r.stderr


def test_report_of_two_acquisitions_at_storescp_and_in_the_mpps(
    tmp_path: Path, stack: ExitStack
) -> None:
    ris = stack.enter_context(MppsSCP())
    agent = start(tmp_path, stack, ris.port)
    ok(agent.cli("exam", "start", "--patient-id", "P1", "--patient-name", "DOE^JANE", "--sex", "F"))
    exam = agent.json("exam", "status")["exam"]
    for _ in range(2):  # two acquisitions, each reconstructed as two series
        ok(agent.cli("simulate", "--series", "2", "--slices", "3"))
    ok(agent.cli("exam", "end"))
    ok(agent.cli("wait", "--timeout", "60"))
    images, (sr,) = received(tmp_path / "archive")
    valid(tmp_path / "archive")
    kept = records(tmp_path / "spool", exam["token"])
    assert len(kept) == 2 and {e.acquisition_type for e in kept} == {AcquisitionType.SPIRAL}
    check_against_records(sr, kept)
    assert sr.StudyInstanceUID == exam["study_instance_uid"] and sr.PatientID == "P1"
    assert sr.SeriesDescription.startswith("SIMULATED") and sr.Modality == "SR"
    assert sr.SeriesInstanceUID not in {i.SeriesInstanceUID for i in images}
    # each image names its acquisition's record; the report lists the images as evidence
    assert {i.IrradiationEventUID for i in images} == {e.event_uid for e in kept}
    (evidence,) = sr.CurrentRequestedProcedureEvidenceSequence
    listed = {
        r.ReferencedSOPInstanceUID
        for s in evidence.ReferencedSeriesSequence
        for r in s.ReferencedSOPSequence
    }
    assert listed == {i.SOPInstanceUID for i in images} and len(images) == 12
    # the MPPS: the step the report names, and the final N-SET referencing the report
    (uid,) = ris.steps
    (ref,) = sr.ReferencedPerformedProcedureStepSequence
    assert ref.ReferencedSOPInstanceUID == uid
    final = ris.messages[-1].dataset
    assert final.PerformedProcedureStepStatus == "COMPLETED"
    (dose_series,) = [
        s for s in final.PerformedSeriesSequence if s.SeriesInstanceUID == sr.SeriesInstanceUID
    ]
    (non_image,) = dose_series.ReferencedNonImageCompositeSOPInstanceSequence
    assert (non_image.ReferencedSOPClassUID, non_image.ReferencedSOPInstanceUID) == (
        SR_CLASS,
        sr.SOPInstanceUID,
    )
    assert dose_series.ReferencedImageSequence == []
    image_refs = {
        r.ReferencedSOPInstanceUID
        for s in final.PerformedSeriesSequence
        for r in s.ReferencedImageSequence
    }
    assert image_refs == {i.SOPInstanceUID for i in images}


def test_discontinued_exam_gets_a_report_and_an_exam_without_irradiation_none(
    tmp_path: Path, stack: ExitStack
) -> None:
    ris = stack.enter_context(MppsSCP())
    agent = start(tmp_path, stack, ris.port)
    ok(agent.cli("exam", "start", "--patient-id", "P2", "--patient-name", "ROE^RICHARD"))
    token = agent.json("exam", "status")["exam"]["token"]
    ok(agent.cli("simulate", "--series", "1", "--slices", "2"))
    ok(agent.cli("exam", "end", "--discontinue", "Patient died"))
    ok(agent.cli("wait", "--timeout", "60"))
    _, (sr,) = received(tmp_path / "archive")
    check_against_records(sr, records(tmp_path / "spool", token))
    final = ris.messages[-1].dataset
    assert final.PerformedProcedureStepStatus == "DISCONTINUED"
    assert any(
        r.ReferencedSOPInstanceUID == sr.SOPInstanceUID
        for s in final.PerformedSeriesSequence
        for r in s.ReferencedNonImageCompositeSOPInstanceSequence
    )
    # nobody was irradiated: no report (TID 10011 needs an event), the exam ends as ever
    ok(agent.cli("exam", "start", "--patient-id", "P3", "--patient-name", "POE^EDGAR"))
    ok(agent.cli("exam", "end", "--discontinue", "Patient refused to continue procedure"))
    ok(agent.cli("wait", "--timeout", "60"))
    _, reports = received(tmp_path / "archive")
    assert [r.SOPInstanceUID for r in reports] == [sr.SOPInstanceUID]
    assert ris.messages[-1].dataset.PerformedProcedureStepStatus == "DISCONTINUED"
    assert not [a for a in agent.json("queue")["alarms"] if a["kind"] == "dose_report_failed"]
    valid(tmp_path / "archive")


def test_localizer_and_dose_check_notification_in_process(tmp_path: Path, stack: ExitStack) -> None:
    archive = stack.enter_context(storescp(tmp_path / "archive"))
    path = write_config(tmp_path, [Dest("PACS", archive, send_while_scanning=False)])
    simulated_too(path)
    cfg = load(path)
    daemon = Daemon(cfg, driver=MockDriver(localizer=True, dose_check_ctdivol_mgy=5.0))
    daemon.start()
    stack.callback(daemon.stop)
    ops = daemon.ops
    exam = ops.exam_start({"patient_id": "P4", "patient_name": "DOE^JOHN"})["exam"]
    for _ in range(2):
        ops.simulate({"series": 1, "slices": 2, "timeout": 60})
    ops.exam_end({})
    ops.wait({"timeout": 60})
    _, (sr,) = received(tmp_path / "archive")
    kept = records(tmp_path / "spool", exam["token"])
    kinds = [e.acquisition_type for e in sorted(kept, key=lambda e: e.start_time)]
    assert kinds == [AcquisitionType.CONSTANT_ANGLE, AcquisitionType.SPIRAL, AcquisitionType.SPIRAL]
    assert [len(e.alerts) for e in sorted(kept, key=lambda e: e.start_time)] == [0, 1, 1]
    check_against_records(sr, kept)
    assert check.problems(sr) == []
    valid(tmp_path / "archive")


def registry_config(tmp_path: Path, stack: ExitStack) -> Path:
    """An archive (PACS, default) and a dose registry (DOSE), both real storescps."""
    archive = stack.enter_context(storescp(tmp_path / "archive"))
    registry = stack.enter_context(storescp(tmp_path / "registry", ae_title="DOSE_REG"))
    cfg = write_config(
        tmp_path,
        [Dest("PACS", archive), Dest("DOSE", registry, default=False, ae_title="DOSE_REG")],
    )
    cfg.write_text(
        cfg.read_text().replace('name = "DOSE"\n', 'name = "DOSE"\ndose_registry = true\n')
    )
    return cfg


def test_dose_registry_never_gets_a_simulated_report(tmp_path: Path, stack: ExitStack) -> None:
    """`dose_report_when_simulated = true`: the mock's report goes to the archive with the
    images, never to the dose registry (made-up dose); nor does any image."""
    cfg = registry_config(tmp_path, stack)
    simulated_too(cfg)
    agent = Agent(cfg, tmp_path / "d.log")
    agent.start()
    stack.callback(agent.stop)
    hand = ("exam", "start", "--patient-id", "P5", "--patient-name", "DOE^JANE")
    r = agent.cli(*hand, "--dest", "PACS", "--dest", "DOSE")
    assert r.returncode == 2 and "DOSE: a dose registry" in r.stderr, r.stderr
    ok(agent.cli(*hand, "--weight", "82.5", "--size", "1.7"))
    ok(agent.cli("simulate", "--series", "2", "--slices", "2"))
    ok(agent.cli("exam", "end"))
    ok(agent.cli("wait", "--timeout", "60"))
    images, (sr,) = received(tmp_path / "archive")
    assert len(images) == 4 and sr.SeriesDescription.startswith("SIMULATED")
    assert received(tmp_path / "registry") == ([], [])
    (study,) = agent.json("queue")["studies"]
    by_name = {d["name"]: d for d in study["destinations"]}
    assert by_name["PACS"]["state"] == "delivered" and "DOSE" not in by_name
    valid(tmp_path / "archive")


def test_dose_registry_gets_a_real_acquisitions_report_and_no_image(
    tmp_path: Path, stack: ExitStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hardware that does not say its series are simulated (the mock, its series starts
    unmarked; a daemon in this process): the dose registry gets the report at once, never an
    image; the images and the report go to the archive."""
    real = hardware.mock.simulated_series_start

    def unmarked(*args: Any, **kwargs: Any) -> SeriesStart:
        return dataclasses.replace(real(*args, **kwargs), simulated=False)

    monkeypatch.setattr(hardware.mock, "simulated_series_start", unmarked)
    daemon = Daemon(load(registry_config(tmp_path, stack)), driver=MockDriver())
    daemon.start()
    stack.callback(daemon.stop)
    ops = daemon.ops
    ops.exam_start({"patient_id": "P6", "patient_name": "DOE^JOHN", "weight_kg": 82.5})
    ops.simulate({"series": 2, "slices": 2, "timeout": 60})
    ops.exam_end({})
    ops.wait({"timeout": 60})
    images, (sr,) = received(tmp_path / "archive")
    assert len(images) == 4 and not sr.SeriesDescription.startswith("SIMULATED")
    assert received(tmp_path / "registry") == ([], [sr])
    assert str(sr.PatientWeight) == "82.5"
    (study,) = daemon.ops.queue({})["studies"]
    by_name = {d["name"]: d for d in study["destinations"]}
    assert by_name["DOSE"]["state"] == by_name["PACS"]["state"] == "delivered"
    assert by_name["DOSE"]["images"] == 0 and by_name["PACS"]["sent"] == 4  # reports aside
    valid(tmp_path / "registry")


def test_serial_shm_simulator_localizer_and_two_acquisitions(
    tmp_path: Path, stack: ExitStack
) -> None:
    """Through `modality-agent simulator` (the serial-shm device as its own process) and the
    real driver: a localizer and two acquisitions, one above the dose check's CTDIvol. The
    report at storescp has exactly the records the simulator says it sent (UIDs, CTDIvol,
    DLP, alert), and the MPPS final N-SET references it."""
    ris = stack.enter_context(MppsSCP())
    cfg = driver_config(tmp_path, "serial-shm", stack.enter_context(storescp(tmp_path / "archive")))
    mpps = f'\n[mpps]\nae_title = "RIS"\nhost = "127.0.0.1"\nport = {ris.port}\n'
    cfg.write_text(cfg.read_text() + mpps)
    simulated_too(cfg)
    agent = Agent(cfg, tmp_path / "d.log")
    processes: tuple[Simulator | Agent, ...] = (Simulator(cfg, tmp_path / "sim.log"), agent)
    for process in processes:  # the device first, as on a console
        process.start()
        stack.callback(process.stop)
    ok(agent.cli("exam", "start", "--patient-id", "P6", "--patient-name", "DOE^JANE"))
    token = agent.json("exam", "status")["exam"]["token"]
    sent: list[IrradiationEvent] = []
    for options in (["--localizer", "--dose-check-ctdivol", "5"], []):
        played = agent.json("simulate", "--series", "2", "--slices", "2", *options)
        sent += [irradiation_from_json(doc) for doc in played["irradiation"]]
    assert [(e.acquisition_type, len(e.alerts)) for e in sent] == [
        (AcquisitionType.CONSTANT_ANGLE, 0),
        (AcquisitionType.SPIRAL, 1),
        (AcquisitionType.SPIRAL, 0),
    ]
    ok(agent.cli("exam", "end"))
    ok(agent.cli("wait", "--timeout", "60"))
    images, (sr,) = received(tmp_path / "archive")
    assert len(images) == 8
    check_against_records(sr, sent)  # every row against what the hardware reported
    assert {e.event_uid for e in records(tmp_path / "spool", token)} == {e.event_uid for e in sent}
    assert {i.IrradiationEventUID for i in images} == {e.event_uid for e in sent[1:]}
    (uid,) = ris.steps
    assert sr.ReferencedPerformedProcedureStepSequence[0].ReferencedSOPInstanceUID == uid
    final = ris.messages[-1].dataset
    assert final.PerformedProcedureStepStatus == "COMPLETED"
    assert [
        r.ReferencedSOPInstanceUID
        for s in final.PerformedSeriesSequence
        for r in s.ReferencedNonImageCompositeSOPInstanceSequence
    ] == [sr.SOPInstanceUID]
    valid(tmp_path / "archive")
