"""The two physical paths of serial-shm: the serial line (pyserial) and the ring (mmap).

Every OS error becomes a `DriverError` naming the port or the ring file, so that the driver
has one kind of failure to turn into a reconnect (PROTOCOL.md §7.3).
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import serial

from hardware.base import DriverError
from hardware.protocol import HelloAckMsg
from hardware.ring import RingError, RingHeader

SHM_DIR = Path("/dev/shm")
READ_TIMEOUT_S = 0.05  # a read returns after this long without data: the clocks are kept


def open_port(url: str, baudrate: int) -> serial.Serial:
    """The serial port (a device path or a pyserial URL), input discarded (§7.1 step 1)."""
    try:
        port = serial.serial_for_url(url, baudrate, timeout=READ_TIMEOUT_S)
    except (serial.SerialException, OSError, ValueError) as e:
        raise DriverError(f"serial-shm: cannot open {url}: {e}") from e
    try:
        port.reset_input_buffer()
    except (serial.SerialException, OSError) as e:
        port.close()
        raise DriverError(f"serial-shm: {url}: {e}") from e
    return port


def read(port: serial.Serial, name: str) -> bytes:
    """What has arrived (at least one byte, or nothing after READ_TIMEOUT_S)."""
    try:
        data: bytes = port.read(max(1, port.in_waiting))
        return data
    except (serial.SerialException, OSError, TypeError) as e:
        raise DriverError(f"serial-shm: {name}: {e}") from e


def write(port: serial.Serial, data: bytes, name: str) -> None:
    try:
        port.write(data)
    except (serial.SerialException, OSError, TypeError) as e:
        raise DriverError(f"serial-shm: {name}: {e}") from e


def map_ring(ack: HelloAckMsg) -> tuple[mmap.mmap, RingHeader]:
    """Map `/dev/shm/<ring_name>` read-only and check its header against HELLO_ACK (§7.1
    step 4): a mismatch is a `DriverError` naming both values."""
    path = SHM_DIR / ack.ring_name
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        raise DriverError(f"serial-shm: cannot open ring {path}: {e}") from e
    try:
        mm = mmap.mmap(fd, 0, mmap.MAP_SHARED, mmap.PROT_READ)
    except (OSError, ValueError) as e:
        raise DriverError(f"serial-shm: cannot map ring {path}: {e}") from e
    finally:
        os.close(fd)
    try:
        with memoryview(mm) as view:
            header = RingHeader.unpack(view)
    except RingError as e:
        mm.close()
        raise DriverError(f"serial-shm: ring {path}: {e}") from e
    checks = (
        ("generation", header.generation, ack.ring_generation),
        ("slot_count", header.slot_count, ack.slot_count),
        ("slot_size", header.slot_size, ack.slot_size),
        ("max_rows", header.max_rows, ack.max_rows),
        ("max_columns", header.max_columns, ack.max_columns),
        ("bytes_per_pixel", header.bytes_per_pixel, ack.bytes_per_pixel),
    )
    for name, ring_value, ack_value in checks:
        if ring_value != ack_value:
            mm.close()
            raise DriverError(
                f"serial-shm: ring {path} {name} is {ring_value}, HELLO_ACK says {ack_value}"
            )
    return mm, header
