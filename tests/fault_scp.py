"""A fault-injecting Storage SCP for the tests, written with pynetdicom.

It exists because no real peer can return arbitrary statuses: DCMTK's storescp answers success
(or refuses, aborts or sleeps for every instance alike), and no archive can be told to answer
A700 to the second instance and B007 to the third. Everything a real peer can do is tested
against storescp (tests/test_send_storescp.py); this one covers the rest of SPEC §6's status
handling.

Per C-STORE it answers the status `answer(instance_number)` returns, or `NO_RESPONSE`: it
never answers, so the requestor's DIMSE timeout fires (the handler is held until the connection
closes, or `hang_limit_s` at most). It counts associations and records what it received.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pynetdicom import evt
from pynetdicom.association import Association

from tests.loopback_scp import LoopbackScp

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SYNTAXES = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
)
NO_RESPONSE = None

Answer = Callable[[int], int | None]  # Instance Number -> status, or NO_RESPONSE


def by_instance(statuses: Mapping[int, int | None], default: int = 0x0000) -> Answer:
    """`statuses[instance_number]`, `default` for the instances not named."""
    return lambda number: statuses.get(number, default)


def always(status: int | None) -> Answer:
    return lambda _number: status


@dataclass(frozen=True)
class Received:
    """One C-STORE request as the SCP saw it, and what it answered."""

    sop_instance_uid: str
    instance_number: int
    status: int | None  # NO_RESPONSE when it never answered


class FaultSCP(LoopbackScp):
    """`with FaultSCP(by_instance({2: 0xA700})) as scp:` listens on `scp.port` (loopback).

    `answer` may be replaced while it runs, e.g. to let a retry succeed."""

    def __init__(
        self,
        answer: Answer | None = None,
        *,
        ae_title: str = "ARCHIVE",
        hang_limit_s: float = 60.0,
    ) -> None:
        super().__init__()
        self.answer: Answer = answer or always(0x0000)
        self.ae_title = ae_title
        self.hang_limit_s = hang_limit_s
        self._lock = threading.Lock()
        self._associations = 0
        self._received: list[Received] = []
        self._closed: dict[int, threading.Event] = {}  # per association: connection closed

    @property
    def associations(self) -> int:
        """Associations established so far."""
        with self._lock:
            return self._associations

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def stored(self) -> set[str]:
        """SOP Instance UIDs answered with success or a warning (the peer keeps them)."""
        return {
            r.sop_instance_uid
            for r in self.received
            if r.status is not None and (r.status == 0 or 0xB000 <= r.status <= 0xBFFF)
        }

    def contexts(self) -> list[tuple[str, list[str] | None]]:
        return [("1.2.840.10008.1.1", None), (CT_IMAGE_STORAGE, list(SYNTAXES))]

    def handlers(self) -> list[evt.EventHandlerType]:
        return [
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_CONN_CLOSE, self._on_close),
            (evt.EVT_C_STORE, self._on_store),
        ]

    def stop(self) -> None:
        with self._lock:  # release any held C-STORE first, or the shutdown waits on it
            for closed in self._closed.values():
                closed.set()
        super().stop()

    def _closed_event(self, assoc: Association) -> threading.Event:
        with self._lock:
            return self._closed.setdefault(id(assoc), threading.Event())

    def _on_established(self, event: evt.Event) -> None:
        with self._lock:
            self._associations += 1

    def _on_close(self, event: evt.Event) -> None:
        self._closed_event(event.assoc).set()

    def _on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        number = int(ds.InstanceNumber)
        status = self.answer(number)
        with self._lock:
            self._received.append(Received(str(ds.SOPInstanceUID), number, status))
        if status is not NO_RESPONSE:
            return status
        # Hold the response until the requestor gives up and the connection closes. Whatever
        # is returned then goes nowhere; failure, should the limit ever be reached first.
        closed = self._closed_event(event.assoc)
        closed.wait(self.hang_limit_s)
        return 0xC000
