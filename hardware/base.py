"""The driver interface and the typed events that flow from the reconstructor to the agent.

A driver delivers events in acquisition order: `SeriesStart`, then its `SliceReady` events,
then `SeriesEnd`. A `SliceReady` holds a resource on the hardware side (a ring slot); the agent
calls `Driver.release(slice)` only once the slice is durable in the spool, so that a slow
agent makes the hardware wait instead of losing data.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt

from hardware.dose import IrradiationEvent

Vector3 = tuple[float, float, float]
Orientation = tuple[float, float, float, float, float, float]


@dataclass(frozen=True)
class SeriesStart:
    """A reconstructed series begins. Units are those of the matching DICOM attributes."""

    token: str  # the exam token the series was acquired under (SPEC §3)
    series_key: str  # the hardware's own id of the series; unique per reconstructor
    series_number: int
    description: str
    protocol_name: str
    body_part: str  # Body Part Examined, e.g. "CHEST"
    patient_position: str  # HFS, FFS, HFP, ...
    image_orientation: Orientation  # row and column direction cosines (patient coordinates)
    rows: int
    columns: int
    pixel_spacing_mm: tuple[float, float]  # row spacing, column spacing
    slice_thickness_mm: float
    kernel: str  # Convolution Kernel, e.g. "STANDARD", "BONE", "LUNG"
    kvp: float
    tube_current_ma: float
    exposure_time_ms: float
    exposure_mas: float
    revolution_time_s: float
    single_collimation_mm: float
    total_collimation_mm: float
    spiral_pitch_factor: float | None  # None for axial scans
    scan_options: str  # "HELICAL" or "AXIAL"
    data_collection_diameter_mm: float
    reconstruction_diameter_mm: float
    gantry_tilt_deg: float = 0.0
    table_height_mm: float = 150.0
    rescale_intercept: float = -1024.0
    rescale_slope: float = 1.0
    contrast_agent: str | None = None  # Contrast/Bolus Agent when contrast was given
    simulated: bool = False  # True for the mock and the simulator (SPEC §3: "SIMULATED")
    irradiation_event_uid: str = ""  # the acquisition it was reconstructed from (0008,3010)
    frame_of_reference_id: int = 0  # changes when the patient moved: a new Frame of Reference


@dataclass(frozen=True)
class SliceReady:
    """One reconstructed slice, its pixels as stored values (unsigned 16-bit, rows x columns)."""

    series_key: str
    index: int  # 0-based position in the series
    image_position: Vector3  # Image Position (Patient) of the first pixel, mm
    table_position_mm: float
    acquisition_time: datetime  # timezone-aware
    pixels: npt.NDArray[np.uint16] = field(repr=False)
    slot: int | None = None  # the ring slot that holds it, where the hardware has one
    slot_seq: int | None = None  # the slot's sequence number for this slice (serial-shm)


@dataclass(frozen=True)
class SeriesEnd:
    series_key: str
    slices: int  # how many slices the hardware produced for the series


@dataclass(frozen=True)
class HardwareError:
    code: str
    message: str
    series_key: str | None = None


Event = SeriesStart | SliceReady | SeriesEnd | HardwareError | IrradiationEvent


@dataclass(frozen=True)
class ScanRequest:
    """What to acquire, for drivers that acquire on request (the mock and the simulator)."""

    token: str
    series: int
    slices_per_series: int
    rate_per_s: float | None = None  # None: as fast as the agent takes them


class Driver(abc.ABC):
    """One acquisition hardware backend."""

    @abc.abstractmethod
    def open(self) -> None:
        """Connect to the hardware; raise `DriverError` with a clear message when it can't."""

    @abc.abstractmethod
    def set_exam_token(self, token: str | None) -> None:
        """Tell the hardware the token of the exam now open (None: no exam open).

        Callable before `open()` and while disconnected: the driver remembers the token and
        hands it over on every (re)connection. Never raises."""

    @abc.abstractmethod
    def read_event(self, timeout: float) -> Event | None:
        """The next event, or None when none arrived within `timeout` seconds. Raises
        `DriverError` when the link is lost; the caller closes and opens the driver again."""

    @abc.abstractmethod
    def release(self, slice_: SliceReady) -> None:
        """The slice is durable in the spool: the hardware may reuse its resources."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def acknowledge(self, event: SeriesEnd | IrradiationEvent) -> None:  # noqa: B027 - a no-op by default
        """The record is durable on the agent's side: hardware that keeps it until then may
        forget it. Drivers whose hardware does not wait for that need not override this."""

    def counters(self) -> dict[str, int]:
        """What the interface has survived since the driver was made (bad frames or files by
        kind, duplicates, torn reads, re-requests...), for `status`: SPEC §3 wants bad input
        counted and reported. Empty where there is nothing to count."""
        return {}

    def request_scan(self, request: ScanRequest) -> None:
        """Start an acquisition (mock and simulated hardware only)."""
        raise DriverError(f"the {type(self).__name__} driver cannot acquire on request")


class DriverError(Exception):
    """The hardware is missing, misconfigured or broke the protocol."""
