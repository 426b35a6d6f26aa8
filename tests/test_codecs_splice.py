"""Transcoding a spooled (Explicit VR Little Endian) file to an encapsulated syntax by splicing
the new Pixel Data into the source's bytes: the same file as writing the whole data set with
dcmwrite, checked by pydicom, dciodvfy and dcmdump; every source it cannot splice takes the
general path and still transcodes."""

from __future__ import annotations

import io
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
)

from agent.dicom import codecs, encapsulated, files
from tests.factory import ct_images
from tests.peers import VALIDATE_DICOM, require
from tests.test_codecs import COMPRESSED, ct_pixels, make_ct_dataset, part10

INSTALLED = [uid for uid in COMPRESSED if codecs.is_available(uid)]


@pytest.fixture
def spliced(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """One entry per transcode_bytes call that found a span: whether it was spliced."""
    calls: list[bool] = []
    real = encapsulated.splice

    def spy(data: bytes, ds: Dataset, span: encapsulated.Span) -> bytes | None:
        out = real(data, ds, span)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(encapsulated, "splice", spy)
    return calls


def general(data: bytes, ts: UID) -> bytes:
    """transcode_bytes as it was before splicing: the whole data set written by dcmwrite."""
    find = encapsulated.find
    encapsulated.find = lambda data, ds: None
    try:
        return codecs.transcode_bytes(data, ts)
    finally:
        encapsulated.find = find


def assert_same_file(fast: bytes, slow: bytes) -> None:
    a, b = (pydicom.dcmread(io.BytesIO(x)) for x in (fast, slow))
    assert a.preamble == b.preamble
    assert list(a.file_meta.elements()) == list(b.file_meta.elements())
    assert list(a.keys()) == list(b.keys())
    for tag in a.keys():  # noqa: SIM118 (tags, not elements)
        assert a[tag] == b[tag], f"{tag} differs"
    assert fast == slow  # every encoder here is deterministic: the very same bytes


def assert_pixels_kept(out: bytes, source: Dataset) -> None:
    decoded = pydicom.dcmread(io.BytesIO(codecs.transcode_bytes(out, ExplicitVRLittleEndian)))
    assert decoded.PixelData == source.PixelData
    np.testing.assert_array_equal(pydicom.dcmread(io.BytesIO(out)).pixel_array, source.pixel_array)


SOURCES: dict[str, Callable[[], Dataset]] = {
    "spooled-ct": lambda: ct_images(1)[0],
    "ct512-12bit": lambda: make_ct_dataset(ct_pixels(512, 512), 12),
    "signed-odd-size": lambda: make_ct_dataset(ct_pixels(511, 509).astype(np.int16) - 1024, 12),
    "multi-frame": lambda: multi_frame(),
    "undefined-length-sequence": lambda: with_undefined_length_sequence(),
}


def multi_frame() -> Dataset:
    frames = np.stack([ct_pixels(64, 48, seed=s) for s in range(3)])
    ds = make_ct_dataset(frames.reshape(192, 48), 12)
    ds.Rows, ds.NumberOfFrames = 64, 3
    return ds


def with_undefined_length_sequence() -> Dataset:
    ds = make_ct_dataset(ct_pixels(64, 64), 12)
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "1", "99X", "x"
    ds.AnatomicRegionSequence = Sequence([item])
    ds["AnatomicRegionSequence"].is_undefined_length = True
    return ds


@pytest.fixture(params=list(SOURCES))
def source(request: pytest.FixtureRequest) -> Dataset:
    return SOURCES[request.param]()


@pytest.mark.parametrize("ts", INSTALLED, ids=lambda uid: uid.keyword)
def test_splice_equals_general_path(source: Dataset, ts: UID, spliced: list[bool]) -> None:
    data = part10(source)
    fast = codecs.transcode_bytes(data, ts)
    assert spliced == [True]
    assert pydicom.dcmread(io.BytesIO(fast)).file_meta.TransferSyntaxUID == ts
    assert_pixels_kept(fast, source)
    assert_same_file(fast, general(data, ts))


@pytest.fixture(scope="module")
def spooled_files() -> Iterator[list[bytes]]:
    yield [files.encode(ds) for ds in ct_images(2)]


@pytest.mark.parametrize("ts", INSTALLED, ids=lambda uid: uid.keyword)
def test_spliced_files_pass_dciodvfy_and_dcmdump(
    spooled_files: list[bytes], ts: UID, tmp_path: Path, spliced: list[bool]
) -> None:
    dcmdump = require("dciodvfy", "dcmdump")[1]
    for i, data in enumerate(spooled_files):
        (tmp_path / f"{i}.dcm").write_bytes(codecs.transcode_bytes(data, ts))
    assert spliced == [True] * len(spooled_files)
    run = subprocess.run([str(VALIDATE_DICOM), str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    for path in sorted(tmp_path.glob("*.dcm")):
        dump = subprocess.run([dcmdump, "-q", "-dc", str(path)], capture_output=True, text=True)
        assert dump.returncode == 0 and not dump.stderr, dump.stderr
        assert "(fffe,e0dd)" in dump.stdout
        assert "(7fe0,0010) OB (PixelSequence" in dump.stdout


def with_trailing_padding(ds: Dataset) -> bytes:
    ds.add_new(0xFFFCFFFC, "OB", b"\0" * 6)  # Data Set Trailing Padding, after Pixel Data
    return part10(ds)


def with_group_length(ds: Dataset) -> bytes:
    """(7FE0,0000) before Pixel Data: dcmwrite drops group lengths, a splice would keep it."""
    data = part10(ds)
    at = data.rindex(b"\xe0\x7f\x10\x00OW")
    return data[:at] + struct.pack("<HH2sHI", 0x7FE0, 0, b"UL", 4, len(data) - at) + data[at:]


def without_pixel_data(ds: Dataset) -> bytes:
    del ds.PixelData
    return part10(ds)


def encoded_as(ts: UID) -> Callable[[Dataset], bytes]:
    def encode(ds: Dataset) -> bytes:
        return codecs.transcode_bytes(part10(ds), ts)

    return encode


FALLBACKS: dict[str, Callable[[Dataset], bytes]] = {
    "element-after-pixel-data": with_trailing_padding,
    "group-length": with_group_length,
    "implicit-vr-source": encoded_as(ImplicitVRLittleEndian),
    "deflated-source": encoded_as(DeflatedExplicitVRLittleEndian),
    "rle-source": encoded_as(RLELossless),
}


@pytest.mark.parametrize("make", list(FALLBACKS.values()), ids=list(FALLBACKS))
def test_sources_it_cannot_splice_take_the_general_path(
    make: Callable[[Dataset], bytes], spliced: list[bool]
) -> None:
    ds = make_ct_dataset(ct_pixels(64, 64), 12)
    data = make(ds)
    spliced.clear()  # making an encapsulated source may have spliced
    source = pydicom.dcmread(io.BytesIO(data))
    assert encapsulated.find(data, source) is None
    out = codecs.transcode_bytes(data, JPEGLSLossless)
    assert spliced == []
    read = pydicom.dcmread(io.BytesIO(out))
    assert read.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert list(read.keys()) == [e.tag for e in source if e.tag.element != 0]
    assert_pixels_kept(out, make_ct_dataset(ct_pixels(64, 64), 12))


def test_file_meta_dcmwrite_would_change_takes_the_general_path(spliced: list[bool]) -> None:
    ds = make_ct_dataset(ct_pixels(64, 64), 12)
    data = part10(ds)
    uid = str(ds.SOPInstanceUID).encode()
    other = b"1.2.3.4".ljust(len(uid), b"\0")
    wrong_meta = data.replace(uid, other, 1)  # the first one is in the file meta
    assert pydicom.dcmread(io.BytesIO(wrong_meta)).file_meta.MediaStorageSOPInstanceUID == "1.2.3.4"
    out = codecs.transcode_bytes(wrong_meta, JPEGLSLossless)
    assert spliced == []
    assert pydicom.dcmread(io.BytesIO(out)).file_meta.MediaStorageSOPInstanceUID == uid.decode()

    # no (0002,0013): dcmwrite(enforce_file_format=True) would add pydicom's own
    ds = make_ct_dataset(ct_pixels(64, 64), 12)
    ds.preamble = b"\0" * 128
    ds.file_meta.FileMetaInformationGroupLength = 0
    ds.file_meta.FileMetaInformationVersion = b"\0\1"
    ds.file_meta.ImplementationClassUID = UID("2.25.4242")
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds)
    out = codecs.transcode_bytes(buf.getvalue(), JPEGLSLossless)
    assert spliced == []
    meta = pydicom.dcmread(io.BytesIO(out)).file_meta
    assert str(meta.ImplementationVersionName).startswith("PYDICOM")


def test_find_refuses_bytes_that_do_not_match_the_data_set() -> None:
    ds = make_ct_dataset(ct_pixels(16, 16), 12)
    data = part10(ds)
    read = pydicom.dcmread(io.BytesIO(data))
    assert encapsulated.find(data, read) is not None
    assert encapsulated.find(b"\0\0" + data, read) is None  # no DICM at 128
    shifted = data[:300] + b"\0\0" + data[300:]
    assert encapsulated.find(shifted, read) is None  # Pixel Data header not where it was read
    assert encapsulated.find(data + b"\0\0", read) is None  # bytes after Pixel Data
    assert encapsulated.find(data[:-2], read) is None


def test_no_pixel_data_takes_the_general_path() -> None:
    data = without_pixel_data(make_ct_dataset(ct_pixels(16, 16), 12))
    assert encapsulated.find(data, pydicom.dcmread(io.BytesIO(data))) is None
    out = pydicom.dcmread(io.BytesIO(codecs.transcode_bytes(data, JPEGLSLossless)))
    assert out.file_meta.TransferSyntaxUID == JPEGLSLossless and "PixelData" not in out


def test_report_splice_speed() -> None:
    """Run with -s: transcode_bytes of a spooled 512x512 16-bit slice, dcmwrite vs splice."""
    data = files.encode(ct_images(1)[0])
    for ts in (JPEGLSLossless, RLELossless):
        times: dict[str, list[float]] = {"dcmwrite": [], "splice": []}
        for _ in range(5):
            for name, run in (("dcmwrite", general), ("splice", codecs.transcode_bytes)):
                t0 = time.perf_counter()
                run(data, ts)
                times[name].append(time.perf_counter() - t0)
        ms = "  ".join(f"{k} {min(v) * 1e3:6.2f} ms" for k, v in times.items())
        print(f"\n{ts.keyword:16} {ms}")
