"""The dose vocabulary of an irradiation event (SPEC §3; DICOM TID 10013, 10015), shared by
every driver and, later, the CT Radiation Dose SR. Pure data: no I/O, no pydicom."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class AcquisitionType(enum.IntEnum):
    """CID 10013 CT Acquisition Type."""

    SEQUENCED = 1  # (113804, DCM, "Sequenced Acquisition")
    SPIRAL = 2  # (116152004, SCT, "Spiral Acquisition")
    CONSTANT_ANGLE = 3  # (113805, DCM, "Constant Angle Acquisition")
    STATIONARY = 4  # (113806, DCM, "Stationary Acquisition")
    FREE = 5  # (113807, DCM, "Free Acquisition")
    CONE_BEAM = 6  # (702569007, SCT, "Cone beam acquisition")


class Phantom(enum.IntEnum):
    """CID 4052 Phantom Devices, for CTDIvol."""

    HEAD_16 = 1  # (113690, DCM, "IEC Head Dosimetry Phantom")
    BODY_32 = 2  # (113691, DCM, "IEC Body Dosimetry Phantom")


class AlertKind(enum.IntEnum):
    """TID 10015 CT Dose Check Details."""

    NOTIFICATION = 1  # a notification value of the protocol element was exceeded
    ALERT = 2  # the accumulated alert value of the exam was exceeded


class AlertQuantity(enum.IntEnum):
    CTDIVOL = 1  # mGy
    DLP = 2  # mGy·cm


@dataclass(frozen=True)
class XRaySource:
    """TID 10013 CT X-Ray Source Parameters, one per tube."""

    source_id: str  # Identification of the X-Ray Source (113832), e.g. "A"
    kvp: float  # KVP (113733), kV
    max_tube_current_ma: float  # Maximum X-Ray Tube Current (113833), mA
    mean_tube_current_ma: float  # X-Ray Tube Current (113734), mA (mean)
    rotation_time_s: float  # Exposure Time per Rotation (113834), s


@dataclass(frozen=True)
class DoseAlert:
    """TID 10015 CT Dose Check Details: one notification or alert that was raised."""

    kind: AlertKind
    quantity: AlertQuantity
    configured_value: float  # the configured notification or alert value (mGy or mGy·cm)
    value: float  # the forward estimate (notification) or accumulated value (alert)
    reason: str  # Reason for Proceeding (113907)
    person: str  # the Person Name (113870) of who authorised proceeding; "" if none


@dataclass(frozen=True)
class IrradiationEvent:
    """One acquisition's irradiation, as the hardware reports it (TID 10013)."""

    token: str  # the exam token the acquisition was made under
    event_uid: str  # Irradiation Event UID (113769)
    start_time: datetime  # Start of X-Ray Irradiation (113809), timezone-aware
    end_time: datetime  # End of X-Ray Irradiation (113810)
    acquisition_type: AcquisitionType  # CT Acquisition Type (113820)
    target_region: str  # Target Region (123014), e.g. "CHEST"
    exposure_time_s: float  # Exposure Time (113824)
    scanning_length_mm: float  # Scanning Length (113825)
    single_collimation_mm: float  # Nominal Single Collimation Width (113826)
    total_collimation_mm: float  # Nominal Total Collimation Width (113827)
    pitch_factor: float | None  # Pitch Factor (113828); None when not spiral
    sources: tuple[XRaySource, ...]  # one per tube
    mean_ctdivol_mgy: float  # Mean CTDIvol (113830)
    ctdi_phantom: Phantom  # CTDIw Phantom Type (113835)
    dlp_mgycm: float  # DLP (113838)
    alerts: tuple[DoseAlert, ...] = ()
