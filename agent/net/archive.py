"""The bundled minimal Storage SCP, for integrators and the demo.

Every storage SOP class in every transfer syntax pydicom knows is accepted; each instance is
written atomically to `<dir>/<Study Instance UID>/<SOP Instance UID>.dcm`. UIDs from the peer
are checked before they become path components.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer

from agent.dicom.uids import is_valid_uid
from agent.net.association import set_nodelay
from agent.spool.files import atomic_write

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000


@dataclass
class Archive:
    """A running Storage SCP; `stop()` ends it."""

    directory: Path
    port: int
    ae_title: str = "ARCHIVE"
    host: str = "127.0.0.1"
    received: int = 0
    _server: ThreadedAssociationServer | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _arrived: threading.Condition = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._arrived = threading.Condition(self._lock)

    def start(self) -> Archive:
        self.directory.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        ae.maximum_pdu_size = 0  # no limit: take the sender's largest PDUs
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_OPEN, set_nodelay)]
        self._server = ae.start_server(
            (self.host, self.port), block=False, evt_handlers=handlers
        )
        self.port = self._server.server_address[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def wait_for(self, count: int, timeout: float) -> bool:
        """Block until `count` instances arrived in total, or `timeout` seconds passed."""
        with self._arrived:
            return self._arrived.wait_for(lambda: self.received >= count, timeout)

    def _on_store(self, event: evt.Event) -> int:
        meta = event.file_meta
        study = getattr(event.dataset, "StudyInstanceUID", None)
        sop = str(event.request.AffectedSOPInstanceUID)
        if not (is_valid_uid(str(study)) and is_valid_uid(sop)):
            log.warning("refusing an instance with an invalid Study or SOP Instance UID")
            return STATUS_CANNOT_UNDERSTAND
        target = self.directory / str(study) / f"{sop}.dcm"
        try:
            atomic_write(target, event.encoded_dataset(include_meta=True))
        except OSError as e:
            log.error("cannot write %s: %s", target, e)
            return STATUS_OUT_OF_RESOURCES
        log.debug("stored %s (%s)", sop, meta.TransferSyntaxUID)
        with self._arrived:
            self.received += 1
            self._arrived.notify_all()
        return STATUS_SUCCESS
