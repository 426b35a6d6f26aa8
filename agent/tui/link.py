"""The TUI's link to the daemon: requests off the UI thread, and the event stream kept alive.

Every request runs on a thread of its own, on a connection of its own (the daemon serves one
connection's requests one at a time: a slow `echo` must not hold up a `queue`). The event
stream runs on one more thread that reconnects by itself with backoff, says hello, subscribes,
and reports each change of the link. Only agent/control/client.py is used: no daemon internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from agent.control.client import ControlClient, DaemonUnreachable
from agent.control.protocol import OpError
from agent.events import Event

TOPICS = ("exam", "series", "slice", "delivery", "alarm")
LinkError = (OpError, DaemonUnreachable)
T = TypeVar("T")


async def off_thread(fn: Callable[[], T], name: str = "agent-request") -> T:
    """`fn()` on a new daemon thread, awaited without blocking the event loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():  # the awaiting worker was cancelled meanwhile
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result, error = fn(), None
        except BaseException as e:  # handed over to the awaiting coroutine
            result, error = None, e
        with contextlib.suppress(RuntimeError):  # the loop closed: the app is gone
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name=name, daemon=True).start()
    return await future


class Link:
    def __init__(self, socket_path: Path, timeout: float = 30.0) -> None:
        self.path = socket_path
        self.timeout = timeout
        self._stop = threading.Event()
        self._stream: ControlClient | None = None
        self._thread: threading.Thread | None = None

    # -- requests -------------------------------------------------------------------------

    def request(
        self, op: str, args: dict[str, Any] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """Blocking: one connection, one request. Raises OpError or DaemonUnreachable."""
        limit = self.timeout if timeout is None else timeout
        with ControlClient(self.path, timeout=min(limit, 10.0)) as client:
            return client.request(op, args or {}, timeout=limit)

    async def ask(
        self, op: str, args: dict[str, Any] | None = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """The op's result, awaited off the UI thread."""
        result: dict[str, Any] = await off_thread(lambda: self.request(op, args, timeout), op)
        return result

    # -- the event stream -----------------------------------------------------------------

    def start(
        self,
        up: Callable[[dict[str, Any]], object],
        event: Callable[[Event], object],
        down: Callable[[str], object],
    ) -> None:
        """Keep a subscription open until `stop()`; `up(hello)` after each (re)connection,
        `event(e)` for each event, `down(reason)` when it is lost. Called on the link's thread:
        they must only post to the app."""
        self._thread = threading.Thread(
            target=self._run, args=(up, event, down), name="agent-events", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        client = self._stream
        if client is not None:
            client.close()  # safe from another thread: ends the iteration

    def _run(
        self,
        up: Callable[[dict[str, Any]], object],
        event: Callable[[Event], object],
        down: Callable[[str], object],
    ) -> None:
        delay = 0.25
        while not self._stop.is_set():
            client = ControlClient(self.path, timeout=10.0)
            self._stream = client
            reason = "the daemon closed the connection"
            try:
                hello = client.request("hello")
                stream = client.events(TOPICS)
                delay = 0.25
                up(hello)
                for e in stream:
                    event(e)
            except DaemonUnreachable as e:
                reason = e.reason
            except OpError as e:
                reason = e.message
            finally:
                client.close()
                self._stream = None
            if self._stop.is_set():
                return
            down(reason)
            self._stop.wait(delay)  # backoff before the next attempt, cut short by stop()
            delay = min(delay * 2, 4.0)
