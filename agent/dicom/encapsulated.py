"""Encapsulated Part 10 files spliced from a native Explicit VR Little Endian one (pure, no I/O).

The encapsulated transfer syntaxes encode a data set exactly as Explicit VR Little Endian does,
but for Pixel Data (PS3.5 §A.4). So a transcoded file is: the new File Meta Information, the
source's data set bytes before Pixel Data as they are, and the encapsulated Pixel Data element
(OB, undefined length, its items, a Sequence Delimitation Item). Nothing else is encoded again,
which is where pydicom's `dcmwrite` spends its time; the bytes are the ones `dcmwrite` writes
(tests/test_codecs_splice.py proves it).

`find` returns None for any source it cannot splice safely (another transfer syntax, no preamble,
group lengths in the data set, an element after Pixel Data, File Meta Information that
`dcmwrite` would change, ...): the caller then writes the whole data set instead.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from agent.dicom.template import PREAMBLE, TemplateUnsupported, _element, _elements

__all__ = ["Span", "find", "splice"]

PIXEL_DATA = 0x7FE00010
TRANSFER_SYNTAX_UID = 0x00020010
# dcmwrite(enforce_file_format=True) would add or fill these, or (0002,0013) when absent
_META_VALUED = (0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012)
_SEQUENCE_DELIMITER = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
_ENCAPSULATED_HEADER = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF)
_EXPLICIT_LONG_HEADER = 12  # tag, VR, 2 reserved bytes, 32-bit length (OB, OW)


@dataclass(frozen=True)
class Span:
    """The source's File Meta Information elements but its group length ((tag, start, end) in
    the file), where its data set starts and where its Pixel Data element's header starts;
    `tags` are the top-level tags of its data set."""

    meta: tuple[tuple[int, int, int], ...]
    body_start: int
    pixel_start: int
    tags: frozenset[int]


def find(data: bytes, ds: Dataset) -> Span | None:
    """`data` cut for `splice`, or None. `ds` is `data` as `dcmread` returned it, Pixel Data not
    yet accessed (its raw element knows where its value is in `data`)."""
    meta = ds.file_meta
    if meta.get("TransferSyntaxUID") != ExplicitVRLittleEndian:
        return None
    if data[PREAMBLE : PREAMBLE + 4] != b"DICM":
        return None
    # dcmwrite would take these from the data set instead
    for meta_uid, ds_uid in (
        ("MediaStorageSOPClassUID", "SOPClassUID"),
        ("MediaStorageSOPInstanceUID", "SOPInstanceUID"),
    ):
        if meta.get(meta_uid) != ds.get(ds_uid, meta.get(meta_uid)):
            return None
    tags = frozenset[int](ds.keys())
    if any(tag & 0xFFFF == 0 for tag in tags):  # group lengths: (7FE0,0000) would be wrong
        return None
    raw = ds.get_item(PIXEL_DATA)
    if not isinstance(raw, RawDataElement) or raw.VR not in ("OB", "OW"):
        return None
    try:
        elements = _elements(data, PREAMBLE + 4, False, meta=True)
    except (TemplateUnsupported, UnicodeDecodeError, struct.error):
        return None
    if (
        [tag for tag, _, _ in elements] != sorted(meta.keys())
        or elements[0][0] != 0x00020000
        or 0x00020013 not in meta
        or any(tag not in meta or meta[tag].is_empty for tag in _META_VALUED)
    ):
        return None
    pixel_start = raw.value_tell - _EXPLICIT_LONG_HEADER
    header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, raw.VR.encode(), 0, raw.length)
    body_start = elements[-1][2]
    if (
        pixel_start < body_start
        or data[pixel_start : raw.value_tell] != header
        or raw.value_tell + raw.length != len(data)  # nothing after Pixel Data
    ):
        return None
    return Span(tuple(elements[1:]), body_start, pixel_start, tags)


def splice(data: bytes, ds: Dataset, span: Span) -> bytes | None:
    """The Part 10 file of `ds`: the data set of `data` (`find` gave `span`) with its Pixel
    Data encapsulated since and its file meta's Transfer Syntax UID changed, nothing else
    (not checked but for the set of tags: the caller changes nothing else). None when the Pixel
    Data is not encapsulated or the data set has other elements now."""
    elem = ds["PixelData"]
    if ds.keys() != span.tags or elem.VR != "OB" or not elem.is_undefined_length:
        return None
    syntax = str(ds.file_meta.TransferSyntaxUID)
    view = memoryview(data)
    meta: list[bytes | memoryview] = []
    for tag, start, end in span.meta:
        if tag == TRANSFER_SYNTAX_UID:
            meta.extend(_element(tag, "UI", syntax, False))
        else:
            meta.append(view[start:end])
    length = sum(memoryview(part).nbytes for part in meta)
    value: bytes = elem.value
    return b"".join(
        (
            view[: PREAMBLE + 4],
            struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, length),
            *meta,
            view[span.body_start : span.pixel_start],
            _ENCAPSULATED_HEADER,
            value,
            b"\0" * (len(value) % 2),
            _SEQUENCE_DELIMITER,
        )
    )
