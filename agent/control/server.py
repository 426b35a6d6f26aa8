"""The daemon's end of the control socket (docs/control-protocol.md).

One thread per connection, at most `max_connections` of them: requests on a connection are
answered in order, and a long operation (`wait`) holds only its own connection. `hello` and
`subscribe` are served here; every other op is looked up in the `operations` the daemon gives.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import logging
import os
import pwd
import socket
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent.control.protocol import (
    SUPPORTED_VERSIONS,
    LineBuffer,
    OpError,
    Request,
    RequestError,
    decode_request,
    encode_error,
    encode_event,
    encode_result,
)
from agent.events import TOPICS, EventBus, Subscription

log = logging.getLogger(__name__)

Operation = Callable[[dict[str, Any]], Mapping[str, Any]]
BUILTIN_OPS = frozenset({"hello", "subscribe"})
# the protocol page names the topics "slices" and "alarms"; events are named "slice.*", "alarm.*"
TOPIC_ALIASES = {"slices": "slice", "alarms": "alarm"}
_SUN_PATH_MAX = 107  # bytes, without the terminating NUL


class SocketInUse(Exception):
    """The socket's path is taken: a daemon answers there, or it is not a socket."""


def bind_unix(path: Path, backlog: int = 16) -> tuple[socket.socket, os.stat_result]:
    """A listening socket at `path` with mode 0660, and the stat of its file.

    The socket is bound inside a fresh private (0700) folder beside `path`, set to 0660 there,
    then hard-linked to `path`: it is never reachable with a looser mode, whatever the umask,
    and the process-wide umask is left alone (other threads create files meanwhile). link()
    never replaces an existing file, so a live daemon's socket cannot be clobbered.
    """
    parent = path.parent
    if not parent.is_dir():
        parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        os.chmod(parent, 0o750)  # exactly 0750: the umask may have taken the group's bits
    private = tempfile.mkdtemp(prefix=".", dir=parent)
    temp = os.path.join(private, "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        for p in (temp, str(path)):
            if len(os.fsencode(p)) > _SUN_PATH_MAX:
                raise OSError(errno.ENAMETOOLONG, f"socket path too long (max {_SUN_PATH_MAX})", p)
        sock.bind(temp)
        os.chmod(temp, 0o660)
        sock.listen(backlog)
        st = os.stat(temp)
        for _ in range(3):
            try:
                os.link(temp, path)
                break
            except FileExistsError:
                _remove_if_stale(path)
        else:
            raise SocketInUse(f"{path}: another daemon is starting at the same time")
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        os.rmdir(private)
    return sock, st


def _remove_if_stale(path: Path) -> None:
    """Remove `path` if it is a socket nobody listens on; raise SocketInUse otherwise."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):  # connect() to a plain file is "refused" too
        raise SocketInUse(f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        log.warning("removing stale control socket %s: no daemon answers there", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except FileNotFoundError:
        return
    except OSError as e:
        reason = e.strerror or str(e)
        raise SocketInUse(f"{path}: cannot tell whether a daemon listens there ({reason})") from e
    finally:
        probe.close()
    raise SocketInUse(f"another daemon is already listening on {path}")


_caller = threading.local()


def peer_uid(conn: socket.socket) -> int | None:
    """The uid of the process on the other end of a Unix socket (SO_PEERCRED)."""
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("iII"))
    except OSError:
        return None
    return int(struct.unpack("iII", creds)[1])


def caller_user() -> str:
    """In an operation, for the audit trail: the OS user who sent the request being served
    (this thread serves one connection), resolved only when asked, since a directory service
    behind the user database may be slow; "" if unknown."""
    uid = getattr(_caller, "uid", None)
    if uid is None:
        return ""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _internal(op: str) -> OpError:
    return OpError("internal", f"internal error in {op}; the daemon's log has the details")


class ControlServer:
    def __init__(
        self,
        path: Path,
        operations: Mapping[str, Operation],
        bus: EventBus,
        *,
        hello_info: Callable[[], Mapping[str, Any]] | None = None,
        max_connections: int = 32,
        event_buffer: int = 1000,
    ) -> None:
        reserved = BUILTIN_OPS & set(operations)
        if reserved:
            raise ValueError(f"operations: {sorted(reserved)} are served by ControlServer")
        self.path = path
        self.max_connections = max_connections
        self._ops = dict(operations)
        self._bus = bus
        self._hello_info = hello_info
        self._event_buffer = event_buffer
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self._acceptor: threading.Thread | None = None
        self._conns: dict[socket.socket, threading.Thread] = {}
        self._subs: set[Subscription] = set()
        self._count = 0

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve in the background. Raises SocketInUse if a daemon serves `path`."""
        if self._listener is not None or self._stopping.is_set():
            raise RuntimeError("ControlServer.start: already started")
        self._listener, st = bind_unix(self.path)
        self._identity = (st.st_dev, st.st_ino)
        self._acceptor = threading.Thread(target=self._accept_loop, name="control-accept")
        self._acceptor.daemon = True
        self._acceptor.start()
        log.info("control socket listening at %s", self.path)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, remove the socket file, end every connection and subscription."""
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
            if self._acceptor is not None:
                self._acceptor.join(timeout)
            self._listener.close()
            self._remove_socket_file()
        with self._lock:
            conns, subs = dict(self._conns), list(self._subs)
        for sub in subs:
            sub.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for thread in conns.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        busy = [t.name for t in conns.values() if t.is_alive()]
        if busy:
            log.warning("control socket stopped; still inside an operation: %s", busy)

    def _remove_socket_file(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self._identity:  # not a successor's socket
            os.unlink(self.path)

    # -- connections ----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError as e:
                if not self._stopping.is_set():
                    log.warning("control socket: accept failed: %s", e)
                    self._stopping.wait(0.1)  # e.g. out of file descriptors: do not spin
                continue
            conn.settimeout(None)
            with self._lock:
                admit = not self._stopping.is_set() and len(self._conns) < self.max_connections
                if admit:
                    self._count += 1
                    thread = threading.Thread(
                        target=self._serve, args=(conn,), name=f"control-{self._count}"
                    )
                    thread.daemon = True
                    self._conns[conn] = thread
            if admit:
                thread.start()
            else:
                self._refuse(conn)

    def _refuse(self, conn: socket.socket) -> None:
        log.warning("control socket: %d connections open; refusing another", self.max_connections)
        message = f"too many connections ({self.max_connections}); close one and try again"
        conn.settimeout(1.0)
        with contextlib.suppress(OSError):
            conn.sendall(encode_error(None, OpError("failed", message)))
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        buffer = LineBuffer()
        _caller.uid = peer_uid(conn)  # this thread serves this connection only
        try:
            while data := conn.recv(65536):
                try:
                    for line in buffer.feed(data):
                        sub = self._answer(conn, line)
                        if sub is not None:
                            self._stream(conn, sub)
                            return
                except OpError as e:  # from feed: a line over the limit; the rest is unreadable
                    conn.sendall(encode_error(None, e))
                    return
        except OSError as e:
            log.debug("control connection ended: %s", e)
        finally:
            with self._lock:
                del self._conns[conn]
            conn.close()

    def _answer(self, conn: socket.socket, line: bytes) -> Subscription | None:
        """Answer one request line; a Subscription when the connection now streams events."""
        try:
            request = decode_request(line)
        except RequestError as e:
            conn.sendall(encode_error(e.request_id, e))
            return None
        if request.op != "subscribe":
            conn.sendall(self._call(request))
            return None
        try:
            sub = self._subscribe(request.args)
        except OpError as e:
            conn.sendall(encode_error(request.id, e))
            return None
        try:
            conn.sendall(encode_result(request.id, {"subscribed": sorted(sub.topics)}))
        except BaseException:
            sub.close()
            raise
        return sub

    def _call(self, request: Request) -> bytes:
        """The response line to a request: its result or its error, never an exception."""
        op = request.op
        try:
            result = self._run(request)
        except OpError as e:
            error = e
            log.debug("control: %s: %s %s", op, e.code, e.message)
        except Exception:
            log.exception("control: operation %s raised", op)  # args not logged: patient data
            error = _internal(op)
        else:
            try:
                return encode_result(request.id, result)
            except OpError as e:
                log.error("control: the result of %s cannot be sent: %s", op, e.message)
                error = _internal(op)
        try:
            return encode_error(request.id, error)
        except OpError as e:
            log.error("control: the error details of %s cannot be sent: %s", op, e.message)
            return encode_error(request.id, _internal(op))

    def _run(self, request: Request) -> Mapping[str, Any]:
        if request.op == "hello":
            info = self._hello_info() if self._hello_info is not None else {}
            return {**info, "versions": list(SUPPORTED_VERSIONS)}
        operation = self._ops.get(request.op)
        if operation is None:
            known = sorted(BUILTIN_OPS | set(self._ops))
            close = difflib.get_close_matches(request.op, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; known: {', '.join(known)}"
            raise OpError("bad_request", f"unknown op {request.op!r}{hint}")
        result = operation(request.args)
        if not isinstance(result, Mapping):
            raise TypeError(f"operation {request.op} returned {type(result).__name__}, not a dict")
        return result

    # -- events ---------------------------------------------------------------------------

    def _subscribe(self, args: dict[str, Any]) -> Subscription:
        topics = args.get("topics")
        wanted: set[str] | None = None
        if topics is not None:
            if not isinstance(topics, list) or not topics:
                raise OpError("bad_request", "topics: expected a non-empty list of names")
            wanted = {TOPIC_ALIASES.get(t, t) if isinstance(t, str) else repr(t) for t in topics}
            if wanted - TOPICS:
                unknown = ", ".join(sorted(wanted - TOPICS))
                raise OpError("bad_request", f"topics: unknown {unknown}; known: {sorted(TOPICS)}")
        return self._bus.subscribe(wanted, maxsize=self._event_buffer)

    def _stream(self, conn: socket.socket, sub: Subscription) -> None:
        """Write `sub`'s events to `conn` until the client closes or the server stops."""
        with self._lock:
            self._subs.add(sub)
        if self._stopping.is_set():
            sub.close()
        writer = threading.Thread(
            target=self._pump, args=(conn, sub), name=f"{threading.current_thread().name}-events"
        )
        writer.daemon = True
        writer.start()
        try:
            while conn.recv(65536):
                pass  # nothing but events flows after subscribe: input is ignored until EOF
        except OSError:
            pass
        finally:
            sub.close()
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # unblocks a writer stuck in sendall
            writer.join()
            with self._lock:
                self._subs.discard(sub)
            if sub.dropped:
                log.info("control: a slow subscriber missed %d event(s)", sub.dropped)

    def _pump(self, conn: socket.socket, sub: Subscription) -> None:
        try:
            for event in sub:
                try:
                    line = encode_event(event)
                except OpError as e:  # the reader sees a gap in seq
                    log.error("control: event %s not sent: %s", event.event, e.message)
                    continue
                conn.sendall(line)
        except OSError:
            pass
        finally:
            sub.close()
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)  # ends the reader in _stream
