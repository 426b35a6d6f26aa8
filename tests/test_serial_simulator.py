"""The serial-shm simulator process's own rules: it never takes over a path that is not its
own (a console's real device or ring), one scan at a time, orders that fail say why, and the
faults land where PROTOCOL.md appendix A says (counted in the answer)."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hardware.dose import AcquisitionType, IrradiationEvent
from hardware.serial_device import SHM_DIR
from hardware.serial_simulator import (
    SerialReconstructor,
    SimulatorError,
    SimulatorServer,
    order_socket_for,
    plan_from_json,
    plan_to_json,
)
from hardware.simulator import Fault, Plan, mock_content


@pytest.fixture
def ring() -> Iterator[str]:
    name = f"mat-sim-{uuid.uuid4().hex[:12]}"
    yield name
    (SHM_DIR / name).unlink(missing_ok=True)


def serve(server: SimulatorServer) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    return t


def test_a_real_device_at_the_port_is_never_replaced(tmp_path: Path, ring: str) -> None:
    port = tmp_path / "ttyUSB0"
    port.write_bytes(b"")  # stands for a device node or a udev link to one
    with pytest.raises(SimulatorError, match="not a simulator's line"):
        SimulatorServer(str(port), ring).start()
    assert port.exists() and not port.is_symlink()
    assert not (SHM_DIR / ring).exists()


def test_a_foreign_ring_is_never_deleted(tmp_path: Path, ring: str) -> None:
    (SHM_DIR / ring).write_bytes(b"a real reconstructor's ring")
    with pytest.raises(SimulatorError, match="not made by a simulator"):
        SimulatorServer(str(tmp_path / "tty"), ring).start()
    assert (SHM_DIR / ring).read_bytes() == b"a real reconstructor's ring"
    assert not os.path.lexists(tmp_path / "tty")


def test_a_killed_simulators_leftovers_are_replaced_and_a_running_one_refused(
    tmp_path: Path, ring: str
) -> None:
    port = str(tmp_path / "tty")
    first = SimulatorServer(port, ring)
    first.start()
    with pytest.raises(SimulatorError, match="already running"):
        SimulatorServer(port, ring).start()
    assert Path(port).is_symlink()  # the refused one touched nothing
    # a kill -9 leaves line, ring, marker and order socket: release only the lock
    assert first._lock_fd is not None
    os.close(first._lock_fd)
    first._lock_fd = None
    second = SimulatorServer(port, ring)
    second.start()  # takes over what a simulator left
    try:
        assert os.readlink(port).startswith("/dev/pts/")
    finally:
        second.stop()
    assert not os.path.lexists(port) and not (SHM_DIR / ring).exists()
    assert not order_socket_for(port).exists()


def test_bad_orders_and_a_missing_simulator_say_why(tmp_path: Path, ring: str) -> None:
    port = str(tmp_path / "tty")
    with pytest.raises(SimulatorError, match="no simulator at"):
        SerialReconstructor(port, timeout=5).held()
    server = SimulatorServer(port, ring)
    server.start()
    serve(server)
    try:
        client = SerialReconstructor(port, timeout=5)
        assert client.held() == []
        with pytest.raises(SimulatorError, match="unknown op"):
            client._ask({"op": "explode"})
        with pytest.raises(SimulatorError, match="bad play order"):
            client._ask({"op": "play", "token": "T", "series": "many"})
        with pytest.raises(SimulatorError, match="not available"):
            client.play(Plan("T", 1, 1, faults=frozenset({Fault.PARTIAL})))
    finally:
        server.stop()


def test_one_scan_at_a_time(tmp_path: Path, ring: str) -> None:
    """Nobody releases slots (no agent): the first scan waits on the full ring, a second
    order is refused at once instead of queueing behind it."""
    port = str(tmp_path / "tty")
    server = SimulatorServer(port, ring, slots=1)
    server.start()
    serve(server)
    try:
        outcome: list[BaseException] = []

        def scan() -> None:
            try:
                server.play(Plan("T", 1, 3))
            except SimulatorError as e:
                outcome.append(e)

        first = threading.Thread(target=scan, daemon=True)
        first.start()
        assert server.device.wait_for(lambda: server.device._waiting > 0)
        with pytest.raises(SimulatorError, match="busy"):
            SerialReconstructor(port, timeout=5).play(Plan("T", 1, 1))
    finally:
        server.stop()  # ends the blocked scan: put_slice sees the device closing
    first.join(10)
    assert not first.is_alive() and "stopping" in str(outcome[0])


def test_dose_options_travel_in_the_order_and_shape_the_records() -> None:
    """`--localizer` and `--dose-check-ctdivol` reach the device side as the mock's options:
    a constant-angle record before the helical one, which carries the notification."""
    plan = Plan("T", 1, 1, localizer=True, dose_check_ctdivol_mgy=5.0)
    assert plan_from_json(json.loads(json.dumps(plan_to_json(plan)))) == plan
    records = [e for e in mock_content(plan) if isinstance(e, IrradiationEvent)]
    kinds = [e.acquisition_type for e in records]
    assert kinds == [AcquisitionType.CONSTANT_ANGLE, AcquisitionType.SPIRAL]
    assert [len(e.alerts) for e in records] == [0, 1]
    assert records[1].alerts[0].configured_value == 5.0
    plain = [e for e in mock_content(Plan("T", 1, 1)) if isinstance(e, IrradiationEvent)]
    assert [(e.acquisition_type, e.alerts) for e in plain] == [(AcquisitionType.SPIRAL, ())]


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({"localizer": "yes"}, "localizer: expected true or false"),
        ({"dose_check_ctdivol": -1}, "must be > 0 mGy"),
        ({"dose_check_ctdivol": "high"}, "could not convert"),
    ],
)
def test_bad_dose_options_in_an_order_say_why(extra: dict[str, object], why: str) -> None:
    order = {**plan_to_json(Plan("T", 1, 1)), **extra}
    with pytest.raises(SimulatorError, match="bad play order") as e:
        plan_from_json(order)
    assert why in str(e.value)
