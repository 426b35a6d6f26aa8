"""The client's end of the control socket, for the CLI and the TUI (docs/control-protocol.md).

with ControlClient(path) as client:
    client.request("exam.status")
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections import deque
from collections.abc import Collection, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from agent.control.protocol import (
    ERROR_EXIT,
    EXIT_UNREACHABLE,
    LineBuffer,
    OpError,
    RequestId,
    Response,
    decode_event,
    decode_response,
    encode_request,
)
from agent.events import Event

__all__ = ["EXIT_UNREACHABLE", "ControlClient", "DaemonUnreachable", "exit_code"]


def exit_code(err: OpError) -> int:
    """The CLI's exit code for an error answer (SPEC §8); 1 for a code it does not know."""
    return ERROR_EXIT.get(err.code, 1)


class DaemonUnreachable(Exception):
    """No daemon to talk to at `path` (missing socket, refused, permission denied, went away)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot reach the modality-agent daemon at {path}: {reason}")
        self.path = path
        self.reason = reason


def _reason(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "no socket there (is the daemon running?)"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused (the daemon is not running)"
    if isinstance(e, PermissionError):
        return "permission denied (is this user in the daemon's group?)"
    if isinstance(e, TimeoutError):
        return "timed out"
    return e.strerror or str(e)


class ControlClient:
    """One connection. `timeout` bounds connecting and, by default, each request (None: wait)."""

    def __init__(self, path: Path, timeout: float | None = 30) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = LineBuffer()
        self._lines: deque[bytes] = deque()
        self._next_id = 1
        self._abandoned: set[RequestId] = set()  # timed out; their late answers are skipped
        self._streaming = False

    def __enter__(self) -> ControlClient:
        self.connect()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def connect(self) -> None:
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError as e:
            sock.close()
            raise DaemonUnreachable(self.path, _reason(e)) from e
        self._sock = sock

    def close(self) -> None:
        """Close the connection; safe from another thread to end an `events()` iteration."""
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def request(
        self, op: str, args: dict[str, Any] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """The op's result; raises OpError (the daemon's, or "timeout" after `timeout` seconds,
        default the client's) or DaemonUnreachable."""
        if self._streaming:
            raise RuntimeError("this connection carries events now; open another for requests")
        self.connect()
        rid, self._next_id = self._next_id, self._next_id + 1
        line = encode_request(rid, op, args)
        limit = self.timeout if timeout is None else timeout
        deadline = None if limit is None else time.monotonic() + limit
        self._send(line)
        while True:
            try:
                response = self._response(deadline)
            except TimeoutError:
                self._abandoned.add(rid)
                raise OpError(
                    "timeout", f"{op}: no answer from the daemon in {limit:g} s"
                ) from None
            if response.id == rid:
                break
            if response.id in self._abandoned:
                self._abandoned.discard(response.id)
                continue
            if response.error is not None and response.id is None:
                raise response.error  # e.g. too many connections
            raise OpError("internal", f"the daemon answered id {response.id!r}; asked {rid}")
        if response.error is not None:
            raise response.error
        assert response.result is not None
        return response.result

    def events(self, topics: Collection[str] | None = None) -> Iterator[Event]:
        """Subscribe now, then iterate (seq, event, time, data) until the daemon closes the
        connection or `close()` is called. The connection serves nothing else afterwards."""
        self.request("subscribe", {} if topics is None else {"topics": list(topics)})
        self._streaming = True
        return self._stream()

    def _stream(self) -> Iterator[Event]:
        while True:
            try:
                line = self._line(None)
            except DaemonUnreachable:
                return
            try:
                yield decode_event(line)
            except OpError as e:
                raise OpError("internal", f"malformed event from the daemon: {e.message}") from e

    # -- lines ----------------------------------------------------------------------------

    def _send(self, line: bytes) -> None:
        sock = self._sock
        try:
            if sock is None:
                raise ConnectionResetError("closed")
            sock.sendall(line)
        except OSError as e:
            farewell = self._farewell()
            self.close()
            if farewell is not None:
                raise farewell from e
            raise DaemonUnreachable(self.path, f"connection lost ({_reason(e)})") from e

    def _farewell(self) -> OpError | None:
        """The error the daemon sent before closing on us (e.g. too many connections), if any."""
        sock = self._sock
        if sock is None:
            return None
        with contextlib.suppress(OSError, OpError):
            sock.settimeout(0)
            while data := sock.recv(65536):
                self._lines.extend(self._buffer.feed(data))
        for line in self._lines:
            with contextlib.suppress(OpError):
                response = decode_response(line)
                if response.id is None and response.error is not None:
                    return response.error
        return None

    def _response(self, deadline: float | None) -> Response:
        line = self._line(deadline)
        try:
            return decode_response(line)
        except OpError as e:
            self.close()
            raise OpError("internal", f"malformed answer from the daemon: {e.message}") from e

    def _line(self, deadline: float | None) -> bytes:
        """The next line; TimeoutError after `deadline` (monotonic), DaemonUnreachable on EOF."""
        while not self._lines:
            sock = self._sock
            if sock is None:
                raise DaemonUnreachable(self.path, "connection closed")
            if deadline is not None:
                sock.settimeout(max(deadline - time.monotonic(), 1e-3))
            else:
                sock.settimeout(None)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                raise
            except OSError as e:
                self.close()
                raise DaemonUnreachable(self.path, f"connection lost ({_reason(e)})") from e
            if not data:
                self.close()
                raise DaemonUnreachable(self.path, "the daemon closed the connection")
            try:
                self._lines.extend(self._buffer.feed(data))
            except OpError as e:
                self.close()
                raise OpError("internal", f"answer from the daemon: {e.message}") from e
        return self._lines.popleft()
