"""The one JSON form of hardware events kept on disk (held series, open series, irradiation
records): pure, no I/O.

A `SeriesStart` is a JSON object of its fields; so is an `IrradiationEvent` (times in ISO 8601
with their offset, enums by value, sources and alerts as lists of objects). A `SliceReady` is
one JSON header line, a newline, then its pixels as little-endian unsigned 16-bit values
(rows x columns). A slice's ring slot is not kept: it means nothing once the slice is durable.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from typing import Any

import numpy as np

from hardware.base import SeriesStart, SliceReady
from hardware.dose import (
    AcquisitionType,
    AlertKind,
    AlertQuantity,
    DoseAlert,
    IrradiationEvent,
    Phantom,
    XRaySource,
)

_START_FIELDS = {f.name for f in dataclasses.fields(SeriesStart)}
_PIXEL_DTYPE = "<u2"


class EventCodecError(ValueError):
    """Stored bytes that are not an event this codec wrote."""


def start_to_json(start: SeriesStart) -> dict[str, Any]:
    doc = dataclasses.asdict(start)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in doc.items()}


def start_from_json(doc: dict[str, Any]) -> SeriesStart:
    unknown = set(doc) - _START_FIELDS
    if unknown:
        raise EventCodecError(f"series start: unknown field(s) {', '.join(sorted(unknown))}")
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()}
    try:
        return SeriesStart(**fields)
    except TypeError as e:  # a missing field
        raise EventCodecError(f"series start: {e}") from None


def slice_to_bytes(slice_: SliceReady) -> bytes:
    pixels = np.ascontiguousarray(slice_.pixels, dtype=_PIXEL_DTYPE)
    header = {
        "series_key": slice_.series_key,
        "index": slice_.index,
        "image_position": list(slice_.image_position),
        "table_position_mm": slice_.table_position_mm,
        "acquisition_time": slice_.acquisition_time.isoformat(),
        "shape": list(pixels.shape),
    }
    return json.dumps(header).encode() + b"\n" + pixels.tobytes()


def slice_from_bytes(data: bytes, series_key: str | None = None) -> SliceReady:
    """`series_key`: for slices stored before the header carried it."""
    head, newline, raw = data.partition(b"\n")
    try:
        h = json.loads(head)
        rows, columns = (int(n) for n in h["shape"])
        if not newline or len(raw) != rows * columns * 2:
            raise EventCodecError(f"slice: {len(raw)} pixel bytes for {rows} x {columns}")
        pixels = np.frombuffer(raw, dtype=_PIXEL_DTYPE).reshape(rows, columns)
        x, y, z = (float(v) for v in h["image_position"])
        return SliceReady(
            series_key=str(
                h["series_key"] if series_key is None else h.get("series_key", series_key)
            ),
            index=int(h["index"]),
            image_position=(x, y, z),
            table_position_mm=float(h["table_position_mm"]),
            acquisition_time=datetime.fromisoformat(h["acquisition_time"]),
            pixels=pixels.astype(np.uint16),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        if isinstance(e, EventCodecError):
            raise
        raise EventCodecError(f"slice: bad header ({type(e).__name__})") from None


def irradiation_to_json(event: IrradiationEvent) -> dict[str, Any]:
    doc = dataclasses.asdict(event)
    doc["start_time"] = event.start_time.isoformat()
    doc["end_time"] = event.end_time.isoformat()
    doc["acquisition_type"] = int(event.acquisition_type)
    doc["ctdi_phantom"] = int(event.ctdi_phantom)
    doc["alerts"] = [
        {**dataclasses.asdict(a), "kind": int(a.kind), "quantity": int(a.quantity)}
        for a in event.alerts
    ]
    doc["sources"] = [dataclasses.asdict(s) for s in event.sources]
    return doc


def irradiation_from_json(doc: dict[str, Any]) -> IrradiationEvent:
    try:
        fields = dict(doc)
        fields["start_time"] = _aware(fields["start_time"])
        fields["end_time"] = _aware(fields["end_time"])
        fields["acquisition_type"] = AcquisitionType(fields["acquisition_type"])
        fields["ctdi_phantom"] = Phantom(fields["ctdi_phantom"])
        fields["sources"] = tuple(XRaySource(**s) for s in fields["sources"])
        fields["alerts"] = tuple(
            DoseAlert(
                **{**a, "kind": AlertKind(a["kind"]), "quantity": AlertQuantity(a["quantity"])}
            )
            for a in fields.get("alerts", ())
        )
        return IrradiationEvent(**fields)
    except (KeyError, TypeError, ValueError) as e:
        raise EventCodecError(f"irradiation event: {type(e).__name__}: {e}") from None


def _aware(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return when
