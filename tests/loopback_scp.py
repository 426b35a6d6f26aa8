"""The one server lifecycle of the SCPs written for the tests (tests/fault_scp.py,
tests/mpps_scp.py, tests/commitment_scp.py): a pynetdicom AE on 127.0.0.1 with TCP_NODELAY,
started on a port the kernel picks (or a given one), stopped on leaving a `with` block.
Subclasses say what they serve (`contexts`) and how (`handlers`)."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from agent.net.association import set_nodelay


class LoopbackScp:
    ae_title = "ARCHIVE"

    def __init__(self) -> None:
        self._ae: AE | None = None
        self._server: ThreadedAssociationServer | None = None

    def contexts(self) -> list[tuple[str, list[str] | None]]:
        """(SOP Class UID, transfer syntaxes or None for the default ones) it accepts."""
        raise NotImplementedError

    def handlers(self) -> list[evt.EventHandlerType]:
        raise NotImplementedError

    @property
    def port(self) -> int:
        assert self._server is not None, "the SCP is not running"
        return int(self._server.server_address[1])

    def start(self, port: int = 0) -> Self:
        """Listen on `port` (0: a free one the kernel picks, no race with another test)."""
        ae = AE(ae_title=self.ae_title)
        for sop_class, syntaxes in self.contexts():
            if syntaxes is None:
                ae.add_supported_context(sop_class)
            else:
                ae.add_supported_context(sop_class, syntaxes)
        handlers = [(evt.EVT_CONN_OPEN, set_nodelay), *self.handlers()]
        self._server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
        self._ae = ae
        return self

    def stop(self) -> None:
        if self._ae is not None:
            self._ae.shutdown()
        self._ae = self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
