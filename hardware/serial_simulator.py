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

import collections
import contextlib
import dataclasses
import fcntl
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hardware.base import SeriesStart, SliceReady
from hardware.dose import IrradiationEvent
from hardware.event_codec import irradiation_from_json, irradiation_to_json
from hardware.mock import COLUMNS, ROWS
from hardware.protocol import irradiation_event_message
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
        self._lock_fd: int | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        """Create the line, the ring and the order socket. SimulatorError, touching nothing,
        if another simulator runs here or if a path it would take is not a simulator's (a
        real serial device at `port`, a real reconstructor's ring): a simulator started by
        mistake with a console's config must never replace the real hardware."""
        self.line.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock(self.lock_file)
        try:
            self._check_line()
            self._check_ring()
            self._check_orders()
            self.device.start()
            self.ring_marker.write_text(self.device.ring_name + "\n")
            self._listen()
        except BaseException:
            self.stop()
            raise

    @property
    def lock_file(self) -> Path:
        return self.line.with_name(self.line.name + ".lock")

    @property
    def ring_marker(self) -> Path:
        """Names the ring this simulator made, so that the next one may replace it."""
        return self.line.with_name(self.line.name + ".ring")

    def _check_line(self) -> None:
        if not os.path.lexists(self.line):
            return
        target = os.readlink(self.line) if self.line.is_symlink() else ""
        if not target.startswith("/dev/pts/"):
            raise SimulatorError(
                f"{self.line} exists and is not a simulator's line (a real serial device?): "
                "refusing to replace it; give the simulator a config whose `port` is free"
            )

    def _check_ring(self) -> None:
        ring = self.device.ring_path
        if not ring.exists():
            return
        try:
            ours = self.ring_marker.read_text().strip() == self.device.ring_name
        except OSError:
            ours = False
        if not ours:
            raise SimulatorError(
                f"{ring} exists and was not made by a simulator on {self.line} (a real "
                "reconstructor's ring?): refusing to delete it; choose another ring_name"
            )
        ring.unlink()  # left by a simulator that was killed

    def _check_orders(self) -> None:
        if not os.path.lexists(self.orders):
            return
        if not stat.S_ISSOCK(os.lstat(self.orders).st_mode):
            raise SimulatorError(f"{self.orders} exists and is not a socket: refusing to use it")
        self.orders.unlink()  # we hold the lock: no simulator serves it

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.orders))
            os.chmod(self.orders, 0o600)  # the owner's only: orders make patients' exams
            listener.listen(4)
        except BaseException:
            listener.close()
            raise
        self._listener = listener

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
        """Stop serving, close the device (its line and ring go), release the lock. Removes
        only what this simulator made."""
        self._stopped.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
            self.orders.unlink(missing_ok=True)
        if self._lock_fd is not None:
            self.device.close()
            self.ring_marker.unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            line = stream.readline(MAX_ORDER + 1)
            try:
                answer = self._answer(line)
            except SimulatorError as e:
                answer = {"ok": False, "error": str(e)}
            except Exception as e:  # a bug: said to the client, the simulator goes on
                answer = {"ok": False, "error": f"simulator failed: {type(e).__name__}: {e}"}
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
        return {
            "ok": True,
            "series": [dataclasses.asdict(s) for s in played.series],
            "injected": dict(played.injected),
            "irradiation": [irradiation_to_json(e) for e in played.irradiation],
        }

    def play(self, plan: Plan) -> Played:
        unknown = plan.faults - self.faults
        if unknown:
            raise SimulatorError(f"faults not available here: {', '.join(sorted(unknown))}")
        if not self._playing.acquire(blocking=False):
            raise SimulatorError("busy: a scan is playing; order again when it has ended")
        try:
            first = self._numbers.get(plan.token, 1)
            self._numbers[plan.token] = first + plan.series
            return _Player(self.device, plan).run(mock_content(plan, first))
        finally:
            self._playing.release()


class _Player:
    """One plan's device steps, with its faults at fixed places of each series of n slices:
    `crc` index 0, `drop` index 1, `garbage` before index 0, `reorder` pairs (0,1), (2,3)...,
    `lose` n//2, `torn` and `duplicate` the last, `disconnect` after n//2 of the first series,
    `hw-error` the last series from n//2 on (SLICE_LOST for the rest). Counts what it
    injected, for the caller to check that the fault happened."""

    def __init__(self, device: SerialDevice, plan: Plan) -> None:
        self.device, self.plan = device, plan
        self.played: list[PlayedSeries] = []
        self.injected: collections.Counter[str] = collections.Counter()
        self.key: str | None = None
        self.written: list[int] = []
        self.irradiation: list[IrradiationEvent] = []

    def run(self, content: Iterator[SeriesStart | SliceReady | IrradiationEvent]) -> Played:
        try:
            for event in content:
                if isinstance(event, IrradiationEvent):  # kept and replayed until ACKed
                    self.device.irradiation(irradiation_event_message(event))
                    self.irradiation.append(event)
                elif isinstance(event, SeriesStart):
                    self._end()
                    self._begin(event)
                elif self.key is not None:
                    self._slice(dataclasses.replace(event, series_key=self.key))
            self._end()
        except Exception as e:
            self._abandon(e)
            raise
        return Played(tuple(self.played), dict(self.injected), tuple(self.irradiation))

    def _begin(self, start: SeriesStart) -> None:
        self.key = self.device.new_series_key()
        self.written = []
        self.device.begin_series(dataclasses.replace(start, series_key=self.key))
        if Fault.GARBAGE in self.plan.faults:
            self.device.inject_garbage(GARBAGE)
            self.injected[Fault.GARBAGE] += 1

    def _aborted(self, index: int) -> bool:
        last = len(self.played) == self.plan.series - 1
        return Fault.HW_ERROR in self.plan.faults and last and index >= self.plan.slices // 2

    def _slice(self, slice_: SliceReady) -> None:
        faults, n, i, key = self.plan.faults, self.plan.slices, slice_.index, slice_.series_key
        device = self.device
        if self._aborted(i):
            if i == n // 2:
                message = "reconstruction aborted: simulated hardware error"
                device.hardware_error(HW_ERROR_CODE, message, key)
                self.injected[Fault.HW_ERROR] += 1
            device.lose_slice(key, i, "reconstruction aborted")
            return
        if Fault.LOSE in faults and i == n // 2:
            device.lose_slice(key, i, "simulated reconstruction failure")
            self.injected[Fault.LOSE] += 1
            return
        flags = {
            Fault.CRC: Fault.CRC in faults and i == 0,
            Fault.DROP: Fault.DROP in faults and i == min(1, n - 1),
            Fault.REORDER: Fault.REORDER in faults and i % 2 == 0 and i + 1 < n,
            Fault.TORN: Fault.TORN in faults and i == n - 1,
        }
        ok = device.put_slice(
            slice_,
            corrupt=flags[Fault.CRC],
            drop=flags[Fault.DROP],
            reorder=flags[Fault.REORDER],
            tear=flags[Fault.TORN],
        )
        if not ok:
            raise SimulatorError("the simulator is stopping")
        self.injected.update(f for f, on in flags.items() if on)
        self.written.append(i)
        if Fault.DUPLICATE in faults and i == n - 1:
            device.announce_again(key, i)
            self.injected[Fault.DUPLICATE] += 1
        if Fault.DISCONNECT in faults and not self.injected[Fault.DISCONNECT] and i == n // 2:
            self.injected[Fault.DISCONNECT] += 1
            device.drop_line()
            time.sleep(RECONNECT_PAUSE_S)  # the cable is out for a while: that is the fault
            device.attach_line()

    def _end(self) -> None:
        if self.key is None:
            return
        self.device.end_series(self.key, self.plan.slices)
        self.played.append(PlayedSeries(self.key, self.plan.slices, tuple(self.written)))
        self.key = None

    def _abandon(self, error: Exception) -> None:
        """The play failed half-way: close the open series as a reconstructor would (HW_ERROR,
        SLICE_LOST for what it will never have, SERIES_END), so the agent's series ends."""
        if self.key is None or self.device.closing:
            return
        key, done = self.key, set(self.written)
        self.device.hardware_error("SIMULATOR_FAILED", f"simulator failed: {error}"[:255], key)
        for index in range(self.plan.slices):
            if index not in done and not self.device.is_announced(key, index):
                self.device.lose_slice(key, index, "simulator failed")
        self.device.end_series(key, self.plan.slices)
        self.key = None


def plan_to_json(plan: Plan) -> dict[str, Any]:
    return {
        "op": "play",
        "token": plan.token,
        "series": plan.series,
        "slices": plan.slices,
        "rate": plan.rate_per_s,
        "faults": sorted(plan.faults),
        "localizer": plan.localizer,
        "dose_check_ctdivol": plan.dose_check_ctdivol_mgy,
    }


def plan_from_json(order: dict[str, Any]) -> Plan:
    try:
        faults = frozenset(Fault(f) for f in order.get("faults") or [])
        rate = order.get("rate")
        localizer = order.get("localizer", False)
        if not isinstance(localizer, bool):
            raise TypeError(f"localizer: expected true or false, got {localizer!r}")
        ctdivol = order.get("dose_check_ctdivol")
        return Plan(
            token=str(order["token"]),
            series=int(order["series"]),
            slices=int(order["slices"]),
            rate_per_s=None if rate is None else float(rate),
            faults=faults,
            localizer=localizer,
            dose_check_ctdivol_mgy=None if ctdivol is None else float(ctdivol),
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
        injected = {str(k): int(v) for k, v in answer.get("injected", {}).items()}
        records = tuple(irradiation_from_json(doc) for doc in answer.get("irradiation", []))
        return Played(series, injected, records)

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


def _lock(path: Path) -> int:
    """An exclusive lock on `path` for as long as the process holds the descriptor."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SimulatorError(f"a simulator is already running here (it holds {path})") from None
    return fd
