"""The assembler's quick path (a series template, per slice only what changes): byte for byte
what pydicom writes for the same data set, slice after slice, for every transfer syntax the
template takes; dciodvfy finds no error in what it writes; a series whose per-slice attributes
it does not know, and a slice it cannot take, go the full path."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

import agent.dicom.assembler as assembler_module
from agent.dicom import files
from agent.dicom.assembler import PER_SLICE, Assembler, Series
from agent.dicom.files import decode, encode
from agent.dicom.template import FileTemplate, TemplateUnsupported, Value
from agent.dicom.uids import UidFactory
from agent.exam import Encoded, Exam, Patient, Procedure, Scheduled, open_exam
from hardware.base import SliceReady
from hardware.mock import RECONS, simulated_series_start
from tests.factory import EQUIPMENT
from tests.peers import VALIDATE_DICOM

ROOT = "1.2.826.0.1.3680043.10.999"
SIZE = 32
# Yamada^Tarou=山田^太郎=やまだ^たろう in ISO 2022 IR 87 (PS3.5 H.3.1)
JIS_NAME = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B"


class Uids(UidFactory):
    """Hands out the `forced` UIDs first: the full path is then built with the UID the quick
    path drew."""

    def __init__(self) -> None:
        super().__init__(ROOT)
        self.forced: list[str] = []

    def new(self) -> str:
        return self.forced.pop() if self.forced else super().new()


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Rig:
    uids: Uids
    clock: Clock
    assembler: Assembler

    def both(self, series: Series, slice_: SliceReady) -> tuple[bytes, bytes]:
        """(the quick path's file, pydicom's encoding of the full data set of the same slice)."""
        quick = self.assembler.file(series, slice_)
        self.uids.forced.append(quick.record.sop_instance_uid)
        full = encode(self.assembler.image(series, slice_))
        return quick.data, full


@pytest.fixture
def rig() -> Rig:
    uids, clock = Uids(), Clock(datetime(2026, 3, 28, 22, 59, 59, 999500, tzinfo=UTC))
    return Rig(
        uids, clock, Assembler(EQUIPMENT, uids, tz=timezone(timedelta(hours=1)), clock=clock)
    )


def ascii_exam(uids: UidFactory) -> Exam:
    return open_exam(
        Patient(name="DOE^JANE", id="PID-1", birth_date=date(1980, 1, 2), sex="F"),
        Procedure(accession_number="ACC-1", requested_procedure_description="CT CHEST"),
        uids,
        operator="SMITH^ANN",
        destinations=("PACS",),
        now=datetime(2026, 3, 28, 22, 0, tzinfo=UTC),
    )


def utf8_exam(uids: UidFactory) -> Exam:  # our own non-ASCII text: ISO_IR 192
    e = ascii_exam(uids)
    return replace(e, patient=Patient(name="MÜLLER^JÖRG", id="PID-2", sex="M"), operator="")


def jis_exam(uids: UidFactory) -> Exam:  # from a worklist item, as encoded, ISO 2022 IR 87
    terms = ("", "ISO 2022 IR 87")
    scheduled = Scheduled(
        character_set=terms,
        study=(
            Encoded(0x00080050, "SH", b"A-JIS"),
            Encoded(0x00081030, "LO", b"\x1b$B6;It\x1b(B CT"),
        ),
        request=(
            Encoded(0x00401001, "SH", b"RP-1"),
            Encoded(0x00400009, "SH", b"SPS-1"),
        ),
    )
    e = ascii_exam(uids)
    return replace(
        e,
        patient=Patient(
            name="Yamada^Tarou",
            id="PID-3",
            birth_date=date(1960, 2, 29),
            sex="M",
            encoded=(Encoded(0x00100010, "PN", JIS_NAME),),
        ),
        procedure=Procedure(accession_number="A-JIS", unscheduled=False, scheduled=scheduled),
        operator="佐藤^花子",  # does not fit the set: fitted as "??^??", the same in each slice
    )


EXAMS: dict[str, Callable[[UidFactory], Exam]] = {
    "ascii": ascii_exam,
    "utf8": utf8_exam,
    "iso2022": jis_exam,
}


def open_series(r: Rig, exam: Exam, recon: int = 0, **changes: Any) -> Series:
    start = simulated_series_start(exam.token, f"K{recon}", recon + 1, RECONS[recon], None)
    start = replace(start, rows=SIZE, columns=SIZE, **changes)
    return r.assembler.open_series(exam, start, performed_procedure_step_uid=r.uids.new())


def slices(series: Series, count: int) -> Iterator[SliceReady]:
    """Slices whose every input varies: index, position (signs, digits that DS must shorten),
    acquisition time across midnight (the date changes), pixels."""
    rng = np.random.default_rng(7)
    t0 = datetime(2026, 3, 28, 22, 59, 59, 998000, tzinfo=UTC)  # 23:59:59.998 at +01:00
    for i in [*range(count - 1), 9998]:
        z = -1.0 / 3 * i + 0.000123456789
        pixels = rng.integers(0, 4096, (SIZE, SIZE), dtype=np.uint16)
        when = t0 + timedelta(milliseconds=0.7 * i)
        yield SliceReady(series.series_key, i, (-250.5, 12.25 - i, z), z, when, pixels)


class CountedEncode:
    """Counts the full encodings the assembler makes (not those of this module's `encode`)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = files.encode

        def counted(ds: Dataset) -> bytes:
            self.calls += 1
            return real(ds)

        monkeypatch.setattr(assembler_module.files, "encode", counted)


# -- the quick path gives pydicom's bytes -----------------------------------------------------


@pytest.mark.parametrize("kind", sorted(EXAMS))
def test_quick_files_are_byte_for_byte_pydicom_s(
    rig: Rig, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    exam = EXAMS[kind](rig.uids)
    series = open_series(rig, exam, recon=1, contrast_agent="IOPAMIDOL")
    first = next(slices(series, 1))
    quick, full = rig.both(series, first)  # the first goes the full way, and sets the template
    assert quick == full
    counted = CountedEncode(monkeypatch)
    made = []
    for n, slice_ in enumerate(slices(series, 12)):
        rig.clock.now += timedelta(microseconds=250_250 * n)  # creation time, across midnight
        quick, full = rig.both(series, slice_)
        assert quick == full, f"slice {slice_.index}"
        made.append(decode(quick))
    assert counted.calls == 0  # the assembler encoded no slice in full
    assert made[-1].InstanceNumber == 9999
    assert made[-1].file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    # the dates moved on during the series (midnight at +01:00)
    assert (made[0].ContentDate, made[-1].ContentDate) == ("20260328", "20260329")
    assert made[0].InstanceCreationDate != made[-1].InstanceCreationDate


def test_quick_files_of_interleaved_series_and_exams(rig: Rig) -> None:
    a = open_series(rig, ascii_exam(rig.uids), recon=0)
    b = open_series(rig, jis_exam(rig.uids), recon=2, patient_position="FFS",
                    image_orientation=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0))  # fmt: skip
    for x, y in zip(slices(a, 5), slices(b, 5), strict=True):
        for series, slice_ in ((a, x), (b, y)):
            quick, full = rig.both(series, slice_)
            assert quick == full


def _values(ds: Dataset) -> dict[int, Value]:
    """The per-slice values of `ds`, as the assembler hands them to the template."""
    out: dict[int, Value] = {}
    for tag in PER_SLICE:
        elem = ds.file_meta[tag] if tag >> 16 == 2 else ds[tag]
        if elem.VR in ("OB", "OW"):
            out[tag] = elem.value
        elif elem.VM > 1:
            out[tag] = [str(v) for v in elem.value]
        else:
            out[tag] = str(elem.value)
    return out


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_the_template_gives_pydicom_s_bytes_in_each_native_syntax(rig: Rig, syntax: UID) -> None:
    series = open_series(rig, jis_exam(rig.uids))
    datasets = []
    for slice_ in slices(series, 6):
        rig.clock.now += timedelta(seconds=1)
        ds = rig.assembler.image(series, slice_)
        ds.file_meta.TransferSyntaxUID = syntax
        datasets.append(ds)
    template = FileTemplate(datasets[0], encode(datasets[0]), PER_SLICE)
    assert template.transfer_syntax_uid == syntax
    for ds in datasets:
        assert template.fill(_values(ds)) == encode(ds)
    with pytest.raises(ValueError, match="exactly the changing tags"):
        template.fill({**_values(datasets[1]), 0x00100010: "DOE^JOHN"})


def test_a_syntax_the_template_cannot_take_is_refused(rig: Rig) -> None:
    series = open_series(rig, ascii_exam(rig.uids))
    ds = rig.assembler.image(series, next(slices(series, 1)))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    with pytest.raises(TemplateUnsupported, match="transfer syntax"):
        FileTemplate(ds, encode(ds), PER_SLICE)


# -- what the quick path cannot take goes the full way ----------------------------------------


def test_a_series_with_an_unknown_per_slice_attribute_keeps_the_full_path(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    slice_location = 0x00201041  # as if a module had started to derive it from each slice
    monkeypatch.setattr(assembler_module, "PER_SLICE", PER_SLICE - {slice_location})
    series = open_series(rig, ascii_exam(rig.uids))
    with caplog.at_level(logging.WARNING):
        rig.both(series, next(slices(series, 1)))
    assert f"series {series.series_instance_uid} is encoded in full" in caplog.text
    counted = CountedEncode(monkeypatch)
    for slice_ in slices(series, 4):
        quick, full = rig.both(series, slice_)
        assert quick == full
    assert counted.calls == 4  # the assembler encoded each slice in full


def test_a_slice_the_quick_path_cannot_take_fails_as_the_full_path_does(rig: Rig) -> None:
    series = open_series(rig, ascii_exam(rig.uids))
    first, second = slices(series, 2)
    rig.assembler.file(series, first)
    small = replace(second, pixels=second.pixels[: SIZE // 2])
    far = replace(second, image_position=(0.0, 0.0, float("nan")))
    naive = replace(second, acquisition_time=datetime(2026, 1, 1))
    for bad in (small, far, naive):
        with pytest.raises(ValueError) as full:
            rig.assembler.image(series, bad)
        with pytest.raises(ValueError) as quick:
            rig.assembler.file(series, bad)
        assert type(quick.value) is type(full.value) and str(quick.value) == str(full.value)
    quick_bytes, full_bytes = rig.both(series, second)  # and the next ordinary one is quick
    assert quick_bytes == full_bytes


# -- dciodvfy -------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) missing")
def test_dciodvfy_finds_no_error_in_quick_files(rig: Rig, tmp_path: Path) -> None:
    for kind, make in EXAMS.items():
        series = open_series(rig, make(rig.uids), recon=1, contrast_agent="IOHEXOL")
        for slice_ in slices(series, 4):
            image = rig.assembler.file(series, slice_)
            (tmp_path / f"{kind}-{image.record.instance_number}.dcm").write_bytes(image.data)
    run = subprocess.run(
        [str(VALIDATE_DICOM), str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "12 files, 0 with errors" in run.stdout
