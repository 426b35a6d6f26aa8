"""Field encodings of the serial-shm payloads (PROTOCOL.md §5): little-endian fixed-size values,
u8-length-prefixed UTF-8 strings, presence-byte optionals and u8-count-prefixed record lists.

Each `Field` encodes a Python value into a bytearray and decodes one from a buffer at an
offset. Encoding a value out of range raises `EncodeError`; decoding a malformed buffer raises
`PayloadError`, which the frame decoder turns into a `FrameError` record (it never escapes).
"""

from __future__ import annotations

import enum
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import fields as dc_fields
from datetime import UTC, datetime, timedelta, timezone
from typing import Any


class ProtocolError(Exception):
    """Base of the codec's own exceptions."""


class EncodeError(ProtocolError, ValueError):
    """A message cannot be encoded: a value is out of range for its field, or too long."""


class PayloadError(ProtocolError):
    """A payload does not decode (internal: reported as `FrameError(BAD_PAYLOAD)`)."""


class Field:
    """One wire field. Subclasses set `size` when fixed-size (None: variable)."""

    name = "field"

    def encode(self, value: Any, out: bytearray) -> None:
        raise NotImplementedError

    def decode(self, buf: bytes, pos: int) -> tuple[Any, int]:
        raise NotImplementedError


def _take(buf: bytes, pos: int, n: int) -> int:
    end = pos + n
    if end > len(buf):
        raise PayloadError(f"truncated: need {n} bytes at offset {pos}, have {len(buf) - pos}")
    return end


class _Int(Field):
    def __init__(self, fmt: str, name: str, lo: int, hi: int) -> None:
        self._s = struct.Struct("<" + fmt)
        self.name, self.lo, self.hi = name, lo, hi

    def encode(self, value: Any, out: bytearray) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not self.lo <= value <= self.hi:
            raise EncodeError(f"{self.name} out of range [{self.lo}, {self.hi}]: {value!r}")
        out += self._s.pack(value)

    def decode(self, buf: bytes, pos: int) -> tuple[Any, int]:
        end = _take(buf, pos, self._s.size)
        value = self._s.unpack_from(buf, pos)[0]
        if not self.lo <= value <= self.hi:
            raise PayloadError(f"{self.name} out of range [{self.lo}, {self.hi}]: {value}")
        return value, end


U8 = _Int("B", "u8", 0, 0xFF)
U16 = _Int("H", "u16", 0, 0xFFFF)
U32 = _Int("I", "u32", 0, 0xFFFF_FFFF)
U64 = _Int("Q", "u64", 0, 0xFFFF_FFFF_FFFF_FFFF)
_F64 = struct.Struct("<d")


class _F64Field(Field):
    """A finite binary64; with `lo` set, at least `lo` (or greater than `lo` if `open_lo`);
    with `hi` set, at most `hi`."""

    def __init__(
        self, lo: float | None = None, hi: float | None = None, open_lo: bool = False
    ) -> None:
        self.lo, self.hi, self.open_lo = lo, hi, open_lo
        self.name = "f64" if lo is None and hi is None else f"f64 {self.range_text()}"

    def range_text(self) -> str:
        if self.lo is None and self.hi is None:
            return "finite"
        lo = "" if self.lo is None else (f"> {self.lo:g}" if self.open_lo else f">= {self.lo:g}")
        hi = "" if self.hi is None else f"<= {self.hi:g}"
        return " and ".join(t for t in (lo, hi) if t)

    def problem(self, v: float) -> str | None:
        if not math.isfinite(v):
            return f"non-finite f64 {v!r}"
        if self.lo is not None and (v <= self.lo if self.open_lo else v < self.lo):
            return f"{v!r} out of range ({self.range_text()})"
        if self.hi is not None and v > self.hi:
            return f"{v!r} out of range ({self.range_text()})"
        return None

    def encode(self, value: Any, out: bytearray) -> None:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number:
            raise EncodeError(f"f64 must be a finite number: {value!r}")
        try:
            v = float(value)
        except OverflowError:
            raise EncodeError(f"f64 out of range: {value!r}") from None
        problem = self.problem(v)
        if problem:
            raise EncodeError(problem)
        out += _F64.pack(v)

    def decode(self, buf: bytes, pos: int) -> tuple[Any, int]:
        end = _take(buf, pos, 8)
        (v,) = _F64.unpack_from(buf, pos)
        problem = self.problem(v)
        if problem:
            raise PayloadError(f"{problem} at offset {pos}")
        return v, end


F64 = _F64Field()
F64_NONNEG = _F64Field(lo=0.0)  # physical magnitudes: >= 0
F64_POS = _F64Field(lo=0.0, open_lo=True)  # geometry that must be > 0
F64_COSINE = _F64Field(lo=-1.0, hi=1.0)  # direction cosines


class _Bool(Field):
    name = "bool"

    def encode(self, value: Any, out: bytearray) -> None:
        if not isinstance(value, bool):
            raise EncodeError(f"bool expected: {value!r}")
        out.append(1 if value else 0)

    def decode(self, buf: bytes, pos: int) -> tuple[Any, int]:
        end = _take(buf, pos, 1)
        b = buf[pos]
        if b > 1:
            raise PayloadError(f"bool must be 0 or 1, got {b} at offset {pos}")
        return b == 1, end


BOOL = _Bool()


class Str(Field):
    """u8 byte length, then that many bytes of UTF-8 (no terminator).

    `max_bytes` (<= 255) bounds the UTF-8 length; `pattern`, when given, must match the whole
    string (a regular expression over the decoded text). Both apply to encoding and decoding
    alike, so that whatever decodes also encodes."""

    def __init__(self, max_bytes: int = 255, pattern: str | None = None, name: str = "str"):
        self.max_bytes, self.pattern = max_bytes, pattern
        self._re = re.compile(pattern) if pattern is not None else None
        self.name = name

    def problem(self, text: str, size: int) -> str | None:
        if size > self.max_bytes:
            return f"{self.name} longer than {self.max_bytes} bytes of UTF-8 ({size})"
        if self._re is not None and not self._re.fullmatch(text):
            return f"{self.name} {text!r} does not match {self.pattern}"
        return None

    def encode(self, value: Any, out: bytearray) -> None:
        if not isinstance(value, str):
            raise EncodeError(f"str expected: {value!r}")
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError as e:  # lone surrogates
            raise EncodeError(f"string is not encodable as UTF-8: {e}") from None
        problem = self.problem(value, len(data))
        if problem:
            raise EncodeError(problem)
        out.append(len(data))
        out += data

    def decode(self, buf: bytes, pos: int) -> tuple[Any, int]:
        n_end = _take(buf, pos, 1)
        end = _take(buf, n_end, buf[pos])
        try:
            text = bytes(buf[n_end:end]).decode("utf-8")
        except UnicodeDecodeError:
            raise PayloadError(f"invalid UTF-8 in string at offset {pos}") from None
        problem = self.problem(text, end - n_end)
        if problem:
            raise PayloadError(f"{problem} at offset {pos}")
        return text, end


STR = Str()  # free text, <= 255 bytes
# free text that a DICOM LO holds: at most 64 bytes, no control character, no backslash
TEXT64 = Str(64, r"[^\x00-\x1f\x7f\\]*", name="LO text")
# DICOM CS: upper-case letters, digits, space and underscore, at most 16 characters
CS16 = Str(16, r"[A-Z0-9 _]*", name="CS")
# printable ASCII without backslash (the DICOM multi-value separator), at most 16 characters
SH16 = Str(16, r"[\x20-\x5b\x5d-\x7e]*", name="SH")
# the device's id of a series: 1 to 64 of [A-Za-z0-9._-]
SERIES_KEY = Str(64, r"[A-Za-z0-9._-]{1,64}", name="series_key")
# a DICOM UID: digits and dots, no empty component, no leading zero in a component
UID = Str(64, r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+", name="UID")
UID_OR_EMPTY = Str(64, r"((0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+)?", name="UID or empty")
# the exam token, opaque to the device: 0 to 64 of [A-Za-z0-9._-] ("" = no exam)
TOKEN = Str(64, r"[A-Za-z0-9._-]{0,64}", name="token")


class Opt(Field):
    """u8 presence (0 absent, 1 present), then the value when present."""

    def __init__(self, inner: Field) -> None:
        self.inner = inner
        self.name = f"opt {inner.name}"

    def encode(self, value: Any, out: bytearray) -> None:
        if value is None:
            out.append(0)
        else:
            out.append(1)
            self.inner.encode(value, out)

    def decode(self, buf: bytes, pos: int) -> tuple[Any, int]:
        present, pos = BOOL.decode(buf, pos)
        return self.inner.decode(buf, pos) if present else (None, pos)


class Array(Field):
    """`n` values of one fixed-size field, as a tuple (vectors, orientation)."""

    def __init__(self, inner: Field, n: int) -> None:
        self.inner, self.n = inner, n
        self.name = f"{n} x {inner.name}"

    def encode(self, value: Any, out: bytearray) -> None:
        if not isinstance(value, tuple | list) or len(value) != self.n:
            raise EncodeError(f"{self.name} expected: {value!r}")
        for v in value:
            self.inner.encode(v, out)

    def decode(self, buf: bytes, pos: int) -> tuple[Any, int]:
        values = []
        for _ in range(self.n):
            v, pos = self.inner.decode(buf, pos)
            values.append(v)
        return tuple(values), pos


class Enum8(Field):
    """A u8 holding the value of an IntEnum; unknown values do not decode."""

    def __init__(self, cls: type[enum.IntEnum], exclude: frozenset[int] = frozenset()) -> None:
        self.cls, self.exclude = cls, exclude
        self.name = cls.__name__
        self.values = tuple(v for v in cls if v not in exclude)

    def encode(self, value: Any, out: bytearray) -> None:
        if not isinstance(value, self.cls) or value in self.exclude:
            raise EncodeError(f"{self.cls.__name__} expected (not {set(self.exclude)}): {value!r}")
        out.append(int(value))

    def decode(self, buf: bytes, pos: int) -> tuple[Any, int]:
        end = _take(buf, pos, 1)
        if buf[pos] in self.exclude:
            raise PayloadError(f"{buf[pos]} is not a {self.cls.__name__} valid on the wire")
        try:
            return self.cls(buf[pos]), end
        except ValueError:
            raise PayloadError(f"{buf[pos]} is not a {self.cls.__name__}") from None


_TIME = struct.Struct("<qh")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_OFFSET_MIN = 1439


class _Time(Field):
    """i64 microseconds since 1970-01-01T00:00:00Z, then i16 UTC offset of the local time in
    minutes (-1439..1439). Decodes to a timezone-aware datetime in that offset."""

    name = "time"

    def encode(self, value: Any, out: bytearray) -> None:
        if not isinstance(value, datetime) or value.utcoffset() is None:
            raise EncodeError(f"timezone-aware datetime expected: {value!r}")
        off = value.utcoffset()
        assert off is not None
        off_min, rem = divmod(off, timedelta(minutes=1))
        if rem or not -MAX_OFFSET_MIN <= off_min <= MAX_OFFSET_MIN:
            raise EncodeError(f"UTC offset must be whole minutes within ±23:59: {off}")
        us = (value - _EPOCH) // timedelta(microseconds=1)
        try:  # what the decoder will accept: the instant, in UTC and local, within years 1-9999
            _EPOCH + timedelta(microseconds=us)
        except OverflowError:
            raise EncodeError(f"time out of range (UTC year 1-9999): {value}") from None
        out += _TIME.pack(us, off_min)

    def decode(self, buf: bytes, pos: int) -> tuple[Any, int]:
        end = _take(buf, pos, _TIME.size)
        us, off_min = _TIME.unpack_from(buf, pos)
        if not -MAX_OFFSET_MIN <= off_min <= MAX_OFFSET_MIN:
            raise PayloadError(f"UTC offset out of range: {off_min} min")
        try:
            tz = timezone(timedelta(minutes=off_min))
            return (_EPOCH + timedelta(microseconds=us)).astimezone(tz), end
        except (OverflowError, ValueError):
            raise PayloadError(f"time out of range: {us} us") from None


TIME = _Time()


class Records(Field):
    """u8 count (at most `max_count`), then each record's fields in order."""

    def __init__(
        self,
        factory: type,
        layout: Sequence[tuple[str, Field]],
        max_count: int,
        min_count: int = 0,
    ) -> None:
        self.factory, self.layout = factory, tuple(layout)
        self.min_count, self.max_count = min_count, max_count
        self.name = f"list of {factory.__name__}"

    def encode(self, value: Any, out: bytearray) -> None:
        if not isinstance(value, tuple | list) or not (
            self.min_count <= len(value) <= self.max_count
        ):
            raise EncodeError(
                f"{self.name}: {self.min_count} to {self.max_count} records: {value!r}"
            )
        out.append(len(value))
        for record in value:
            if type(record) is not self.factory:
                raise EncodeError(f"{self.name}: not a {self.factory.__name__}: {record!r}")
            encode_fields(record, self.layout, out)

    def decode(self, buf: bytes, pos: int) -> tuple[Any, int]:
        end = _take(buf, pos, 1)
        n = buf[pos]
        if not self.min_count <= n <= self.max_count:
            raise PayloadError(
                f"{self.name}: {n} records, {self.min_count} to {self.max_count} allowed"
            )
        pos = end
        records = []
        for _ in range(n):
            values, pos = decode_fields(buf, pos, self.layout)
            records.append(self.factory(**values))
        return tuple(records), pos


def encode_fields(obj: Any, layout: Sequence[tuple[str, Field]], out: bytearray) -> None:
    for name, f in layout:
        try:
            f.encode(getattr(obj, name), out)
        except EncodeError as e:
            raise EncodeError(f"{type(obj).__name__}.{name}: {e}") from None


def decode_fields(
    buf: bytes, pos: int, layout: Sequence[tuple[str, Field]]
) -> tuple[dict[str, Any], int]:
    values: dict[str, Any] = {}
    for name, f in layout:
        try:
            values[name], pos = f.decode(buf, pos)
        except PayloadError as e:
            raise PayloadError(f"{name}: {e}") from None
    return values, pos


def check_layout(cls: type, layout: Sequence[tuple[str, Field]]) -> None:
    """The wire layout names exactly the dataclass fields, in declaration order."""
    names = [f.name for f in dc_fields(cls)]
    if names != [n for n, _ in layout]:
        raise TypeError(f"{cls.__name__}: layout {[n for n, _ in layout]} != fields {names}")
