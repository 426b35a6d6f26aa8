"""The coded concepts of the CT Radiation Dose SR (PS3.16 TID 10011-10015, 1002, 1004, 1020),
with their Code Meanings verbatim: dose registries and monitors match them as text.

Pure data. `CONCEPTS` maps (scheme, value) to the meaning the standard gives, so that the
content checker can refuse a report whose meanings drifted.
"""

from __future__ import annotations

from typing import NamedTuple

from hardware.dose import AcquisitionType, Phantom


class Code(NamedTuple):
    value: str
    scheme: str
    meaning: str


def _dcm(value: str, meaning: str) -> Code:
    return Code(value, "DCM", meaning)


def _sct(value: str, meaning: str) -> Code:
    return Code(value, "SCT", meaning)


def _ucum(value: str, meaning: str) -> Code:
    return Code(value, "UCUM", meaning)


# -- TID 10011 CT Radiation Dose ----------------------------------------------------------------
XRAY_RADIATION_DOSE_REPORT = _dcm("113701", "X-Ray Radiation Dose Report")
PROCEDURE_REPORTED = _dcm("121058", "Procedure reported")
CT_XRAY = _sct("77477000", "Computed Tomography X-Ray")  # the EV of TID 10011 row 2
HAS_INTENT = _sct("363703001", "Has Intent")
DIAGNOSTIC_INTENT = _sct("261004008", "Diagnostic Intent")
START_OF_IRRADIATION = _dcm("113809", "Start of X-Ray Irradiation")
END_OF_IRRADIATION = _dcm("113810", "End of X-Ray Irradiation")
SCOPE_OF_ACCUMULATION = _dcm("113705", "Scope of Accumulation")
STUDY = _dcm("113014", "Study")
STUDY_INSTANCE_UID = _dcm("110180", "Study Instance UID")
COMMENT = _dcm("121106", "Comment")
SOURCE_OF_DOSE_INFORMATION = _dcm("113854", "Source of Dose Information")
AUTOMATED_DATA_COLLECTION = _dcm("113856", "Automated Data Collection")

# -- TID 1002 Observer Context, TID 1004 Device Observer Identifying Attributes ----------------
OBSERVER_TYPE = _dcm("121005", "Observer Type")
DEVICE = _dcm("121007", "Device")
DEVICE_OBSERVER_UID = _dcm("121012", "Device Observer UID")
DEVICE_OBSERVER_NAME = _dcm("121013", "Device Observer Name")
DEVICE_OBSERVER_MANUFACTURER = _dcm("121014", "Device Observer Manufacturer")
DEVICE_OBSERVER_MODEL_NAME = _dcm("121015", "Device Observer Model Name")
DEVICE_OBSERVER_SERIAL_NUMBER = _dcm("121016", "Device Observer Serial Number")
DEVICE_ROLE_IN_PROCEDURE = _dcm("113876", "Device Role in Procedure")
IRRADIATING_DEVICE = _dcm("113859", "Irradiating Device")

# -- TID 10012 CT Accumulated Dose Data --------------------------------------------------------
CT_ACCUMULATED_DOSE_DATA = _dcm("113811", "CT Accumulated Dose Data")
TOTAL_NUMBER_OF_IRRADIATION_EVENTS = _dcm("113812", "Total Number of Irradiation Events")
CT_DLP_TOTAL = _dcm("113813", "CT Dose Length Product Total")

# -- TID 10013 CT Irradiation Event Data, TID 10014 Scanning Length -----------------------------
CT_ACQUISITION = _dcm("113819", "CT Acquisition")
ACQUISITION_PROTOCOL = _dcm("125203", "Acquisition Protocol")
TARGET_REGION = _dcm("123014", "Target Region")
CT_ACQUISITION_TYPE = _dcm("113820", "CT Acquisition Type")
IRRADIATION_EVENT_UID = _dcm("113769", "Irradiation Event UID")
CT_ACQUISITION_PARAMETERS = _dcm("113822", "CT Acquisition Parameters")
EXPOSURE_TIME = _dcm("113824", "Exposure Time")
SCANNING_LENGTH = _dcm("113825", "Scanning Length")
NOMINAL_SINGLE_COLLIMATION = _dcm("113826", "Nominal Single Collimation Width")
NOMINAL_TOTAL_COLLIMATION = _dcm("113827", "Nominal Total Collimation Width")
PITCH_FACTOR = _dcm("113828", "Pitch Factor")
NUMBER_OF_XRAY_SOURCES = _dcm("113823", "Number of X-Ray Sources")
CT_XRAY_SOURCE_PARAMETERS = _dcm("113831", "CT X-Ray Source Parameters")
XRAY_SOURCE_ID = _dcm("113832", "Identification of the X-Ray Source")
KVP = _dcm("113733", "KVP")
MAX_TUBE_CURRENT = _dcm("113833", "Maximum X-Ray Tube Current")
TUBE_CURRENT = _dcm("113734", "X-Ray Tube Current")
EXPOSURE_TIME_PER_ROTATION = _dcm("113834", "Exposure Time per Rotation")
CT_DOSE = _dcm("113829", "CT Dose")
MEAN_CTDIVOL = _dcm("113830", "Mean CTDIvol")
CTDIW_PHANTOM_TYPE = _dcm("113835", "CTDIw Phantom Type")
DLP = _dcm("113838", "DLP")

# -- TID 10015 CT Dose Check Details, TID 1020 Person Participant --------------------------------
ALERT_DETAILS = _dcm("113900", "Dose Check Alert Details")
DLP_ALERT_CONFIGURED = _dcm("113901", "DLP Alert Value Configured")
CTDIVOL_ALERT_CONFIGURED = _dcm("113902", "CTDIvol Alert Value Configured")
DLP_ALERT_VALUE = _dcm("113903", "DLP Alert Value")
CTDIVOL_ALERT_VALUE = _dcm("113904", "CTDIvol Alert Value")
ACCUMULATED_DLP_FORWARD_ESTIMATE = _dcm("113905", "Accumulated DLP Forward Estimate")
ACCUMULATED_CTDIVOL_FORWARD_ESTIMATE = _dcm("113906", "Accumulated CTDIvol Forward Estimate")
REASON_FOR_PROCEEDING = _dcm("113907", "Reason for Proceeding")
NOTIFICATION_DETAILS = _dcm("113908", "Dose Check Notification Details")
DLP_NOTIFICATION_CONFIGURED = _dcm("113909", "DLP Notification Value Configured")
CTDIVOL_NOTIFICATION_CONFIGURED = _dcm("113910", "CTDIvol Notification Value Configured")
DLP_NOTIFICATION_VALUE = _dcm("113911", "DLP Notification Value")
CTDIVOL_NOTIFICATION_VALUE = _dcm("113912", "CTDIvol Notification Value")
DLP_FORWARD_ESTIMATE = _dcm("113913", "DLP Forward Estimate")
CTDIVOL_FORWARD_ESTIMATE = _dcm("113914", "CTDIvol Forward Estimate")
PERSON_NAME = _dcm("113870", "Person Name")
PERSON_ROLE_IN_PROCEDURE = _dcm("113875", "Person Role in Procedure")
IRRADIATION_AUTHORIZING = _dcm("113850", "Irradiation Authorizing")
YES = _sct("373066001", "Yes")  # CID 230
NO = _sct("373067005", "No")

# -- value sets ----------------------------------------------------------------------------------
ACQUISITION_TYPES = {  # CID 10013 CT Acquisition Type
    AcquisitionType.SEQUENCED: _dcm("113804", "Sequenced Acquisition"),
    AcquisitionType.SPIRAL: _sct("116152004", "Spiral Acquisition"),
    AcquisitionType.CONSTANT_ANGLE: _dcm("113805", "Constant Angle Acquisition"),
    AcquisitionType.STATIONARY: _dcm("113806", "Stationary Acquisition"),
    AcquisitionType.FREE: _dcm("113807", "Free Acquisition"),
    AcquisitionType.CONE_BEAM: _sct("702569007", "Cone Beam Acquisition"),
}
PHANTOMS = {  # CID 4052 Phantom Devices
    Phantom.HEAD_16: _dcm("113690", "IEC Head Dosimetry Phantom"),
    Phantom.BODY_32: _dcm("113691", "IEC Body Dosimetry Phantom"),
}

# -- UCUM units ----------------------------------------------------------------------------------
MGY = _ucum("mGy", "mGy")
MGYCM = _ucum("mGy.cm", "mGy.cm")
MM = _ucum("mm", "mm")
SECONDS = _ucum("s", "s")
KV = _ucum("kV", "kV")
MA = _ucum("mA", "mA")
RATIO = _ucum("{ratio}", "ratio")
EVENTS = _ucum("{events}", "events")
XRAY_SOURCES = _ucum("{X-Ray sources}", "X-Ray sources")

#: the unit each numeric concept must carry
UNITS = {
    TOTAL_NUMBER_OF_IRRADIATION_EVENTS: EVENTS,
    CT_DLP_TOTAL: MGYCM,
    EXPOSURE_TIME: SECONDS,
    SCANNING_LENGTH: MM,
    NOMINAL_SINGLE_COLLIMATION: MM,
    NOMINAL_TOTAL_COLLIMATION: MM,
    PITCH_FACTOR: RATIO,
    NUMBER_OF_XRAY_SOURCES: XRAY_SOURCES,
    KVP: KV,
    MAX_TUBE_CURRENT: MA,
    TUBE_CURRENT: MA,
    EXPOSURE_TIME_PER_ROTATION: SECONDS,
    MEAN_CTDIVOL: MGY,
    DLP: MGYCM,
    DLP_ALERT_VALUE: MGYCM,
    CTDIVOL_ALERT_VALUE: MGY,
    ACCUMULATED_DLP_FORWARD_ESTIMATE: MGYCM,
    ACCUMULATED_CTDIVOL_FORWARD_ESTIMATE: MGY,
    DLP_NOTIFICATION_VALUE: MGYCM,
    CTDIVOL_NOTIFICATION_VALUE: MGY,
    DLP_FORWARD_ESTIMATE: MGYCM,
    CTDIVOL_FORWARD_ESTIMATE: MGY,
}

#: every concept above by (scheme, value): the meaning a report must carry for it
CONCEPTS: dict[tuple[str, str], str] = {
    (c.scheme, c.value): c.meaning
    for c in [
        *(v for v in globals().values() if isinstance(v, Code)),
        *ACQUISITION_TYPES.values(),
        *PHANTOMS.values(),
    ]
}
