"""An MPPS SCP for the tests (Modality Performed Procedure Step SOP Class, PS3.4 Annex F.7),
written with pynetdicom.

It exists because no Debian package provides an MPPS SCP (SPEC §10): DCMTK has no MPPS
server, and Orthanc does not implement MPPS. It keeps each Performed Procedure Step as the
standard describes (an N-CREATE makes it IN PROGRESS; N-SETs update it until it is COMPLETED or
DISCONTINUED; afterwards it can no longer be updated), records every message in order, and can
be told to answer a status of the test's choosing (`answer`) to inject what a RIS might do.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import N_CREATE, N_SET

from tests.loopback_scp import LoopbackScp

MPPS = "1.2.840.10008.3.1.2.3.3"
VERIFICATION = "1.2.840.10008.1.1"
FINAL = ("COMPLETED", "DISCONTINUED")

# status codes of PS3.4 F.7.2 / PS3.7 C
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110  # e.g. "Performed Procedure Step Object may no longer be updated"
DUPLICATE_INSTANCE = 0x0111
NO_SUCH_INSTANCE = 0x0112
INVALID_ATTRIBUTE_VALUE = 0x0106
MISSING_ATTRIBUTE = 0x0120

# (message "N-CREATE" or "N-SET", SOP Instance UID) -> a status to answer instead, or None
Answer = Callable[[str, str], int | None]


@dataclass(frozen=True)
class Message:
    """One request as the SCP saw it, in arrival order, and the status it answered."""

    kind: str  # "N-CREATE" or "N-SET"
    sop_instance_uid: str
    dataset: Dataset
    status: int
    calling_ae: str


class MppsSCP(LoopbackScp):
    """`with MppsSCP() as ris:` listens on `ris.port` (loopback, a free port); a restarted
    RIS may listen on its old port again (`start(port)`)."""

    def __init__(self, answer: Answer | None = None, *, ae_title: str = "RIS") -> None:
        super().__init__()
        self.answer: Answer = answer or (lambda kind, uid: None)
        self.ae_title = ae_title
        self._lock = threading.Lock()
        self._messages: list[Message] = []
        self._steps: dict[str, Dataset] = {}  # SOP Instance UID -> the step as it is now

    @property
    def messages(self) -> list[Message]:
        with self._lock:
            return list(self._messages)

    def step(self, sop_instance_uid: str) -> Dataset:
        """The step as the RIS holds it now (the N-CREATE with every N-SET applied)."""
        with self._lock:
            return self._steps[sop_instance_uid]

    @property
    def steps(self) -> dict[str, Dataset]:
        with self._lock:
            return dict(self._steps)

    def contexts(self) -> list[tuple[str, list[str] | None]]:
        return [(MPPS, None), (VERIFICATION, None)]

    def handlers(self) -> list[evt.EventHandlerType]:
        return [(evt.EVT_N_CREATE, self._on_create), (evt.EVT_N_SET, self._on_set)]

    def _record(self, kind: str, uid: str, ds: Dataset, status: int, event: evt.Event) -> None:
        calling = event.assoc.requestor.ae_title
        self._messages.append(Message(kind, uid, ds, status, str(calling).strip()))

    def _on_create(self, event: evt.Event) -> tuple[int, Dataset | None]:
        req = event.request
        assert isinstance(req, N_CREATE)
        uid = str(req.AffectedSOPInstanceUID or "")
        ds = event.attribute_list
        with self._lock:
            status = self.answer("N-CREATE", uid)
            if status is None:
                if not uid:
                    status = INVALID_ATTRIBUTE_VALUE  # the SCU must choose the UID (IHE SWF)
                elif uid in self._steps:
                    status = DUPLICATE_INSTANCE
                elif ds.get("PerformedProcedureStepStatus") != "IN PROGRESS":
                    status = INVALID_ATTRIBUTE_VALUE
                else:
                    status = SUCCESS
                    self._steps[uid] = copy.deepcopy(ds)  # the message stays as it came
            self._record("N-CREATE", uid, ds, status, event)
        return status, (ds if status == SUCCESS else None)

    def _on_set(self, event: evt.Event) -> tuple[int, Dataset | None]:
        req = event.request
        assert isinstance(req, N_SET)
        uid = str(req.RequestedSOPInstanceUID)
        mods = event.modification_list
        with self._lock:
            status = self.answer("N-SET", uid)
            current = self._steps.get(uid)
            if status is None:
                if current is None:
                    status = NO_SUCH_INSTANCE
                elif current.get("PerformedProcedureStepStatus") in FINAL:
                    status = PROCESSING_FAILURE  # may no longer be updated (F.7.2.2.4)
                elif _final_without_its_end(mods):
                    status = MISSING_ATTRIBUTE  # F.7.2.2.4.1: type 1 on completion
                else:
                    status = SUCCESS
                    for element in mods:
                        current[element.tag] = element
            self._record("N-SET", uid, mods, status, event)
        return status, (current if status == SUCCESS else None)


def _final_without_its_end(mods: Dataset) -> bool:
    """What an N-SET to COMPLETED or DISCONTINUED must carry (PS3.4 F.7.2.2.4.1): end date
    and time, and the Performed Series Sequence (empty only when nothing was acquired)."""
    if mods.get("PerformedProcedureStepStatus") not in FINAL:
        return False
    if "PerformedSeriesSequence" not in mods:  # present; empty only for a step with no image
        return True
    if mods.PerformedProcedureStepStatus == "COMPLETED" and not mods.PerformedSeriesSequence:
        return True
    return not (
        mods.get("PerformedProcedureStepEndDate") and mods.get("PerformedProcedureStepEndTime")
    )
