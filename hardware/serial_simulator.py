"""The serial-shm reconstructor as a long-running process, and the client that orders scans.

`modality-agent simulator -c FILE` runs a `SimulatorServer`: a `SerialDevice` whose line is a
pty published at the config's `port` and whose ring is `/dev/shm/<ring_name>`, there for as
long as the process runs, as a real reconstructor is. `modality-agent simulate` reaches it
through `SerialReconstructor`, over the order socket beside the line (`order_socket_for`):
one JSON line with the plan, one JSON line back with what was played (PROTOCOL.md appendix A).

`play()` turns a `Plan` into device steps: the mock's content (so that every simulated far side
describes the same acquisition), faults injected at fixed places so that tests can say exactly
what must arrive.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hardware.base import SeriesStart, SliceReady
from hardware.dose import IrradiationEvent
from hardware.mock import COLUMNS, ROWS
from hardware.protocol import MsgType, irradiation_event_message
from hardware.serial_device import SerialDevice
from hardware.simulator import Fault, Plan, Played, PlayedSeries, mock_content

DEFAULT_RING_NAME = "modality-agent-sim"
DEFAULT_SLOTS = 16
RECONNECT_PAUSE_S = 0.5  # how long the line stays away for the `disconnect` fault
HW_ERROR_CODE = "RECON_ABORTED"
MAX_ORDER = 64 * 1024  # bytes of one order line
GARBAGE = b"\x00\xff\x13\x00garbage on the line\x00\x07\x07\x07" + bytes(range(1, 40)) + b"\x00"


def order_socket_for(port: str) -> Path:
    """Where the simulator for the line at `port` takes orders: beside the line."""
    line = Path(port)
    return line.with_name(line.name + ".orders")


class SimulatorError(Exception):
    """An order that could not be carried out; the message says why."""


# -- the device side ----------------------------------------------------------------------------


class SimulatorServer:
    """A simulated reconstructor that runs until `stop()`, taking scan orders on a socket."""

    faults = frozenset(
        {
            Fault.CRC,
            Fault.GARBAGE,
            Fault.DROP,
            Fault.LOSE,
            Fault.DUPLICATE,
            Fault.REORDER,
            Fault.TORN,
            Fault.DISCONNECT,
            Fault.HW_ERROR,
        }
    )

    def __init__(
        self,
        port: str,
        ring_name: str = DEFAULT_RING_NAME,
        *,
        slots: int = DEFAULT_SLOTS,
        device_serial: str = "SIM0001",
    ) -> None:
        if "://" in port:
            raise SimulatorError(f"the simulator needs a file path as `port`, not the URL {port}")
        self.line = Path(port)
        self.orders = order_socket_for(port)
        self.device = SerialDevice(
            ring_name,
            self.line,
            slot_count=slots,
            max_rows=ROWS,
            max_columns=COLUMNS,
            device_serial=device_serial,
            keep_written=False,
        )
        self._numbers: dict[str, int] = {}  # exam token -> next series number
        self._playing = threading.Lock()  # one scan at a time, as on a real gantry
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        """Create the line, the ring and the order socket; SimulatorError if another
        simulator holds them."""
        self.line.parent.mkdir(parents=True, exist_ok=True)
        if _answers(self.orders):
            raise SimulatorError(f"a simulator is already running (orders at {self.orders})")
        self.orders.unlink(missing_ok=True)  # left by a simulator that was killed
        self.device.ring_path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)  # the order socket is the owner's only
        try:
            listener.bind(str(self.orders))
        finally:
            os.umask(old)
        listener.listen(4)
        self._listener = listener
        self.device.start()

    def serve_forever(self) -> None:
        """Take orders until `stop()`; each connection in its own thread."""
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                break  # stop() closed the listener
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        self.orders.unlink(missing_ok=True)
        self.device.close()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            line = stream.readline(MAX_ORDER + 1)
            try:
                answer = self._answer(line)
            except SimulatorError as e:
                answer = {"ok": False, "error": str(e)}
            with contextlib.suppress(OSError):
                stream.write(json.dumps(answer).encode() + b"\n")
                stream.flush()

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            order = json.loads(line)
        except ValueError as e:
            raise SimulatorError(f"an order is one JSON object on one line: {e}") from e
        if not isinstance(order, dict):
            raise SimulatorError("an order is one JSON object on one line")
        if order.get("op") == "held":
            return {"ok": True, "held": self.device.held_slices()}
        if order.get("op") != "play":
            raise SimulatorError(f"unknown op {order.get('op')!r}; known: play, held")
        played = self.play(plan_from_json(order))
        return {"ok": True, "series": [dataclasses.asdict(s) for s in played.series]}

    def play(self, plan: Plan) -> Played:
        unknown = plan.faults - self.faults
        if unknown:
            raise SimulatorError(f"faults not available here: {', '.join(sorted(unknown))}")
        with self._playing:
            first = self._numbers.get(plan.token, 1)
            self._numbers[plan.token] = first + plan.series
            return _Player(self.device, plan).run(mock_content(plan, first))


class _Player:
    """One plan's device steps, with its faults at fixed places of each series of n slices:
    `crc` index 0, `drop` index 1, `garbage` before index 0, `reorder` pairs (0,1), (2,3)...,
    `lose` n//2, `torn` and `duplicate` the last, `disconnect` after n//2 of the first series,
    `hw-error` the last series from (n+1)//2 on (SLICE_LOST for the rest)."""

    def __init__(self, device: SerialDevice, plan: Plan) -> None:
        self.device, self.plan = device, plan
        self.played: list[PlayedSeries] = []
        self.disconnected = False

    def run(self, content: Iterator[SeriesStart | SliceReady | IrradiationEvent]) -> Played:
        key: str | None = None
        written: list[int] = []
        for event in content:
            if isinstance(event, IrradiationEvent):  # kept and replayed until ACKed
                self.device.irradiation(irradiation_event_message(event))
            elif isinstance(event, SeriesStart):
                if key is not None:
                    self._end(key, written)
                key = self.device.new_series_key()
                written = []
                self.device.begin_series(dataclasses.replace(event, series_key=key))
                if Fault.GARBAGE in self.plan.faults:
                    self.device.inject_garbage(GARBAGE)
            elif key is not None:
                self._slice(dataclasses.replace(event, series_key=key), written)
        if key is not None:
            self._end(key, written)
        return Played(tuple(self.played))

    def _aborted(self, index: int) -> bool:
        last = len(self.played) == self.plan.series - 1
        return Fault.HW_ERROR in self.plan.faults and last and index >= (self.plan.slices + 1) // 2

    def _slice(self, slice_: SliceReady, written: list[int]) -> None:
        faults, n, i, key = self.plan.faults, self.plan.slices, slice_.index, slice_.series_key
        device = self.device
        if self._aborted(i):
            if i == (n + 1) // 2:
                message = "reconstruction aborted: simulated hardware error"
                device.hardware_error(HW_ERROR_CODE, message, key)
            device.lose_slice(key, i, "reconstruction aborted")
            return
        if Fault.LOSE in faults and i == n // 2:
            device.lose_slice(key, i, "simulated reconstruction failure")
            return
        if Fault.CRC in faults and i == 0:
            device.corrupt_next(MsgType.SLICE_READY)
        if Fault.DROP in faults and i == min(1, n - 1):
            device.drop_next(MsgType.SLICE_READY)
        if Fault.REORDER in faults and i % 2 == 0 and i + 1 < n:
            device.reorder_next(MsgType.SLICE_READY)
        if Fault.TORN in faults and i == n - 1:
            device.tear_next_slice()
        if not device.put_slice(slice_):
            raise SimulatorError("the simulator is stopping")
        written.append(i)
        if Fault.DUPLICATE in faults and i == n - 1:
            device.announce_again(key, i)
        if Fault.DISCONNECT in faults and not self.disconnected and i == n // 2:
            self.disconnected = True
            device.drop_line()
            time.sleep(RECONNECT_PAUSE_S)  # the cable is out for a while: that is the fault
            device.attach_line()

    def _end(self, key: str, written: list[int]) -> None:
        self.device.end_series(key, self.plan.slices)
        self.played.append(PlayedSeries(key, self.plan.slices, tuple(written)))


def plan_to_json(plan: Plan) -> dict[str, Any]:
    return {
        "op": "play",
        "token": plan.token,
        "series": plan.series,
        "slices": plan.slices,
        "rate": plan.rate_per_s,
        "faults": sorted(plan.faults),
    }


def plan_from_json(order: dict[str, Any]) -> Plan:
    try:
        faults = frozenset(Fault(f) for f in order.get("faults") or [])
        rate = order.get("rate")
        return Plan(
            token=str(order["token"]),
            series=int(order["series"]),
            slices=int(order["slices"]),
            rate_per_s=None if rate is None else float(rate),
            faults=faults,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise SimulatorError(f"bad play order: {e!r}") from e


# -- the ordering side --------------------------------------------------------------------------


class SerialReconstructor:
    """`simulate`'s handle on a running simulator: a `hardware.simulator.Reconstructor`."""

    faults = SimulatorServer.faults

    def __init__(self, port: str, timeout: float | None = None) -> None:
        self.orders = order_socket_for(port)
        self.timeout = timeout

    def play(self, plan: Plan) -> Played:
        answer = self._ask(plan_to_json(plan))
        series = tuple(
            PlayedSeries(s["series_key"], int(s["planned"]), tuple(s["written"]))
            for s in answer["series"]
        )
        return Played(series)

    def held(self) -> list[tuple[str, int]]:
        """(series key, index) of every slice whose slot the agent has not released."""
        return [(str(k), int(i)) for k, i in self._ask({"op": "held"})["held"]]

    def _ask(self, order: dict[str, Any]) -> dict[str, Any]:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(self.timeout)
                conn.connect(str(self.orders))
                conn.sendall(json.dumps(order).encode() + b"\n")
                with conn.makefile("rb") as stream:
                    line = stream.readline()
        except TimeoutError as e:
            raise TimeoutError(f"the simulator did not answer in {self.timeout:g} s") from e
        except OSError as e:
            raise SimulatorError(
                f"no simulator at {self.orders} ({e.strerror or e}): "
                "start one with `modality-agent simulator -c FILE`"
            ) from e
        try:
            answer: dict[str, Any] = json.loads(line)
        except ValueError as e:
            raise SimulatorError("the simulator closed the connection without an answer") from e
        if not answer.get("ok"):
            raise SimulatorError(str(answer.get("error")))
        return answer


def _answers(path: Path) -> bool:
    """Whether something listens on the Unix socket at `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True
