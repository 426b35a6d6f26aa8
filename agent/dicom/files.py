"""The one place that serialises DICOM instances: Part 10 files in memory, validated.

`encode` checks every value against its VR (lengths, characters, formats) and writes with
pydicom's writing validation raised for its own duration only (values that the Specific
Character Set cannot encode raise instead of being replaced); pydicom's global configuration
is otherwise left as it was. `enforce_file_format=True` gives a preamble and a complete File
Meta Information.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom import config, dcmread, dcmwrite
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID
from pydicom.valuerep import IS, DSdecimal, DSfloat, PersonName, validate_value

from agent.dicom.uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from agent.spool import InstanceRecord

_lock = threading.Lock()
_depth = 0
_saved_mode = config.WARN


@contextmanager
def _strict_writing() -> Iterator[None]:
    """Writing validation RAISE while any thread is inside; the previous mode restored after."""
    global _depth, _saved_mode
    with _lock:
        if _depth == 0:
            _saved_mode = config.settings.writing_validation_mode
            config.settings.writing_validation_mode = config.RAISE
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                config.settings.writing_validation_mode = _saved_mode


class InvalidDataset(ValueError):
    """A value does not conform to its VR; the message names the attribute."""


def _check(elem: DataElement, path: str) -> None:
    values = elem.value if isinstance(elem.value, MultiValue | list | tuple) else [elem.value]
    for v in values:
        if isinstance(v, DSfloat | DSdecimal | IS | PersonName):
            v = str(v)  # validate the text that will be written
        try:
            validate_value(elem.VR, v, config.RAISE)
        except ValueError as exc:
            raise InvalidDataset(f"{path}{elem.tag} {elem.keyword or 'private'}: {exc}") from exc


def check_values(tag: int, vr: str, value: str | list[str]) -> None:
    """Raise `InvalidDataset` when text `value` (one value, or several) does not conform to
    `vr`: what `validate` checks of an element, for a value not (yet) in a Dataset."""
    for v in [value] if isinstance(value, str) else value:
        try:
            validate_value(vr, v, config.RAISE)
        except ValueError as exc:
            raise InvalidDataset(f"{Tag(tag)} {keyword_for_tag(tag) or 'private'}: {exc}") from exc


def validate(ds: Dataset, path: str = "") -> None:
    """Raise `InvalidDataset` naming the first value that does not conform to its VR."""
    for elem in ds:
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                validate(item, f"{path}{elem.keyword}[{i}].")
        else:
            _check(elem, path)


def encode(ds: Dataset) -> bytes:
    """`ds` as a DICOM Part 10 file (preamble, File Meta Information, data set), in memory.

    `ds.file_meta` must give the Transfer Syntax UID. Implementation Class UID and Version
    Name name the software that writes the file (PS3.10 §7.1): they are set to this agent's
    in `ds.file_meta`, whatever they were (pydicom would otherwise put its own).
    """
    meta = getattr(ds, "file_meta", None)
    if meta is None or not meta.get("TransferSyntaxUID"):
        raise InvalidDataset("file_meta with a Transfer Syntax UID is needed to encode a file")
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    validate(meta)
    validate(ds)
    buffer = io.BytesIO()
    with _strict_writing():
        dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def decode(data: bytes | Path) -> Dataset:
    """A Part 10 file (bytes or a path) as a Dataset; raises when it is not one."""
    if isinstance(data, Path):
        return dcmread(data)
    return dcmread(io.BytesIO(data))


def instance_record(ds: Dataset, exam_token: str | None = None) -> InstanceRecord:
    """What the spool indexes of an instance."""
    return InstanceRecord(
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        instance_number=int(ds.InstanceNumber),
        exam_token=exam_token,
    )
