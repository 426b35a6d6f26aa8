"""Lossless transcoding: every syntax round-trips exactly, checked by pydicom and by an
independent decoder (DCMTK, GDCM) where installed."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import compress
from pydicom.uid import (
    JPEG2000,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)

from agent.dicom import codecs
from agent.dicom.codecs import CodecError

ALL = [
    JPEGLSLossless,
    JPEG2000Lossless,
    RLELossless,
    JPEGLosslessSV1,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
]
COMPRESSED = [uid for uid in ALL if uid.is_compressed]

# The independent decoder for each syntax: argv before the input and output paths.
DECODERS: dict[UID, list[str]] = {
    JPEGLSLossless: ["dcmdjpls"],
    RLELossless: ["dcmdrle"],
    JPEGLosslessSV1: ["dcmdjpeg"],
    JPEG2000Lossless: ["gdcmconv", "--raw"],
    DeflatedExplicitVRLittleEndian: ["dcmconv", "+te"],
    ExplicitVRLittleEndian: ["dcmconv", "+te"],
    ImplicitVRLittleEndian: ["dcmconv", "+te"],
}

Pixels = npt.NDArray[np.uint16]


def ct_pixels(rows: int, cols: int, seed: int = 1) -> Pixels:
    """A CT-like slice stored as HU + 1024: air around an elliptic body with fat, soft
    tissue, two lungs, a bone ring, a smooth texture and mild noise (not zeros, not noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float64)
    cy, cx = rows / 2, cols / 2
    body = np.hypot((y - cy) / (rows * 0.40), (x - cx) / (cols * 0.46))
    hu = np.full((rows, cols), -1000.0)
    hu[body < 1.0] = -100.0  # fat
    hu[body < 0.92] = 40.0  # soft tissue
    for side in (-1, 1):
        lung = np.hypot(
            (y - cy * 0.95) / (rows * 0.22), (x - cx - side * cols * 0.2) / (cols * 0.13)
        )
        hu[lung < 1.0] = -850.0
    hu[(body < 0.97) & (body > 0.92)] = 1200.0  # ribs / cortical bone
    hu += 25.0 * np.sin(x / 29.0) * np.cos(y / 17.0) * (body < 1.0)
    hu += rng.normal(0.0, 8.0, hu.shape)
    return np.clip(np.round(hu + 1024.0), 0, 4095).astype(np.uint16)


def edge_pixels(rows: int, cols: int, bits_stored: int) -> Pixels:
    """Every value of the range, hard 0/max edges, and the maximum in the corners."""
    top = 2**bits_stored - 1
    arr = (np.arange(rows * cols, dtype=np.int64) * 7919 % (top + 1)).reshape(rows, cols)
    arr[: rows // 4, : cols // 4] = np.where(np.indices((rows // 4, cols // 4)).sum(0) % 2, top, 0)
    arr[-1, :] = top
    arr[:, 0] = 0
    arr[0, 0] = arr[0, -1] = arr[-1, 0] = arr[-2, -2] = top
    return arr.astype(np.uint16)


def make_ct_dataset(
    arr: npt.NDArray[np.uint16] | npt.NDArray[np.int16],
    bits_stored: int,
    lossy_flag: str | None = "00",
) -> Dataset:
    """A minimal CT image in Explicit VR Little Endian.

    Stand-in until agent/dicom/assembler.py exists: swap this helper for the real assembler."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(prefix=None)
    ds.StudyInstanceUID = generate_uid(prefix=None)
    ds.SeriesInstanceUID = generate_uid(prefix=None)
    ds.Modality = "CT"
    ds.PatientName = "Phantom^Codec"
    ds.PatientID = "CODEC-1"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if arr.dtype == np.int16 else 0
    ds.RescaleIntercept = 0 if arr.dtype == np.int16 else -1024
    ds.RescaleSlope = 1
    if lossy_flag is not None:
        ds.LossyImageCompression = lossy_flag
    ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    return ds


def part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


IMAGES: dict[str, Callable[[], Dataset]] = {
    "ct512-12bit": lambda: make_ct_dataset(ct_pixels(512, 512), 12),
    "ct511x509-12bit": lambda: make_ct_dataset(ct_pixels(511, 509, seed=2), 12),
    "edge512-16bit": lambda: make_ct_dataset(edge_pixels(512, 512, 16), 16),
    "edge511x509-12bit": lambda: make_ct_dataset(edge_pixels(511, 509, 12), 12),
    "signed511x509-12bit": lambda: make_ct_dataset(
        (ct_pixels(511, 509, seed=3).astype(np.int16) - 1024), 12
    ),
    "signed-edge512-16bit": lambda: make_ct_dataset(
        edge_pixels(512, 512, 16).view(np.int16), 16, lossy_flag=None
    ),
}


@pytest.fixture(scope="module", params=list(IMAGES))
def image(request: pytest.FixtureRequest) -> Dataset:
    return IMAGES[request.param]()


def test_all_syntaxes_available_here() -> None:
    assert codecs.available() == {str(uid): None for uid in ALL}
    assert all(codecs.is_available(uid) for uid in ALL)
    assert codecs.unavailable_reason(JPEGLSLossless) is None
    assert not codecs.is_available(JPEGBaseline8Bit)
    assert "not a transfer syntax" in (codecs.unavailable_reason("1.2.3") or "")


def test_resolve() -> None:
    for uid in ALL:
        assert codecs.resolve(uid.keyword) == uid
        assert codecs.resolve(str(uid)) == uid
    assert codecs.resolve(" jpeglslossless ") == JPEGLSLossless
    with pytest.raises(ValueError, match=r"JPEGLosslessSV1 \(1\.2\.840\.10008\.1\.2\.4\.70\)"):
        codecs.resolve("JPEGLossless")
    with pytest.raises(ValueError, match="ImplicitVRLittleEndian"):
        codecs.resolve(JPEGBaseline8Bit)


@pytest.mark.parametrize("ts", ALL, ids=lambda uid: uid.keyword)
def test_round_trip_with_pydicom(image: Dataset, ts: UID) -> None:
    original = bytes(image.PixelData)
    out = codecs.transcode(image, ts)

    assert image.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert image.PixelData == original  # input untouched
    assert out.file_meta.TransferSyntaxUID == ts
    assert out.SOPInstanceUID == image.SOPInstanceUID
    assert out.get("LossyImageCompression") == image.get("LossyImageCompression")
    assert out["PixelData"].is_undefined_length == ts.is_compressed
    if ts.is_compressed:
        assert out["PixelData"].VR == "OB"
    np.testing.assert_array_equal(out.pixel_array, image.pixel_array)

    back = codecs.transcode(out, ExplicitVRLittleEndian)
    assert back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert back.PixelData == original
    # and again through Part 10 bytes
    data = codecs.transcode_bytes(codecs.transcode_bytes(part10(image), ts), ExplicitVRLittleEndian)
    assert pydicom.dcmread(io.BytesIO(data)).PixelData == original


@pytest.mark.parametrize("ts", ALL, ids=lambda uid: uid.keyword)
def test_round_trip_with_independent_decoder(image: Dataset, ts: UID, tmp_path: Path) -> None:
    argv = DECODERS[ts]
    if shutil.which(argv[0]) is None:
        print(f"{argv[0]} not installed: independent check of {ts.keyword} skipped")
        pytest.skip(f"{argv[0]} not installed")
    src, dst = tmp_path / "in.dcm", tmp_path / "out.dcm"
    src.write_bytes(codecs.transcode_bytes(part10(image), ts))
    run = subprocess.run([*argv, str(src), str(dst)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    decoded = pydicom.dcmread(dst)
    assert decoded.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    np.testing.assert_array_equal(decoded.pixel_array, image.pixel_array)
    if image.PixelRepresentation == 1 and image.BitsStored < image.BitsAllocated:
        # dcmdjpls leaves the unused high bits of negative values at 0 instead of
        # sign-extending them: same stored values, different bytes
        mask = np.uint16(2**image.BitsStored - 1)
        got, want = (np.frombuffer(b, "<u2") & mask for b in (decoded.PixelData, image.PixelData))
        np.testing.assert_array_equal(got, want)
    else:
        assert decoded.PixelData == image.PixelData


@pytest.mark.parametrize("source", COMPRESSED, ids=lambda uid: uid.keyword)
def test_compressed_to_every_syntax(source: UID) -> None:
    original = make_ct_dataset(edge_pixels(67, 45, 12), 12)
    compressed = codecs.transcode(original, source)
    for ts in ALL:
        out = codecs.transcode(compressed, ts)
        assert out.file_meta.TransferSyntaxUID == ts
        assert codecs.transcode(out, ExplicitVRLittleEndian).PixelData == original.PixelData
    assert compressed.file_meta.TransferSyntaxUID == source


@pytest.mark.parametrize("ts", COMPRESSED, ids=lambda uid: uid.keyword)
def test_multi_frame(ts: UID) -> None:
    frames = np.stack([ct_pixels(64, 48, seed=s) for s in range(3)])
    ds = make_ct_dataset(frames.reshape(192, 48), 12)
    ds.Rows, ds.NumberOfFrames = 64, 3
    out = codecs.transcode(ds, ts)
    np.testing.assert_array_equal(out.pixel_array, frames)
    assert codecs.transcode(out, ExplicitVRLittleEndian).PixelData == ds.PixelData


CONCURRENT = """
from concurrent.futures import ThreadPoolExecutor
import numpy as np
from pydicom.uid import ExplicitVRLittleEndian
from agent.dicom import codecs
from tests.test_codecs import ALL, ct_pixels, make_ct_dataset

ds = make_ct_dataset(ct_pixels(256, 256), 12)

def job(i: int) -> bool:
    out = codecs.transcode(ds, ALL[i % len(ALL)])
    return codecs.transcode(out, ExplicitVRLittleEndian).PixelData == ds.PixelData

with ThreadPoolExecutor(8) as pool:
    assert all(pool.map(job, range(8 * 7 * 5)))
"""


def test_concurrent_transcodes() -> None:
    """Senders transcode from several threads; a codec that is not thread-safe crashes the
    interpreter, so this runs in a child process."""
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        [sys.executable, "-c", CONCURRENT], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-2000:]}"


def test_sv1_stream_uses_selection_value_1() -> None:
    ds = codecs.transcode(make_ct_dataset(ct_pixels(64, 64), 12), JPEGLosslessSV1)
    stream = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    sof = stream.index(b"\xff\xc3")  # SOF3: lossless, Huffman
    assert stream[sof + 9] == 1  # one component
    sos = stream.index(b"\xff\xda")
    ss, se, ah_al = stream[sos + 7], stream[sos + 8], stream[sos + 9]
    assert (ss, se, ah_al) == (1, 0, 0)  # predictor 1, no point transform


def test_lossy_or_unknown_targets_refused() -> None:
    ds = make_ct_dataset(ct_pixels(64, 64), 12)
    for lossy in (JPEGBaseline8Bit, JPEG2000, JPEGLSNearLossless):
        with pytest.raises(CodecError, match="lossy"):
            codecs.transcode(ds, lossy)
    for unsupported in ("1.2.3.4", HTJ2KLossless, JPEGLossless):
        with pytest.raises(CodecError, match="unsupported"):
            codecs.transcode(ds, unsupported)
    with pytest.raises(CodecError, match="unsupported"):
        codecs.transcode_bytes(part10(ds), "JPEGLSLossless")  # keywords go through resolve()
    with pytest.raises(CodecError, match="Part 10"):
        codecs.transcode_bytes(b"not dicom", JPEGLSLossless)
    del ds.file_meta.TransferSyntaxUID
    with pytest.raises(CodecError, match="transfer syntax is None"):
        codecs.transcode(ds, JPEGLSLossless)


def test_lossy_image_compression_never_set() -> None:
    for flag in ("00", None):
        ds = make_ct_dataset(ct_pixels(64, 64), 12, lossy_flag=flag)
        for ts in ALL:
            assert codecs.transcode(ds, ts).get("LossyImageCompression") == flag


def test_values_above_bits_stored_refused_for_compression() -> None:
    arr = ct_pixels(64, 64)
    arr[5, 5] = 5000  # a 13-bit value in a 12-bit image: every codec would drop bit 12
    ds = make_ct_dataset(arr, 12)
    for ts in COMPRESSED:
        with pytest.raises(CodecError, match=r"1 pixel values use bits above Bits Stored \(12\)"):
            codecs.transcode(ds, ts)
    for ts in (ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        data = codecs.transcode_bytes(part10(ds), ts)
        assert pydicom.dcmread(io.BytesIO(data)).PixelData == ds.PixelData

    signed = make_ct_dataset(ct_pixels(64, 64).astype(np.int16) - 1024, 12)
    raw = np.frombuffer(signed.PixelData, "<u2").copy()
    raw[0] = 0x7800  # neither 0 nor the sign extension of 0x800
    signed.PixelData = raw.tobytes()
    with pytest.raises(CodecError, match="above Bits Stored"):
        codecs.transcode(signed, JPEGLSLossless)


@pytest.mark.parametrize("ts", COMPRESSED, ids=lambda uid: uid.keyword)
def test_signed_without_sign_extension(ts: UID) -> None:
    """Negative 12-bit values with the high bits left at 0 (as dcmdjpls writes them) keep
    their stored values; the decoded bytes come back sign-extended."""
    values = ct_pixels(64, 64).astype(np.int16) - 1024
    ds = make_ct_dataset(values, 12)
    ds.PixelData = (values.view(np.uint16) & 0x0FFF).tobytes()
    np.testing.assert_array_equal(ds.pixel_array, values)
    out = codecs.transcode(codecs.transcode(ds, ts), ExplicitVRLittleEndian)
    assert out.PixelData == values.tobytes()


def test_colour_rle_and_sv1() -> None:
    """Our gdcm encoder takes single-sample 8/16-bit images only: RLE of colour goes to
    pydicom's, JPEG Lossless SV1 of colour is refused."""
    ds = make_ct_dataset(ct_pixels(32, 48), 12)
    rgb = np.stack([ct_pixels(32, 48, seed=s) % 256 for s in range(3)], axis=-1).astype(np.uint8)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = rgb.tobytes()
    out = codecs.transcode(ds, RLELossless)
    np.testing.assert_array_equal(out.pixel_array, rgb)
    with pytest.raises(CodecError, match="only produced for 8/16-bit single-sample"):
        codecs.transcode(ds, JPEGLosslessSV1)


def test_no_pixel_data_is_relabelled() -> None:
    ds = make_ct_dataset(ct_pixels(8, 8), 12)
    del ds.PixelData
    out = codecs.transcode(ds, JPEGLSLossless)
    assert out.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert "PixelData" not in out


def test_transcode_bytes() -> None:
    ds = make_ct_dataset(ct_pixels(512, 512), 12)
    ds.file_meta.ImplementationClassUID = UID("2.25.4242")
    explicit = part10(ds)
    assert codecs.transcode_bytes(explicit, ExplicitVRLittleEndian) is explicit
    from_file = pydicom.dcmread(io.BytesIO(explicit))
    jls = codecs.transcode(from_file, JPEGLSLossless)
    assert from_file.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert jls.file_meta.ImplementationClassUID == "2.25.4242"

    deflated = codecs.transcode_bytes(explicit, DeflatedExplicitVRLittleEndian)
    assert deflated[128:132] == b"DICM"
    assert len(deflated) < len(explicit) * 0.8
    implicit = codecs.transcode_bytes(deflated, ImplicitVRLittleEndian)
    read = pydicom.dcmread(io.BytesIO(implicit))
    assert read.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    assert read.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert read.PixelData == ds.PixelData
    assert codecs.transcode_bytes(implicit, ExplicitVRLittleEndian) == explicit


def test_missing_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codecs, "_probed", {})
    monkeypatch.setitem(sys.modules, "jpeg_ls", None)
    monkeypatch.setitem(sys.modules, "gdcm", None)
    reason = codecs.unavailable_reason(JPEGLSLossless)
    assert reason is not None and "pyjpegls not installed" in reason
    assert "python-gdcm not installed" in (codecs.unavailable_reason(JPEGLosslessSV1) or "")
    assert codecs.is_available(RLELossless)  # falls back to pylibjpeg-rle
    assert codecs._probed[RLELossless][0] == codecs._SYNTAXES[RLELossless][1]
    with pytest.raises(CodecError, match="pyjpegls"):
        codecs.transcode(make_ct_dataset(ct_pixels(64, 64), 12), JPEGLSLossless)
    assert codecs.is_available(ExplicitVRLittleEndian)


def test_broken_encoder_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(ds: Dataset, uid: UID, plugin: str) -> None:
        raise RuntimeError("segfault avoided")

    def corrupting(ds: Dataset, uid: UID, plugin: str) -> None:
        ds.PixelData = b"\x01\x00" + ds.PixelData[2:]

    monkeypatch.setattr(codecs, "_probed", {})
    plugins = {
        JPEGLSLossless: (codecs._Plugin("pyjpegls", (), "pyjpegls", broken),),
        ImplicitVRLittleEndian: (codecs._Plugin("pydicom", (), "fakepkg", corrupting),),
    }
    monkeypatch.setattr(codecs, "_SYNTAXES", {**codecs._SYNTAXES, **plugins})
    reasons = codecs.available()
    assert "pyjpegls failed on a test image: segfault avoided" in (reasons[JPEGLSLossless] or "")
    assert "fakepkg changed a test image" in (reasons[ImplicitVRLittleEndian] or "")
    assert reasons[RLELossless] is None


def test_report_speed() -> None:
    """Run with -s: encode time and compression ratio per syntax on a 512x512 CT slice."""
    ds = make_ct_dataset(ct_pixels(512, 512), 12)
    explicit = part10(ds)
    print(f"\n{'transfer syntax':32} {'encode ms':>9} {'decode ms':>9} {'bytes':>8} {'ratio':>6}")
    for ts in ALL:
        enc, dec = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            data = codecs.transcode_bytes(explicit, ts)
            t1 = time.perf_counter()
            codecs.transcode_bytes(data, ExplicitVRLittleEndian)
            enc.append(t1 - t0)
            dec.append(time.perf_counter() - t1)
        ratio = len(explicit) / len(data)
        ms = f"{min(enc) * 1e3:9.1f} {min(dec) * 1e3:9.1f}"
        print(f"{ts.keyword:32} {ms} {len(data):8} {ratio:6.2f}")
    print("RLE plugins (pydicom.pixels.compress, Pixel Data only):")
    for plugin in ("gdcm", "pylibjpeg", "pydicom"):
        times = []
        for _ in range(5):
            copy = make_ct_dataset(ct_pixels(512, 512), 12)
            t0 = time.perf_counter()
            compress(copy, RLELossless, encoding_plugin=plugin, generate_instance_uid=False)
            times.append(time.perf_counter() - t0)
        print(f"  {plugin:10} {min(times) * 1e3:7.1f} ms {len(copy.PixelData):8} bytes")
