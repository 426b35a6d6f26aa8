"""Lossless transcoding between the transfer syntaxes the agent sends (SPEC §6).

Each supported transfer syntax has one or more encoder plugins, in order of preference. A
plugin is probed once, lazily, by really encoding and decoding a tiny image; the first that
round-trips exactly is used, and when none does, `unavailable_reason` says in plain words
which package is missing or broken. Decoding a compressed source goes through pydicom's
decoders (every installed plugin is tried).

Only lossless targets exist here: there is no way to ask for a lossy one, and Lossy Image
Compression (0028,2110) is never touched.
"""

from __future__ import annotations

import copy
import ctypes
import importlib
import io
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.errors import InvalidDicomError
from pydicom.pixels import compress, get_decoder
from pydicom.uid import (
    RE_VALID_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pydicom.valuerep import VR

from agent.dicom import encapsulated

__all__ = [
    "CodecError",
    "available",
    "is_available",
    "resolve",
    "transcode",
    "transcode_bytes",
    "unavailable_reason",
]


class CodecError(Exception):
    """A transcoding that cannot be done losslessly: unknown, unavailable or lossy target,
    unreadable source, or pixel values that the target would not keep."""


@dataclass(frozen=True)
class _Plugin:
    name: str  # pydicom's encoding_plugin name, or ours
    modules: tuple[str, ...]  # import names that must load
    packages: str  # the same in pip words, for messages
    encode: Callable[[Dataset, UID, str], None]


def _relabel(ds: Dataset, uid: UID, plugin: str) -> None:
    """Native targets: the Pixel Data stays as it is, only the encoding of the file changes
    (and Deflate happens when the dataset is written)."""


def _pydicom_compress(ds: Dataset, uid: UID, plugin: str) -> None:
    compress(ds, uid, encoding_plugin=plugin, generate_instance_uid=False)


# pylibjpeg-openjpeg 2.6 crashes the process (SIGSEGV) when two threads encode at once: its C
# encoder writes through a Python BytesIO, so the GIL can switch mid-encode. Decoding is fine.
_openjpeg_lock = threading.Lock()


def _openjpeg_compress(ds: Dataset, uid: UID, plugin: str) -> None:
    with _openjpeg_lock:
        _pydicom_compress(ds, uid, plugin)


_SHAPE = ("Rows", "Columns", "BitsAllocated", "BitsStored")


def _gdcm_encode(ds: Dataset, uid: UID, plugin: str) -> None:
    """RLE Lossless or JPEG Lossless SV1 of single-sample 8/16-bit images with python-gdcm, in
    memory: pydicom has no SV1 encoder, and its gdcm RLE encoder copies the result through a
    Python str (~1.5 ms of ~4 for a 512x512 slice). Other RLE images go to pydicom's."""
    import gdcm

    if ds.SamplesPerPixel != 1 or ds.BitsAllocated not in (8, 16):
        if uid == RLELossless:
            return _pydicom_compress(ds, uid, plugin)
        raise CodecError("JPEG Lossless SV1 is only produced for 8/16-bit single-sample images")
    rows, cols, allocated, stored = (int(ds[k].value) for k in _SHAPE)
    frame_len = rows * cols * allocated // 8
    # Like dcmcjpeg, gdcm writes a 16-bit SOF precision for 12-bit Bits Stored data
    pixel_format = gdcm.PixelFormat(1, allocated, stored, stored - 1, int(ds.PixelRepresentation))
    pi = gdcm.PhotometricInterpretation.GetPIType(str(ds.PhotometricInterpretation))
    target = gdcm.TransferSyntax.GetTSType(str(uid))
    data: bytes = ds.PixelData
    frames = []
    for i in range(int(ds.get("NumberOfFrames", 1) or 1)):
        writer = gdcm.ImageWriter()  # keeps the gdcm.Image alive while we use it
        image = writer.GetImage()
        image.SetNumberOfDimensions(2)
        image.SetDimensions((cols, rows, 1))
        image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(pi))
        image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.ExplicitVRLittleEndian))
        image.SetPixelFormat(pixel_format)
        elem = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
        elem.SetByteStringValue(data[i * frame_len : (i + 1) * frame_len])
        image.SetDataElement(elem)
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(target))
        change.SetInput(image)
        if not change.Change():
            raise CodecError(f"python-gdcm refused to encode {uid.name}")
        fragments = change.GetOutput().GetDataElement().GetSequenceOfFragments()
        if fragments is None or fragments.GetNumberOfFragments() != 1:
            raise CodecError(f"python-gdcm returned an unexpected {uid.name} stream")
        value = fragments.GetFragment(0).GetByteValue()
        # the bytes where gdcm holds them (alive with `fragments`): GetBuffer() would return
        # them as a str, decoded and encoded again (surrogateescape), 15x slower
        length = int(str(value.GetLength()))  # a gdcm.VL, which has no __int__
        frames.append(ctypes.string_at(int(value.GetVoidPointer()), length))
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = VR.OB
    ds["PixelData"].is_undefined_length = True


_NATIVE = (_Plugin("pydicom", (), "pydicom", _relabel),)
_GDCM = ("gdcm", ("gdcm",), "python-gdcm")
# RLE: on a 512x512 12-bit CT slice (tests/test_codecs.py::test_report_speed) gdcm takes
# ~2.5-3 ms through pydicom (~1.3 ms through _gdcm_encode), pylibjpeg-rle ~7-12 ms, pydicom's
# numpy encoder ~90-120 ms, and gdcm's output is ~2% smaller: gdcm first, the others as
# fallbacks when python-gdcm is missing.
_SYNTAXES: dict[UID, tuple[_Plugin, ...]] = {
    JPEGLSLossless: (_Plugin("pyjpegls", ("jpeg_ls",), "pyjpegls", _pydicom_compress),),
    JPEG2000Lossless: (
        _Plugin("pylibjpeg", ("pylibjpeg", "openjpeg"), "pylibjpeg-openjpeg", _openjpeg_compress),
    ),
    RLELossless: (
        _Plugin(*_GDCM, _gdcm_encode),
        _Plugin("pylibjpeg", ("pylibjpeg", "rle"), "pylibjpeg-rle", _pydicom_compress),
        _Plugin("pydicom", ("numpy",), "numpy", _pydicom_compress),
    ),
    JPEGLosslessSV1: (_Plugin(*_GDCM, _gdcm_encode),),
    DeflatedExplicitVRLittleEndian: _NATIVE,
    ExplicitVRLittleEndian: _NATIVE,
    ImplicitVRLittleEndian: _NATIVE,
}
_lock = threading.Lock()
_probed: dict[UID, tuple[_Plugin | None, str | None]] = {}


def resolve(name_or_uid: str) -> str:
    """The UID for a supported transfer syntax given as a pydicom keyword
    (e.g. "JPEGLSLossless") or as a UID; ValueError listing the valid names otherwise."""
    text = name_or_uid.strip()
    for uid in _SYNTAXES:
        if text in (uid, uid.keyword) or text.lower() == uid.keyword.lower():
            return str(uid)
    valid = ", ".join(f"{uid.keyword} ({uid})" for uid in _SYNTAXES)
    raise ValueError(f"unknown or unsupported transfer syntax {name_or_uid!r}; valid: {valid}")


def available() -> dict[str, str | None]:
    """Every supported transfer syntax UID -> None if usable, else why not (in plain words)."""
    return {str(uid): _probe(uid)[1] for uid in _SYNTAXES}


def is_available(ts_uid: str) -> bool:
    return ts_uid in _SYNTAXES and _probe(UID(ts_uid))[1] is None


def unavailable_reason(ts_uid: str) -> str | None:
    if ts_uid not in _SYNTAXES:
        return f"{ts_uid} is not a transfer syntax the agent can produce"
    return _probe(UID(ts_uid))[1]


def transcode(ds: Dataset, ts_uid: str) -> Dataset:
    """A new dataset in `ts_uid` with the same pixel values; `ds` is left untouched."""
    target = _target(ts_uid)
    out = copy.deepcopy(ds)
    _transcode_in_place(out, target)
    return out


def transcode_bytes(data: bytes, ts_uid: str) -> bytes:
    """Part 10 in, Part 10 out; the input itself when it is already in `ts_uid`."""
    target = _target(ts_uid)
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as exc:
        raise CodecError(f"not a DICOM Part 10 file: {exc}") from exc
    if ds.file_meta.get("TransferSyntaxUID") == target:
        return data
    # Every compressed target here is lossless (nothing to set in the data set), so only the
    # Pixel Data changes: splice it into the source's bytes rather than encode them all again.
    span = encapsulated.find(data, ds) if target.is_compressed else None
    _transcode_in_place(ds, target)
    if span is not None and (spliced := encapsulated.splice(data, ds, span)) is not None:
        return spliced
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _target(ts_uid: str) -> UID:
    if not RE_VALID_UID.match(ts_uid.strip()):  # UID() would warn about it
        raise CodecError(f"unknown or unsupported transfer syntax {ts_uid!r}")
    uid = UID(ts_uid.strip())
    if uid not in _SYNTAXES:
        lossless = "Lossless" in uid.keyword and "Near" not in uid.keyword
        if uid.is_transfer_syntax and uid.is_compressed and not lossless:
            raise CodecError(f"{uid.name} ({uid}) is lossy; the agent only transcodes losslessly")
        raise CodecError(f"unknown or unsupported transfer syntax {ts_uid!r}")
    reason = _probe(uid)[1]
    if reason is not None:
        raise CodecError(reason)
    return uid


def _transcode_in_place(ds: Dataset, target: UID) -> None:
    meta = ds.get("file_meta")
    source = meta.get("TransferSyntaxUID") if meta is not None else None
    if source is None or UID(source) not in _SYNTAXES:
        raise CodecError(f"cannot read a dataset whose transfer syntax is {source!r}")
    source = UID(source)
    if source == target:
        return
    if "PixelData" in ds and source.is_compressed:
        _decompress(ds, source)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if "PixelData" in ds and target.is_compressed:
        _check_fits_bits_stored(ds, target)
        plugin = _probe(target)[0]
        assert plugin is not None  # _target() refused unavailable syntaxes
        plugin.encode(ds, target, plugin.name)
    ds.file_meta.TransferSyntaxUID = target


def _decompress(ds: Dataset, source: UID) -> None:
    """Replace encapsulated Pixel Data with native little-endian pixels.

    Decoder.as_array is used rather than pydicom.pixels.decompress, whose iter_array path
    fails ("output array is read-only") on signed JPEG-LS with Bits Stored < Bits Allocated
    in pydicom 3.0.2."""
    try:
        arr, info = get_decoder(source).as_array(ds)
    except Exception as exc:  # pydicom's message names any missing decoder package
        raise CodecError(f"cannot decode {source.name}: {exc}") from exc
    data = arr.tobytes()
    expected = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated)
    expected = expected * int(ds.get("NumberOfFrames", 1) or 1) // 8
    if len(data) != expected:
        raise CodecError(f"decoded {len(data)} bytes of {source.name}, expected {expected}")
    ds.PixelData = data + b"\0" * (len(data) % 2)
    ds["PixelData"].VR = VR.OB if ds.BitsAllocated <= 8 else VR.OW
    ds["PixelData"].is_undefined_length = False
    ds.PhotometricInterpretation = info["photometric_interpretation"]
    if int(ds.SamplesPerPixel) > 1:
        ds.PlanarConfiguration = info["planar_configuration"]
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            delattr(ds, keyword)


def _check_fits_bits_stored(ds: Dataset, target: UID) -> None:
    """Every encoder (or pydicom's decoder) keeps only the Bits Stored low bits. Unused high
    bits that are neither 0 nor the sign extension hold data that would silently be lost
    (viewers that do not mask would show a different value): refuse instead."""
    allocated, stored = int(ds.BitsAllocated), int(ds.BitsStored)
    if stored >= allocated or allocated not in (8, 16, 32):
        return
    raw = np.frombuffer(ds.PixelData, dtype=f"<u{allocated // 8}")
    high = raw >> stored
    kept = high == 0
    if int(ds.PixelRepresentation) == 1:
        kept |= (high == (1 << (allocated - stored)) - 1) & ((raw >> (stored - 1)) & 1 == 1)
    if not kept.all():
        bad = raw[~kept]
        raise CodecError(
            f"{bad.size} pixel values use bits above Bits Stored ({stored}), e.g. {bad[0]:#x}, "
            f"and would be changed by {target.name}; send this instance uncompressed"
        )


def _probe(uid: UID) -> tuple[_Plugin | None, str | None]:
    """(the plugin to use, None) or (None, why none works); computed once per syntax."""
    with _lock:
        if uid not in _probed:
            _probed[uid] = _probe_plugins(uid)
        return _probed[uid]


def _probe_plugins(uid: UID) -> tuple[_Plugin | None, str | None]:
    problems = []
    for plugin in _SYNTAXES[uid]:
        try:
            for module in plugin.modules:
                importlib.import_module(module)
        except Exception as exc:
            problems.append(f"{plugin.packages} not installed or broken ({exc})")
            continue
        try:
            ds = _probe_dataset()
            expected = ds.PixelData
            plugin.encode(ds, uid, plugin.name)
            ds.file_meta.TransferSyntaxUID = uid
            if uid.is_compressed:
                _decompress(ds, uid)
            if ds.PixelData != expected:
                problems.append(f"{plugin.packages} changed a test image (broken build?)")
                continue
        except Exception as exc:
            message = " ".join(str(exc).split())
            problems.append(f"{plugin.packages} failed on a test image: {message}")
            continue
        return plugin, None
    return None, f"{uid.name} unavailable: " + "; ".join(problems)


def _probe_dataset() -> Dataset:
    """A 64x64 16-bit image using the whole value range (openjpeg's default of 6 resolution
    levels refuses images smaller than 32x32)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = (np.arange(4096, dtype="<u2") * 16 + 15).tobytes()
    return ds
