"""The acquisition hardware side: one driver interface, several backends.

`agent` depends on `hardware`, never the reverse; nothing here imports pydicom or pynetdicom.
The backend is chosen by name, like pyserial's URL handlers choose a port implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hardware.base import Driver, DriverError


def _mock(options: Mapping[str, Any]) -> Driver:
    from hardware.mock import MockDriver

    return MockDriver(**options)


def _directory(options: Mapping[str, Any]) -> Driver:
    from hardware.directory import DirectoryDriver

    return DirectoryDriver(**options)


def _serial_shm(options: Mapping[str, Any]) -> Driver:
    from hardware.serial_shm import SerialShmDriver

    return SerialShmDriver(**options)


DRIVERS: dict[str, Callable[[Mapping[str, Any]], Driver]] = {
    "mock": _mock,
    "directory": _directory,
    "serial-shm": _serial_shm,
}


def open_driver(name: str, options: Mapping[str, Any]) -> Driver:
    """A driver of backend `name`, not yet opened."""
    try:
        factory = DRIVERS[name]
    except KeyError:
        known = ", ".join(DRIVERS)
        raise DriverError(f"unknown hardware driver {name!r}; known: {known}") from None
    return factory(options)
