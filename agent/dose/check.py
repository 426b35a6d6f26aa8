"""Our own content checker for TID 10011 (neither dciodvfy nor DCMTK's dsrdump checks
template content): required rows, value types, units, Code Meanings, event count, DLP sum.
Used before a report is spooled, and from the command line:

    python -m agent.dose.check FILE...     # exit 0 when every file passes, 1 otherwise
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import XRayRadiationDoseSRStorage

from agent.dicom.uids import is_valid_uid
from agent.dose import codes as c
from agent.dose.codes import Code


def problems(ds: Dataset) -> list[str]:
    """What is wrong with the report's content; [] when it passes."""
    out: list[str] = []
    if str(ds.get("SOPClassUID", "")) != XRayRadiationDoseSRStorage:
        out.append("not an X-Ray Radiation Dose SR")
    templates = ds.get("ContentTemplateSequence") or [Dataset()]
    t = templates[0]
    if (t.get("MappingResource"), t.get("TemplateIdentifier")) != ("DCMR", "10011"):
        out.append("Content Template Sequence does not name DCMR 10011")
    if _concept(ds) != c.XRAY_RADIATION_DOSE_REPORT:
        out.append(f"root concept is {_concept(ds)}, not {c.XRAY_RADIATION_DOSE_REPORT}")
    for path, item in _walk(ds, "root"):
        out += _item_problems(path, item)
    observer = _children(ds, c.DEVICE_OBSERVER_UID)
    if len(observer) != 1 or not is_valid_uid(str(observer[0].get("UID", ""))):
        out.append("observer context: no valid Device Observer UID")
    events = _children(ds, c.CT_ACQUISITION)
    if not events:
        out.append("no CT Acquisition (TID 10013)")
    uids: set[str] = set()
    dlps: list[Decimal] = []
    for i, event in enumerate(events, 1):
        out += _event_problems(f"CT Acquisition {i}", event, uids, dlps)
    accumulated = _children(ds, c.CT_ACCUMULATED_DOSE_DATA)
    if len(accumulated) != 1:
        out.append(f"{len(accumulated)} CT Accumulated Dose Data containers, expected 1")
        return out
    count = _num(accumulated[0], c.TOTAL_NUMBER_OF_IRRADIATION_EVENTS, "accumulated", out)
    if count is not None and count != len(events):
        out.append(f"Total Number of Irradiation Events is {count}, the report has {len(events)}")
    total = _num(accumulated[0], c.CT_DLP_TOTAL, "accumulated", out)
    if total is not None and total != sum(dlps, Decimal(0)):
        out.append(f"CT Dose Length Product Total {total} is not the sum of the events' DLP")
    return out


def _event_problems(where: str, event: Dataset, uids: set[str], dlps: list[Decimal]) -> list[str]:
    out: list[str] = []
    for concept in (c.TARGET_REGION, c.CT_ACQUISITION_TYPE):
        if len(_children(event, concept)) != 1:
            out.append(f"{where}: no {concept.meaning}")
    uid_items = _children(event, c.IRRADIATION_EVENT_UID)
    uid = str(uid_items[0].get("UID", "")) if len(uid_items) == 1 else ""
    if not is_valid_uid(uid):
        out.append(f"{where}: no valid Irradiation Event UID")
    elif uid in uids:
        out.append(f"{where}: Irradiation Event UID {uid} appears twice")
    uids.add(uid)
    types = _children(event, c.CT_ACQUISITION_TYPE)
    kind = _code_value(types[0]) if types else None
    constant_angle = kind == c.ACQUISITION_TYPES[c.AcquisitionType.CONSTANT_ANGLE]
    spiral = kind == c.ACQUISITION_TYPES[c.AcquisitionType.SPIRAL]
    params = _children(event, c.CT_ACQUISITION_PARAMETERS)
    if len(params) != 1:
        out.append(f"{where}: no CT Acquisition Parameters")
    else:
        p = params[0]
        required = [
            c.EXPOSURE_TIME,
            c.SCANNING_LENGTH,
            c.NOMINAL_SINGLE_COLLIMATION,
            c.NOMINAL_TOTAL_COLLIMATION,
        ]
        for concept in required + ([c.PITCH_FACTOR] if spiral else []):
            _num(p, concept, where, out)
        sources = _children(p, c.CT_XRAY_SOURCE_PARAMETERS)
        n = _num(p, c.NUMBER_OF_XRAY_SOURCES, where, out)
        if n is not None and n != len(sources):
            out.append(f"{where}: Number of X-Ray Sources {n}, {len(sources)} described")
        for s in sources:
            if len(_children(s, c.XRAY_SOURCE_ID)) != 1:
                out.append(f"{where}: an X-ray source without its identification")
            per_source = [c.KVP, c.MAX_TUBE_CURRENT, c.TUBE_CURRENT]
            if not constant_angle:
                per_source.append(c.EXPOSURE_TIME_PER_ROTATION)
            for concept in per_source:
                _num(s, concept, where, out)
    doses = _children(event, c.CT_DOSE)
    if not doses and not constant_angle:
        out.append(f"{where}: no CT Dose")
    for dose in doses:
        _num(dose, c.MEAN_CTDIVOL, where, out)
        if len(_children(dose, c.CTDIW_PHANTOM_TYPE)) != 1:
            out.append(f"{where}: no CTDIw Phantom Type")
        dlp = _num(dose, c.DLP, where, out)
        if dlp is not None:
            dlps.append(dlp)
    return out


_VALUE_TYPES = {
    "CONTAINER": (),
    "CODE": ("ConceptCodeSequence",),
    "NUM": ("MeasuredValueSequence",),
    "TEXT": ("TextValue",),
    "UIDREF": ("UID",),
    "DATETIME": ("DateTime",),
    "PNAME": ("PersonName",),
}


def _item_problems(path: str, item: Dataset) -> list[str]:
    out = []
    vt = str(item.get("ValueType", ""))
    if vt not in _VALUE_TYPES:
        out.append(f"{path}: value type {vt or 'missing'} not used by TID 10011")
    elif any(k not in item for k in _VALUE_TYPES[vt]):
        out.append(f"{path}: {vt} item without its value")
    concept = _concept(item)
    for code in [concept, *_codes_in(item)]:
        if code is None:
            continue
        meaning = c.CONCEPTS.get((code.scheme, code.value))
        if meaning is not None and meaning != code.meaning:
            out.append(
                f"{path}: Code Meaning {code.meaning!r} for {code.value}, expected {meaning!r}"
            )
    if vt == "NUM" and concept is not None:
        expected = c.UNITS.get(concept)
        units = _units(item)
        if expected is not None and units != expected:
            out.append(
                f"{path}: {concept.meaning} in {units and units.value}, expected {expected.value}"
            )
    return out


def _walk(ds: Dataset, path: str) -> Iterator[tuple[str, Dataset]]:
    for i, child in enumerate(ds.get("ContentSequence", []), 1):
        concept = _concept(child)
        here = f"{path}/{i}:{concept.meaning if concept else '?'}"
        yield here, child
        yield from _walk(child, here)


def _code(seq: object) -> Code | None:
    if not seq:
        return None
    item = seq[0]  # type: ignore[index]
    return Code(
        str(item.get("CodeValue", "")),
        str(item.get("CodingSchemeDesignator", "")),
        str(item.get("CodeMeaning", "")),
    )


def _concept(item: Dataset) -> Code | None:
    return _code(item.get("ConceptNameCodeSequence"))


def _code_value(item: Dataset) -> Code | None:
    return _code(item.get("ConceptCodeSequence"))


def _codes_in(item: Dataset) -> list[Code]:
    code = _code_value(item)
    return [code] if code is not None else []


def _units(item: Dataset) -> Code | None:
    measured = item.get("MeasuredValueSequence")
    return _code(measured[0].get("MeasurementUnitsCodeSequence")) if measured else None


def _same(a: Code | None, b: Code) -> bool:
    return a is not None and (a.value, a.scheme) == (b.value, b.scheme)


def _children(item: Dataset, concept: Code) -> list[Dataset]:
    return [ch for ch in item.get("ContentSequence", []) if _same(_concept(ch), concept)]


def _num(item: Dataset, concept: Code, where: str, out: list[str]) -> Decimal | None:
    """The one numeric value of `concept` under `item`, in the unit it must have."""
    found = _children(item, concept)
    if len(found) != 1 or str(found[0].get("ValueType")) != "NUM":
        out.append(f"{where}: {len(found)} {concept.meaning} rows, expected one NUM")
        return None
    measured = found[0].get("MeasuredValueSequence")
    try:
        value = Decimal(str(measured[0].NumericValue))
    except (InvalidOperation, AttributeError, IndexError, TypeError):
        out.append(f"{where}: {concept.meaning} has no numeric value")
        return None
    if not value.is_finite() or value < 0:
        out.append(f"{where}: {concept.meaning} is {value}")
        return None
    return value


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m agent.dose.check FILE...", file=sys.stderr)
        return 2
    bad = 0
    for path in paths:
        try:
            found = problems(dcmread(Path(path)))
        except Exception as e:
            found = [f"cannot read: {e}"]
        for p in found:
            print(f"{path}: {p}")
        bad += bool(found)
        if not found:
            print(f"{path}: TID 10011 content OK")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
