"""The mock acquisition hardware: a complete in-process driver with synthetic CT content.

After `request_scan`, a worker thread produces, for each series, a `SeriesStart` (realistic
helical chest parameters, `simulated=True`), its `SliceReady` events moving head to feet along
z, and a `SeriesEnd`, after the acquisition's `IrradiationEvent` (its dose record), which
comes first. Pixels come from `hardware.phantom` (a chest phantom in HU with noise).

Flow control is that of real hardware: the event queue is bounded, so with `rate_per_s=None`
the mock goes as fast as the agent reads; with a rate it is paced by waiting on a clock (never
busy-waiting) and can still be slowed down by a slow reader. `close()` stops it promptly.
"""

from __future__ import annotations

import dataclasses
import itertools
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hardware.base import (
    Driver,
    DriverError,
    Event,
    HardwareError,
    ScanRequest,
    SeriesEnd,
    SeriesStart,
    SliceReady,
)
from hardware.dose import (
    AcquisitionType,
    AlertKind,
    AlertQuantity,
    DoseAlert,
    IrradiationEvent,
    XRaySource,
)
from hardware.dose import Phantom as CtdiPhantom
from hardware.phantom import Phantom, shared_phantom

ROWS = COLUMNS = 512
PIXEL_SPACING_MM = (0.7, 0.7)
ORIENTATION_HFS = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CHEST_LENGTH_MM = 320.0  # apices at z = 0, upper abdomen at z = -CHEST_LENGTH_MM
RECON_DELAY_S = 2.0  # reconstruction follows acquisition: slices are stamped in the past
KVP, TUBE_CURRENT_MA, ROTATION_S, PITCH = 120.0, 200.0, 0.5, 0.984
SINGLE_COLLIMATION_MM, DETECTOR_ROWS = 0.625, 64
TOTAL_COLLIMATION_MM = DETECTOR_ROWS * SINGLE_COLLIMATION_MM
TABLE_SPEED_MM_S = PITCH * TOTAL_COLLIMATION_MM / ROTATION_S
CTDIW_PER_100_MAS_MGY = 7.0  # body phantom at 120 kV: a typical 64-row scanner's figure
# the localizer (scout) before an exam's first acquisition: a constant-angle AP view
LOCALIZER_LENGTH_MM, LOCALIZER_MA, LOCALIZER_TABLE_SPEED_MM_S = 450.0, 40.0, 100.0
LOCALIZER_CTDIVOL_MGY = 0.11  # body phantom: what 64-row scanners report for a chest scout


@dataclass(frozen=True)
class _Recon:
    """One reconstruction of the helical acquisition: what makes a series different."""

    description: str
    kernel: str
    thickness_mm: float


# series 1, 2, 3 of a request (then round again): soft tissue, lung and bone reconstructions
RECONS = (
    _Recon("CHEST 5.0 STANDARD", "STANDARD", 5.0),
    _Recon("CHEST 1.25 LUNG", "LUNG", 1.25),
    _Recon("CHEST 1.25 BONE", "BONE", 1.25),
)


def simulated_series_start(
    token: str,
    key: str,
    number: int,
    recon: _Recon = RECONS[0],
    contrast_agent: str | None = None,
    *,
    rows: int = ROWS,
    columns: int = COLUMNS,
) -> SeriesStart:
    """A realistic helical chest series start, marked simulated: for the mock and for every
    simulated far side, so that all of them describe the same acquisition."""
    return SeriesStart(
        token=token,
        series_key=key,
        series_number=number,
        description=recon.description,
        protocol_name="CHEST ROUTINE",
        body_part="CHEST",
        patient_position="HFS",
        image_orientation=ORIENTATION_HFS,
        rows=rows,
        columns=columns,
        pixel_spacing_mm=PIXEL_SPACING_MM,
        slice_thickness_mm=recon.thickness_mm,
        kernel=recon.kernel,
        kvp=KVP,
        tube_current_ma=TUBE_CURRENT_MA,
        exposure_time_ms=ROTATION_S * 1000.0,
        exposure_mas=TUBE_CURRENT_MA * ROTATION_S,
        revolution_time_s=ROTATION_S,
        single_collimation_mm=SINGLE_COLLIMATION_MM,
        total_collimation_mm=TOTAL_COLLIMATION_MM,
        spiral_pitch_factor=PITCH,
        scan_options="HELICAL",
        data_collection_diameter_mm=500.0,
        reconstruction_diameter_mm=columns * PIXEL_SPACING_MM[1],
        contrast_agent=contrast_agent,
        simulated=True,
    )


def simulated_irradiation(token: str, start: datetime, length_mm: float) -> IrradiationEvent:
    """The dose record of one simulated helical acquisition over `length_mm` from `start`:
    a plausible CTDIvol (body phantom) and DLP, computed from the mock's technique."""
    seconds = length_mm / TABLE_SPEED_MM_S
    effective_mas = TUBE_CURRENT_MA * ROTATION_S / PITCH
    ctdivol = round(CTDIW_PER_100_MAS_MGY * effective_mas / 100, 2)
    return IrradiationEvent(
        token=token,
        event_uid=f"2.25.{uuid.uuid4().int}",
        start_time=start,
        end_time=start + timedelta(seconds=seconds),
        acquisition_type=AcquisitionType.SPIRAL,
        target_region="CHEST",
        exposure_time_s=round(seconds, 3),
        scanning_length_mm=round(length_mm, 1),
        single_collimation_mm=SINGLE_COLLIMATION_MM,
        total_collimation_mm=TOTAL_COLLIMATION_MM,
        pitch_factor=PITCH,
        sources=(XRaySource("A", KVP, TUBE_CURRENT_MA, TUBE_CURRENT_MA, ROTATION_S),),
        mean_ctdivol_mgy=ctdivol,
        ctdi_phantom=CtdiPhantom.BODY_32,
        dlp_mgycm=round(ctdivol * length_mm / 10, 1),
    )


def simulated_localizer(token: str, start: datetime) -> IrradiationEvent:
    """The dose record of a simulated chest localizer (constant angle, no pitch, no rotation):
    DLP = CTDIvol x scanning length, as for any acquisition."""
    seconds = LOCALIZER_LENGTH_MM / LOCALIZER_TABLE_SPEED_MM_S
    return IrradiationEvent(
        token=token,
        event_uid=f"2.25.{uuid.uuid4().int}",
        start_time=start,
        end_time=start + timedelta(seconds=seconds),
        acquisition_type=AcquisitionType.CONSTANT_ANGLE,
        target_region="CHEST",
        exposure_time_s=round(seconds, 3),
        scanning_length_mm=LOCALIZER_LENGTH_MM,
        single_collimation_mm=SINGLE_COLLIMATION_MM,
        total_collimation_mm=2 * SINGLE_COLLIMATION_MM,
        pitch_factor=None,
        sources=(XRaySource("A", KVP, LOCALIZER_MA, LOCALIZER_MA, 0.0),),  # no rotation
        mean_ctdivol_mgy=LOCALIZER_CTDIVOL_MGY,
        ctdi_phantom=CtdiPhantom.BODY_32,
        dlp_mgycm=round(LOCALIZER_CTDIVOL_MGY * LOCALIZER_LENGTH_MM / 10, 2),
    )


def with_dose_check(event: IrradiationEvent, notification_ctdivol_mgy: float) -> IrradiationEvent:
    """`event` with a CTDIvol dose-check notification (TID 10015) when its CTDIvol exceeds the
    configured notification value, as the scanner's dose check would have raised it."""
    if event.mean_ctdivol_mgy <= notification_ctdivol_mgy:
        return event
    alert = DoseAlert(
        kind=AlertKind.NOTIFICATION,
        quantity=AlertQuantity.CTDIVOL,
        configured_value=notification_ctdivol_mgy,
        value=event.mean_ctdivol_mgy,
        reason="SIMULATED: protocol confirmed for the patient's size",
        person="SIMULATED^OPERATOR",
    )
    return dataclasses.replace(event, alerts=(*event.alerts, alert))


class MockDriver(Driver):
    """Synthetic hardware. `contrast_agent` marks every series as acquired with contrast.
    `localizer`: each exam token's first scan is preceded by a localizer's dose record.
    `dose_check_ctdivol_mgy`: a configured CTDIvol notification value; an acquisition above
    it reports a dose-check notification (TID 10015)."""

    def __init__(
        self,
        *,
        queue_size: int = 64,
        noise_hu: float = 10.0,
        contrast_agent: str | None = None,
        clock: Callable[[], datetime] | None = None,
        localizer: bool = False,
        dose_check_ctdivol_mgy: float | None = None,
    ) -> None:
        if queue_size < 1:
            raise DriverError(f"mock driver: queue_size must be at least 1, got {queue_size}")
        self._events: queue.Queue[Event] = queue.Queue(maxsize=queue_size)
        self._requests: queue.Queue[ScanRequest | None] = queue.Queue()
        self._noise_hu = noise_hu
        self._contrast_agent = contrast_agent
        self._clock = clock or (lambda: datetime.now(UTC))
        self._localizer = localizer
        self._dose_check = dose_check_ctdivol_mgy
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._token: str | None = None
        self._instance = uuid.uuid4().hex[:12]  # series keys unique across drivers
        self._series_keys = itertools.count(1)
        self._next_series_number: dict[str, int] = {}
        self._slice_seeds = itertools.count()
        self._pending = 0  # requests accepted and not yet fully produced
        self._released = 0
        self._produced = 0

    # -- the driver interface ----------------------------------------------------------------

    def open(self) -> None:
        with self._lock:
            if self._closed:
                raise DriverError("mock driver: closed, make a new one")
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="mock-hw", daemon=True)
                self._worker.start()

    def set_exam_token(self, token: str | None) -> None:
        with self._lock:
            self._token = token

    def request_scan(self, request: ScanRequest) -> None:
        if request.series < 1 or request.slices_per_series < 1:
            raise DriverError(
                "mock driver: a scan needs at least one series of at least one slice, got "
                f"{request.series} series of {request.slices_per_series}"
            )
        if request.rate_per_s is not None and not request.rate_per_s > 0:
            raise DriverError(f"mock driver: rate_per_s must be > 0, got {request.rate_per_s}")
        with self._lock:
            if self._worker is None or self._closed:
                raise DriverError("mock driver: not open")
            self._pending += 1
        self._requests.put(request)

    def read_event(self, timeout: float) -> Event | None:
        try:
            if timeout <= 0:
                return self._events.get_nowait()
            return self._events.get(timeout=timeout)
        except queue.Empty:
            return None

    def release(self, slice_: SliceReady) -> None:
        with self._lock:  # nothing to free: no ring; counted for tests and statistics
            self._released += 1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            worker, self._worker = self._worker, None
        self._stop.set()
        self._requests.put(None)
        if worker is not None:
            worker.join(timeout=10)

    # -- extras for tests and the simulator ----------------------------------------------------

    @property
    def released(self) -> int:
        with self._lock:
            return self._released

    @property
    def produced(self) -> int:
        """Slices produced (queued for the reader) so far."""
        with self._lock:
            return self._produced

    @property
    def busy(self) -> bool:
        """True while a requested scan is still being produced."""
        with self._lock:
            return self._pending > 0

    def inject_error(self, code: str, message: str, series_key: str | None = None) -> None:
        """Queue a `HardwareError`, behind the events already produced."""
        self._put(HardwareError(code=code, message=message, series_key=series_key))

    # -- the worker ----------------------------------------------------------------------------

    def _put(self, event: Event) -> bool:
        """Queue `event`, waiting while the reader is behind; False when closing."""
        while not self._stop.is_set():
            try:
                self._events.put(event, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            request = self._requests.get()
            if request is None:
                break
            try:
                self._scan(request)
            except Exception as exc:  # a bug here is reported as hardware would, not swallowed
                self._put(HardwareError(code="MOCK_FAILURE", message=f"mock scan failed: {exc!r}"))
            finally:
                with self._lock:
                    self._pending -= 1

    def _scan(self, request: ScanRequest) -> None:
        with self._lock:
            token = request.token or self._token or ""
            first = self._next_series_number.get(token, 1)
            self._next_series_number[token] = first + request.series
        recons = [RECONS[i % len(RECONS)] for i in range(request.series)]
        n = request.slices_per_series
        # all series are reconstructions of one helical acquisition, centred on the chest
        centre = -CHEST_LENGTH_MM / 2
        top = centre + max((n - 1) * r.thickness_mm / 2 + r.thickness_mm for r in recons)
        speed = TABLE_SPEED_MM_S
        acquired = self._clock() - timedelta(seconds=2 * (top - centre) / speed + RECON_DELAY_S)
        paced = time.monotonic()
        emitted = 0
        irradiation = simulated_irradiation(token, acquired, 2 * (top - centre))
        if self._dose_check is not None:
            irradiation = with_dose_check(irradiation, self._dose_check)
        if self._localizer and first == 1:  # the exam's scout, before its first acquisition
            scout = simulated_localizer(token, acquired - timedelta(seconds=30))
            if not self._put(scout):
                return
        # the acquisition ended before its reconstructions: its record comes first (PROTOCOL
        # §6 0x24: before the SERIES_END of any series reconstructed from it)
        if not self._put(irradiation):
            return
        for i, recon in enumerate(recons):
            key = f"MOCK-{self._instance}-{next(self._series_keys)}"
            start = simulated_series_start(token, key, first + i, recon, self._contrast_agent)
            start = dataclasses.replace(start, irradiation_event_uid=irradiation.event_uid)
            phantom = shared_phantom(
                start.rows, start.columns, start.pixel_spacing_mm, self._noise_hu
            )
            if not self._put(start):
                return
            for index in range(n):
                if request.rate_per_s is not None:
                    delay = paced + emitted / request.rate_per_s - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        return
                z = centre + (n - 1 - 2 * index) * recon.thickness_mm / 2
                if not self._put(self._slice(phantom, key, index, z, top, acquired, speed)):
                    return
                emitted += 1
                with self._lock:
                    self._produced += 1
            if not self._put(SeriesEnd(series_key=key, slices=n)):
                return

    def _slice(
        self,
        phantom: Phantom,
        key: str,
        index: int,
        z: float,
        top: float,
        acquired: datetime,
        speed: float,
    ) -> SliceReady:
        x0, y0 = phantom.origin_mm
        return SliceReady(
            series_key=key,
            index=index,
            image_position=(x0, y0, z),
            table_position_mm=-z,
            acquisition_time=acquired + timedelta(seconds=(top - z) / speed),
            pixels=phantom.slice(-z / CHEST_LENGTH_MM, next(self._slice_seeds)),
        )
