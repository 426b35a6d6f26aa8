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
from typing import Any, cast

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.transport import ThreadedAssociationServer

from agent.net.association import set_nodelay
from agent.spool import InvalidUID
from agent.spool.files import fsync_dir, instance_path, make_dir, write_durable

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
            assert cx.abstract_syntax is not None
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        handlers: list[Any] = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_CONN_OPEN, set_nodelay)]
        server = ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        assert server is not None  # a non-blocking start returns the server
        self._server = server
        self.port = server.server_address[1]
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
        study = str(getattr(event.dataset, "StudyInstanceUID", ""))
        sop = str(cast(C_STORE, event.request).AffectedSOPInstanceUID)
        try:  # peer-supplied values become path components only once checked
            target = instance_path(self.directory, study, sop)
        except InvalidUID as e:
            log.warning("refusing an instance: %s", e)
            return STATUS_CANNOT_UNDERSTAND
        try:
            if make_dir(target.parent):
                fsync_dir(self.directory)
            write_durable(target, event.encoded_dataset(include_meta=True))
        except OSError as e:
            log.error("cannot write %s: %s", target, e)
            return STATUS_OUT_OF_RESOURCES
        log.debug("stored %s (%s)", sop, meta.TransferSyntaxUID)
        with self._arrived:
            self.received += 1
            self._arrived.notify_all()
        return STATUS_SUCCESS
