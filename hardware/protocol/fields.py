"""Field encodings of the serial-shm payloads (PROTOCOL.md §5): little-endian fixed-size values,
u8-length-prefixed UTF-8 strings, presence-byte optionals and u8-count-prefixed record lists.

Each `Field` encodes a Python value into a bytearray and decodes one from a buffer at an
offset. Encoding a value out of range raises `EncodeError`; decoding a malformed buffer raises
`PayloadError`, which the frame decoder turns into a `FrameError` record (it never escapes).
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Callable, Sequence
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
        return self._s.unpack_from(buf, pos)[0], end


U8 = _Int("B", "u8", 0, 0xFF)
U16 = _Int("H", "u16", 0, 0xFFFF)
U32 = _Int("I", "u32", 0, 0xFFFF_FFFF)
U64 = _Int("Q", "u64", 0, 0xFFFF_FFFF_FFFF_FFFF)
_F64 = struct.Struct("<d")


class _F64Field(Field):
    name = "f64"

    def encode(self, value: Any, out: bytearray) -> None:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise EncodeError(f"f64 must be a finite number: {value!r}")
        out += _F64.pack(float(value))

    def decode(self, buf: bytes, pos: int) -> tuple[Any, int]:
        end = _take(buf, pos, 8)
        (v,) = _F64.unpack_from(buf, pos)
        if not math.isfinite(v):
            raise PayloadError(f"non-finite f64 at offset {pos}")
        return v, end


F64 = _F64Field()


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


class _Str(Field):
    """u8 byte length, then that many bytes of UTF-8 (no terminator)."""

    name = "str"

    def encode(self, value: Any, out: bytearray) -> None:
        if not isinstance(value, str):
            raise EncodeError(f"str expected: {value!r}")
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError as e:  # lone surrogates
            raise EncodeError(f"string is not encodable as UTF-8: {e}") from None
        if len(data) > 255:
            raise EncodeError(f"string longer than 255 bytes of UTF-8 ({len(data)})")
        out.append(len(data))
        out += data

    def decode(self, buf: bytes, pos: int) -> tuple[Any, int]:
        n_end = _take(buf, pos, 1)
        end = _take(buf, n_end, buf[pos])
        try:
            return bytes(buf[n_end:end]).decode("utf-8"), end
        except UnicodeDecodeError:
            raise PayloadError(f"invalid UTF-8 in string at offset {pos}") from None


STR = _Str()


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

    def __init__(self, cls: type[enum.IntEnum]) -> None:
        self.cls = cls
        self.name = cls.__name__

    def encode(self, value: Any, out: bytearray) -> None:
        if not isinstance(value, self.cls):
            raise EncodeError(f"{self.cls.__name__} expected: {value!r}")
        out.append(int(value))

    def decode(self, buf: bytes, pos: int) -> tuple[Any, int]:
        end = _take(buf, pos, 1)
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
        self, factory: Callable[..., Any], layout: Sequence[tuple[str, Field]], max_count: int
    ) -> None:
        self.factory, self.layout, self.max_count = factory, tuple(layout), max_count
        self.name = f"list of {getattr(factory, '__name__', 'record')}"

    def encode(self, value: Any, out: bytearray) -> None:
        if not isinstance(value, tuple | list) or len(value) > self.max_count:
            raise EncodeError(f"{self.name}: at most {self.max_count} records: {value!r}")
        out.append(len(value))
        for record in value:
            encode_fields(record, self.layout, out)

    def decode(self, buf: bytes, pos: int) -> tuple[Any, int]:
        end = _take(buf, pos, 1)
        n = buf[pos]
        if n > self.max_count:
            raise PayloadError(f"{self.name}: {n} records, at most {self.max_count}")
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
