"""Part 10 files that differ from one instance to the next in a few elements only (pure, no I/O).

A `FileTemplate` is made from one file that `files.encode` wrote (so pydicom encoded it, with
validation) and the tags that change per instance. It keeps the bytes pydicom wrote for every
other element, in runs between the changing ones; `fill` encodes just the changing elements
and splices them in, in tag order. The result is byte for byte what pydicom writes for the same
data set (tests/test_template.py proves it), at a fraction of the cost.

Only native little endian transfer syntaxes (Explicit and Implicit VR Little Endian) and
changing elements whose VR needs no character set (numbers, dates, times, UIDs, codes, and
binary OB/OW) are supported; `TemplateUnsupported` says why a file is not.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Mapping, Sequence
from typing import TypeAlias

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

__all__ = ["FileTemplate", "TemplateUnsupported", "Value"]

# A changing element's value: text (one value, or several joined by backslashes), or bytes.
Value: TypeAlias = str | Sequence[str] | bytes | memoryview

PREAMBLE = 128
META_GROUP_LENGTH = 0x00020000
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"})  # ASCII only
_BINARY_VRS = frozenset({"OB", "OW"})
_SUPPORTED = {ExplicitVRLittleEndian: False, ImplicitVRLittleEndian: True}  # -> implicit VR
_LONG = frozenset(str(vr) for vr in EXPLICIT_VR_LENGTH_32)
_UNDEFINED = 0xFFFFFFFF


class TemplateUnsupported(ValueError):
    """The file cannot be a template (its transfer syntax, a VR, an undefined length)."""


def _elements(data: bytes, start: int, implicit: bool, *, meta: bool) -> list[tuple[int, int, int]]:
    """(tag, start, end) of each top-level element from `start`: of group 0002 only when
    `meta` (then stopping at the first other group), else to the end of `data`."""
    out = []
    pos, end = start, len(data)
    while pos < end:
        group, element = struct.unpack_from("<HH", data, pos)
        if meta and group != 0x0002:
            break
        tag = group << 16 | element
        if implicit:
            (length,) = struct.unpack_from("<I", data, pos + 4)
            header = 8
        else:
            vr = data[pos + 4 : pos + 6].decode("ascii")
            if vr in _LONG:
                (length,) = struct.unpack_from("<I", data, pos + 8)
                header = 12
            else:
                (length,) = struct.unpack_from("<H", data, pos + 6)
                header = 8
        if length == _UNDEFINED:
            raise TemplateUnsupported(f"element {tag:08X} has an undefined length")
        out.append((tag, pos, pos + header + length))
        pos += header + length
    if pos > end:
        raise TemplateUnsupported("the file ends inside an element")
    return out


class _Layout:
    """A run of elements: constant bytes between the slots of the changing tags."""

    def __init__(
        self,
        data: bytes,
        elements: list[tuple[int, int, int]],
        varying: Collection[int],
        vrs: Mapping[int, str],
        implicit: bool,
    ) -> None:
        self.implicit = implicit
        self.chunks: list[bytes] = []
        self.slots: list[tuple[int, str]] = []  # (tag, VR), in tag order
        run_start = elements[0][1] if elements else 0
        for tag, start, end in elements:
            if tag in varying:
                vr = vrs[tag]
                if vr not in _TEXT_VRS and vr not in _BINARY_VRS:
                    raise TemplateUnsupported(f"element {tag:08X}: VR {vr} cannot change here")
                self.chunks.append(data[run_start:start])
                self.slots.append((tag, vr))
                run_start = end
        self.chunks.append(data[run_start : elements[-1][2]] if elements else b"")
        self.tags = frozenset(tag for tag, _ in self.slots)

    def parts(self, values: Mapping[int, Value]) -> list[bytes | memoryview]:
        out: list[bytes | memoryview] = [self.chunks[0]]
        for (tag, vr), chunk in zip(self.slots, self.chunks[1:], strict=True):
            out.extend(_element(tag, vr, values[tag], self.implicit))
            out.append(chunk)
        return out


def _element(tag: int, vr: str, value: Value, implicit: bool) -> list[bytes | memoryview]:
    """One element as pydicom's `write_data_element` encodes it (header, value, padding)."""
    if vr in _BINARY_VRS:
        if not isinstance(value, bytes | memoryview):
            raise TypeError(f"element {tag:08X} ({vr}) needs bytes")
        body: bytes | memoryview = value
        pad = b"\x00" if memoryview(value).nbytes % 2 else b""
    else:
        if isinstance(value, bytes | memoryview):
            raise TypeError(f"element {tag:08X} ({vr}) needs text")
        text = value if isinstance(value, str) else "\\".join(value)
        if len(text) % 2:
            text += "\x00" if vr == "UI" else " "
        body, pad = text.encode("ascii"), b""  # the VRs allowed here are ASCII only
    length = memoryview(body).nbytes + len(pad)
    if implicit:
        header = struct.pack("<HHI", tag >> 16, tag & 0xFFFF, length)
    elif vr in _LONG:
        header = struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, length)
    elif length > 0xFFFF:
        raise ValueError(f"element {tag:08X} ({vr}) is too long for its VR")  # pydicom: UN
    else:
        header = struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length)
    return [header, body, pad] if pad else [header, body]


class FileTemplate:
    """The file `data` (what `files.encode(ds)` returned for `ds`) with the elements whose tags
    are in `varying` left open; tags of `varying` not in `ds` or its meta are ignored. The File
    Meta Information Group Length is recomputed for each file; (0002,0003) Media Storage SOP
    Instance UID may be among `varying`."""

    def __init__(self, ds: Dataset, data: bytes, varying: Collection[int]) -> None:
        meta = ds.file_meta
        syntax = meta.TransferSyntaxUID
        if syntax not in _SUPPORTED:
            raise TemplateUnsupported(f"transfer syntax {syntax} is not supported")
        if data[PREAMBLE : PREAMBLE + 4] != b"DICM":
            raise TemplateUnsupported("not a Part 10 file with a preamble")
        self.transfer_syntax_uid = str(syntax)
        meta_elements = _elements(data, PREAMBLE + 4, False, meta=True)
        if not meta_elements or meta_elements[0][0] != META_GROUP_LENGTH:
            raise TemplateUnsupported("the meta does not start with its group length")
        # the preamble, DICM and the group length element but for its value
        self._head = data[: meta_elements[0][2] - 4]
        meta_end = meta_elements[-1][2]
        vrs: dict[int, str] = {int(e.tag): e.VR for e in meta} | {int(e.tag): e.VR for e in ds}
        self._meta = _Layout(data, meta_elements[1:], varying, vrs, False)
        implicit = _SUPPORTED[syntax]
        body = _elements(data, meta_end, implicit, meta=False)
        self._body = _Layout(data, body, varying, vrs, implicit)
        self.tags = self._meta.tags | self._body.tags

    def fill(self, values: Mapping[int, Value]) -> bytes:
        """The file with `values` (one for each tag of `self.tags`, no other) in the open
        elements. Values are not validated here: the caller checks them against their VR."""
        return b"".join(self.parts(values))

    def parts(self, values: Mapping[int, Value]) -> list[bytes | memoryview]:
        """`fill`'s file as the pieces it is joined from, binary values (the pixels) as given,
        not copied: for a writer that writes the pieces as they are (os.writev)."""
        if values.keys() != self.tags:
            raise ValueError(
                "values needed for exactly the changing tags; "
                f"missing {sorted(self.tags - values.keys())}, "
                f"extra {sorted(values.keys() - self.tags)}"
            )
        meta = self._meta.parts(values)
        length = sum(memoryview(p).nbytes for p in meta)
        return [self._head, struct.pack("<I", length), *meta, *self._body.parts(values)]
