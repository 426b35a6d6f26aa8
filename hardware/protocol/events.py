"""Conversions between protocol messages and the driver events of `hardware.base` (pure)."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import numpy.typing as npt

from hardware.base import HardwareError, SeriesEnd, SeriesStart, SliceReady
from hardware.protocol.messages import HwErrorMsg, SeriesEndMsg, SeriesStartMsg, SliceReadyMsg


def series_start_event(msg: SeriesStartMsg) -> SeriesStart:
    return SeriesStart(**asdict(msg))


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
    )


def series_end_event(msg: SeriesEndMsg) -> SeriesEnd:
    return SeriesEnd(series_key=msg.series_key, slices=msg.slices)


def hardware_error_event(msg: HwErrorMsg) -> HardwareError:
    return HardwareError(code=msg.code, message=msg.message, series_key=msg.series_key)
