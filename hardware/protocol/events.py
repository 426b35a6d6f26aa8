"""Conversions between protocol messages and the driver events of `hardware.base` (pure)."""

from __future__ import annotations

from dataclasses import asdict, fields

import numpy as np
import numpy.typing as npt

from hardware.base import HardwareError, SeriesEnd, SeriesStart, SliceReady
from hardware.dose import IrradiationEvent
from hardware.protocol.messages import (
    HwErrorMsg,
    IrradiationEventMsg,
    SeriesEndMsg,
    SeriesStartMsg,
    SliceReadyMsg,
)

_SERIES_START_FIELDS = frozenset(f.name for f in fields(SeriesStart))
_IRRADIATION_FIELDS = tuple(f.name for f in fields(IrradiationEvent))


def series_start_event(msg: SeriesStartMsg) -> SeriesStart:
    """The driver event: the same fields."""
    values = {k: v for k, v in asdict(msg).items() if k in _SERIES_START_FIELDS}
    return SeriesStart(**values)


def series_start_message(event: SeriesStart) -> SeriesStartMsg:
    return SeriesStartMsg(**asdict(event))


def slice_ready_event(msg: SliceReadyMsg, pixels: npt.NDArray[np.uint16]) -> SliceReady:
    """The event for an announced slice whose pixels were read intact from its ring slot."""
    if pixels.shape != (msg.rows, msg.columns):
        raise ValueError(f"pixels {pixels.shape} != announced {(msg.rows, msg.columns)}")
    return SliceReady(
        series_key=msg.series_key,
        index=msg.index,
        image_position=msg.image_position,
        table_position_mm=msg.table_position_mm,
        acquisition_time=msg.acquisition_time,
        pixels=pixels,
        slot=msg.slot,
        slot_seq=msg.slot_seq,
    )


def series_end_event(msg: SeriesEndMsg) -> SeriesEnd:
    return SeriesEnd(series_key=msg.series_key, slices=msg.slices)


def irradiation_event(msg: IrradiationEventMsg) -> IrradiationEvent:
    """The driver event of a decoded IRRADIATION_EVENT (the same fields, records shared)."""
    return IrradiationEvent(**{name: getattr(msg, name) for name in _IRRADIATION_FIELDS})


def irradiation_event_message(event: IrradiationEvent) -> IrradiationEventMsg:
    """The message for an event (the simulator's side); `encode` checks the ranges."""
    return IrradiationEventMsg(**{name: getattr(event, name) for name in _IRRADIATION_FIELDS})


def hardware_error_event(msg: HwErrorMsg) -> HardwareError:
    return HardwareError(code=msg.code, message=msg.message, series_key=msg.series_key)
