"""Mock hardware -> assembler -> Part 10 files: dciodvfy-clean, consistent, round-tripping."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from pydicom import config
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from agent.dicom import modules
from agent.dicom.assembler import IMPLEMENTATION_VERSION_NAME, Assembler, TokenMismatch
from agent.dicom.files import InvalidDataset, decode, encode
from agent.dicom.uids import IMPLEMENTATION_CLASS_UID, UidFactory, is_valid_uid
from agent.exam import Exam, Patient, Procedure
from hardware.base import SeriesStart, SliceReady
from tests.factory import EQUIPMENT, Acquired, acquire
from tests.peers import VALIDATE_DICOM

ROOT = "1.2.826.0.1.3680043.10.999"


def make_exam(uids: UidFactory, *, name: str = "MÜLLER^JÖRG", unscheduled: bool = False) -> Exam:
    return Exam(
        token="TOK-1",
        patient=Patient(name=name, id="PID-0001", birth_date=date(1970, 5, 17), sex="M"),
        procedure=Procedure(
            accession_number="ACC-1",
            requested_procedure_id="RP-1",
            requested_procedure_description="CT CHEST WITHOUT CONTRAST",
            scheduled_procedure_step_id="SPS-1",
            referring_physician="WELBY^MARCUS",
            unscheduled=unscheduled,
        ),
        study_instance_uid=uids.new(),
        study_id="1",
        started=datetime.now(UTC) - timedelta(minutes=3),
        frame_of_reference_uid=uids.new(),
        operator="SMITH^ANN",
    )


@pytest.fixture
def uids() -> UidFactory:
    return UidFactory(ROOT)


@pytest.fixture
def assembler(uids: UidFactory) -> Assembler:
    return Assembler(EQUIPMENT, uids)


@pytest.fixture
def exam_files(tmp_path: Path, assembler: Assembler, uids: UidFactory) -> Iterator[Acquired]:
    acquired = acquire(assembler, make_exam(uids))
    for i, ds in enumerate(acquired.datasets):
        (tmp_path / f"{i:04d}.dcm").write_bytes(encode(ds))
    yield acquired


def read_back(directory: Path) -> list[Dataset]:
    return [decode(p) for p in sorted(directory.glob("*.dcm"))]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) missing")
def test_dciodvfy_finds_no_error_and_no_warning(tmp_path: Path, exam_files: Acquired) -> None:
    for strict in ([], ["--strict"]):
        run = subprocess.run(
            [str(VALIDATE_DICOM), str(tmp_path), *strict],
            capture_output=True,
            text=True,
            check=False,
        )
        assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) missing")
def test_dciodvfy_with_contrast_unscheduled_and_ascii(tmp_path: Path, uids: UidFactory) -> None:
    assembler = Assembler(EQUIPMENT, uids, tz=timezone(timedelta(hours=-5)))
    exam = make_exam(uids, name="DOE^JANE", unscheduled=True)
    acquired = acquire(assembler, exam, series=3, slices=2, contrast_agent="IOPAMIDOL")
    for i, ds in enumerate(acquired.datasets):
        assert ds.ContrastBolusAgent == "IOPAMIDOL"
        assert "RequestAttributesSequence" not in ds
        assert "SpecificCharacterSet" not in ds
        assert ds.TimezoneOffsetFromUTC == "-0500"
        (tmp_path / f"{i}.dcm").write_bytes(encode(ds))
    run = subprocess.run(
        [str(VALIDATE_DICOM), str(tmp_path), "--strict"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout


def test_uids_and_identity(tmp_path: Path, exam_files: Acquired) -> None:
    files = read_back(tmp_path)
    assert len(files) == 12
    assert len({ds.SOPInstanceUID for ds in files}) == 12
    assert len({ds.SeriesInstanceUID for ds in files}) == 2
    assert {ds.StudyInstanceUID for ds in files} == {exam_files.exam.study_instance_uid}
    assert {ds.FrameOfReferenceUID for ds in files} == {exam_files.exam.frame_of_reference_uid}
    for ds in files:
        for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID):
            assert is_valid_uid(uid) and uid.startswith(ROOT + ".")
        assert ds.SOPClassUID == CTImageStorage
        meta = ds.file_meta
        assert meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert meta.ImplementationClassUID == IMPLEMENTATION_CLASS_UID
        assert meta.ImplementationVersionName == IMPLEMENTATION_VERSION_NAME
        assert ds.PatientName == "MÜLLER^JÖRG"  # survives as UTF-8
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        study_date = datetime.strptime(ds.StudyDate, "%Y%m%d").date()
        assert ds.PatientAge == modules.age(date(1970, 5, 17), study_date)
        assert ds.OperatorsName == "SMITH^ANN"
        assert ds.AccessionNumber == "ACC-1"
        assert ds.RequestAttributesSequence[0].ScheduledProcedureStepID == "SPS-1"
        assert ds.TimezoneOffsetFromUTC
    assert sorted({int(ds.SeriesNumber) for ds in files}) == [1, 2]


def test_simulated_is_marked(tmp_path: Path, exam_files: Acquired) -> None:
    for ds in read_back(tmp_path):
        assert "SIMULATED" in ds.SeriesDescription
        assert "SIMULATED" in ds.ImageComments


def test_geometry(tmp_path: Path, exam_files: Acquired) -> None:
    files = read_back(tmp_path)
    for uid in {ds.SeriesInstanceUID for ds in files}:
        series = sorted(
            (ds for ds in files if ds.SeriesInstanceUID == uid), key=lambda d: d.InstanceNumber
        )
        assert [ds.InstanceNumber for ds in series] == list(range(1, len(series) + 1))
        orientation = np.array(series[0].ImageOrientationPatient, dtype=float)
        assert all(np.allclose(ds.ImageOrientationPatient, orientation) for ds in series)
        assert series[0].PatientPosition == "HFS"
        assert modules.orientation_problem("HFS", tuple(orientation)) is None
        normal = np.cross(orientation[:3], orientation[3:])
        positions = np.array([ds.ImagePositionPatient for ds in series], dtype=float)
        along = positions @ normal
        steps = np.diff(along)
        thickness = float(series[0].SliceThickness)
        assert np.allclose(np.abs(steps), thickness)  # evenly spaced, no gap, one direction
        assert np.all(np.sign(steps) == np.sign(steps[0]))
        # nothing but the position along the normal changes
        across = positions - np.outer(along, normal)
        assert np.allclose(across, across[0])
        assert np.allclose([float(ds.SliceLocation) for ds in series], along)


def test_acquisition_parameters_and_windows(tmp_path: Path, exam_files: Acquired) -> None:
    by_kernel = {ds.ConvolutionKernel: ds for ds in read_back(tmp_path)}
    assert set(by_kernel) == {"STANDARD", "LUNG"}
    assert (by_kernel["STANDARD"].WindowCenter, by_kernel["STANDARD"].WindowWidth) == (40, 400)
    assert (by_kernel["LUNG"].WindowCenter, by_kernel["LUNG"].WindowWidth) == (-600, 1500)
    ds = by_kernel["STANDARD"]
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert (ds.KVP, ds.XRayTubeCurrent, ds.RevolutionTime) == (120, 200, 0.5)
    assert ds.SpiralPitchFactor == pytest.approx(0.984)
    assert ds.TableFeedPerRotation == pytest.approx(0.984 * 40)
    assert ds.Manufacturer == EQUIPMENT.manufacturer
    assert ds.DeviceSerialNumber == EQUIPMENT.device_serial_number
    assert "ContrastBolusAgent" not in ds  # no contrast given
    assert (ds.RescaleIntercept, ds.RescaleSlope) == (-1024, 1)


def test_pixels_and_times_round_trip(tmp_path: Path, exam_files: Acquired) -> None:
    files = read_back(tmp_path)
    for ds, slice_ in zip(files, exam_files.slices, strict=True):
        assert np.array_equal(ds.pixel_array, slice_.pixels)
        assert int(ds.InstanceNumber) == slice_.index + 1
        acquired = datetime.strptime(ds.AcquisitionDateTime, "%Y%m%d%H%M%S.%f%z")
        assert acquired == slice_.acquisition_time
        assert ds.ContentTime == ds.AcquisitionTime
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        assert -1100 < hu.min() < -900 and 500 < hu.max() < 1500


def test_time_zone_is_one_fixed_offset(uids: UidFactory) -> None:
    plus_one = timezone(timedelta(hours=1))
    assembler = Assembler(EQUIPMENT, uids, tz=plus_one)
    exam = make_exam(uids)
    ds = acquire(assembler, exam, series=1, slices=1).datasets[0]
    assert ds.TimezoneOffsetFromUTC == "+0100"
    assert ds.StudyTime == exam.started.astimezone(plus_one).strftime("%H%M%S.%f")
    assert ds.AcquisitionDateTime.endswith("+0100")


def test_mismatched_token_is_not_filed(assembler: Assembler, uids: UidFactory) -> None:
    exam = make_exam(uids)
    start = _start(token="OTHER")
    with pytest.raises(TokenMismatch):
        assembler.open_series(exam, start)
    series = assembler.open_series(exam, start, reassigned=True)  # assigned by a person
    assert series.exam is exam


def test_inconsistent_geometry_is_refused(assembler: Assembler, uids: UidFactory) -> None:
    exam = make_exam(uids)
    with pytest.raises(ValueError, match="Patient Position"):
        assembler.open_series(exam, _start(patient_position="HFP"))  # HFS orientation
    with pytest.raises(ValueError, match="orthogonal"):
        assembler.open_series(exam, _start(image_orientation=(1, 0, 0, 1, 0, 0)))


def test_wrong_slice_or_pixels_refused(assembler: Assembler, uids: UidFactory) -> None:
    series = assembler.open_series(make_exam(uids), _start())
    good = _slice()
    with pytest.raises(ValueError, match="given to series"):
        assembler.image(series, replace(good, series_key="ELSEWHERE"))
    with pytest.raises(ValueError, match="512 x 512"):
        assembler.image(series, replace(good, pixels=np.zeros((4, 4), np.uint16)))
    with pytest.raises(ValueError, match="unsigned 16-bit"):
        assembler.image(series, replace(good, pixels=np.zeros((512, 512), np.int16)))
    with pytest.raises(ValueError, match="timezone-aware"):
        assembler.image(series, replace(good, acquisition_time=datetime(2026, 1, 1)))


def test_series_number_and_pps_reference(assembler: Assembler, uids: UidFactory) -> None:
    pps = uids.new()
    series = assembler.open_series(
        make_exam(uids), _start(), series_number=7, performed_procedure_step_uid=pps
    )
    ds = assembler.image(series, _slice())
    assert ds.SeriesNumber == 7
    ref = ds.ReferencedPerformedProcedureStepSequence[0]
    assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (
        modules.MPPS_SOP_CLASS_UID,
        pps,
    )
    decode(encode(ds))


def test_encode_refuses_invalid_values_and_keeps_global_config(
    assembler: Assembler, uids: UidFactory
) -> None:
    mode = config.settings.writing_validation_mode
    ds = assembler.image(assembler.open_series(make_exam(uids), _start()), _slice())
    with pytest.warns(UserWarning):  # pydicom only warns on assignment
        ds.PatientID = "X" * 65  # LO is 64 characters at most: never shortened silently
    with pytest.raises(InvalidDataset, match="PatientID"):
        encode(ds)
    ds.PatientID = "PID"
    with pytest.warns(UserWarning):
        ds.Modality = "ct"  # CS: upper case only
    with pytest.raises(InvalidDataset, match="Modality"):
        encode(ds)
    assert config.settings.writing_validation_mode == mode
    del ds.file_meta
    with pytest.raises(InvalidDataset, match="Transfer Syntax"):
        encode(ds)


def test_decode_accepts_bytes_and_paths(
    tmp_path: Path, assembler: Assembler, uids: UidFactory
) -> None:
    ds = assembler.image(assembler.open_series(make_exam(uids), _start()), _slice())
    data = encode(ds)
    assert data[128:132] == b"DICM"
    path = tmp_path / "one.dcm"
    path.write_bytes(data)
    assert decode(path).SOPInstanceUID == decode(data).SOPInstanceUID == ds.SOPInstanceUID


@pytest.mark.parametrize(
    ("kernel", "window"),
    [
        ("STANDARD", (40, 400)),
        ("SOFT", (40, 400)),
        ("LUNG", (-600, 1500)),
        ("BONE", (400, 1800)),
        ("BONEPLUS", (400, 1800)),
        ("B30f", (40, 400)),
        ("", (40, 400)),
    ],
)
def test_window_for_kernel(kernel: str, window: tuple[int, int]) -> None:
    assert modules.window_for_kernel(kernel)[:2] == window


@pytest.mark.parametrize(
    ("birth", "on", "age"),
    [
        (date(1970, 5, 17), date(2026, 5, 16), "055Y"),
        (date(1970, 5, 17), date(2026, 5, 17), "056Y"),
        (date(2025, 1, 10), date(2026, 11, 26), "022M"),
        (date(2026, 11, 1), date(2026, 11, 26), "025D"),
        (date(2026, 10, 1), date(2026, 10, 31), "004W"),
    ],
)
def test_age(birth: date, on: date, age: str) -> None:
    assert modules.age(birth, on) == age


@pytest.mark.parametrize(
    ("position", "orientation"),
    [
        ("HFS", (1, 0, 0, 0, 1, 0)),
        ("HFP", (-1, 0, 0, 0, -1, 0)),
        ("FFS", (-1, 0, 0, 0, 1, 0)),
        ("FFP", (1, 0, 0, 0, -1, 0)),
        ("HFS", (1, 0, 0, 0, 0.9659258, -0.2588190)),  # 15 degree gantry tilt
    ],
)
def test_orientation_fits_position(
    position: str, orientation: tuple[float, float, float, float, float, float]
) -> None:
    assert modules.orientation_problem(position, orientation) is None
    flipped = (-orientation[0], *orientation[1:])
    assert modules.orientation_problem(position, flipped) is not None


def _start(**changes: object) -> SeriesStart:
    base = SeriesStart(
        token="TOK-1",
        series_key="K1",
        series_number=1,
        description="CHEST",
        protocol_name="CHEST",
        body_part="CHEST",
        patient_position="HFS",
        image_orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        rows=512,
        columns=512,
        pixel_spacing_mm=(0.7, 0.7),
        slice_thickness_mm=5.0,
        kernel="STANDARD",
        kvp=120.0,
        tube_current_ma=200.0,
        exposure_time_ms=500.0,
        exposure_mas=100.0,
        revolution_time_s=0.5,
        single_collimation_mm=0.625,
        total_collimation_mm=40.0,
        spiral_pitch_factor=1.0,
        scan_options="HELICAL",
        data_collection_diameter_mm=500.0,
        reconstruction_diameter_mm=358.4,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def _slice() -> SliceReady:
    return SliceReady(
        series_key="K1",
        index=0,
        image_position=(-178.85, -178.85, -10.0),
        table_position_mm=10.0,
        acquisition_time=datetime.now(UTC),
        pixels=np.full((512, 512), 1024, np.uint16),
    )


def test_a_new_frame_of_reference_only_when_the_patient_moved(
    assembler: Assembler, uids: UidFactory
) -> None:
    from agent.dicom.assembler import frame_of_reference_uid

    exam = make_exam(uids)
    got = acquire(assembler, exam, series=1, slices=1)
    start = got.series[0].start
    assert got.datasets[0].FrameOfReferenceUID == exam.frame_of_reference_uid
    moved = replace(start, frame_of_reference_id=2)
    first, again = frame_of_reference_uid(exam, moved), frame_of_reference_uid(exam, moved)
    assert first == again != exam.frame_of_reference_uid and is_valid_uid(first)
    assert frame_of_reference_uid(exam, replace(start, frame_of_reference_id=3)) != first
    other_exam = make_exam(uids)
    assert frame_of_reference_uid(other_exam, moved) != first
