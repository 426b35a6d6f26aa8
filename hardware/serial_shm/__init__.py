"""The serial-shm driver: the host side of PROTOCOL.md (control on a serial line, pixels in a
shared-memory ring that the reconstructor owns).

One job a module, in the order a newcomer meets them:

    driver.py   SerialShmDriver: the `hardware.base.Driver` interface, the handshake, the I/O
                thread and its clocks, and what each received message does
    link.py     the serial port and the ring mapping, OS errors as `DriverError`
    series.py   what the host knows of each series and dose record (survives reconnects)
    resend.py   re-requests of lost frames and of all state: retries and escalation (pure)

The wire format (frames, messages, sequence accounting) is `hardware.protocol`, the ring layout
`hardware.ring`; both are pure and shared with the device side (`hardware.serial_device`).
"""

from __future__ import annotations

from typing import Any

from hardware.serial_shm.driver import AGENT_NAME, AGENT_VERSION, SerialShmDriver
from hardware.serial_shm.link import SHM_DIR


def create(options: dict[str, Any]) -> SerialShmDriver:
    """For `hardware.DRIVERS`: options `port` (required), `baudrate`, `ring_name`."""
    return SerialShmDriver(**options)


__all__ = ["AGENT_NAME", "AGENT_VERSION", "SHM_DIR", "SerialShmDriver", "create"]
