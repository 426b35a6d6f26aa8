"""A tiny systemd notify client (sd_notify(3), sd_watchdog_enabled(3)), no dependencies.

Every call is a no-op returning False when the agent does not run under a `Type=notify` unit
(NOTIFY_SOCKET unset), so the daemon calls these unconditionally. A failure to send is logged
and returned as False, never raised: a lost watchdog ping must not take the daemon down (systemd
restarts it if pings stop for good). Malformed fields are a programming error: ValueError.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

_KEY = re.compile(r"[A-Z][A-Z0-9_]*\Z")


def _address(env: Mapping[str, str]) -> str | None:
    """NOTIFY_SOCKET as a socket address: a path, or '@name' for an abstract socket."""
    value = env.get("NOTIFY_SOCKET", "")
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    raise ValueError(f"NOTIFY_SOCKET={value!r} is neither an absolute path nor '@abstract'")


def message(**fields: str | int) -> bytes:
    """The datagram for `fields`: one KEY=value line each, in the order given."""
    if not fields:
        raise ValueError("sd_notify needs at least one field")
    lines = []
    for key, value in fields.items():
        if not _KEY.match(key):
            raise ValueError(f"sd_notify field name {key!r} is not of the form [A-Z][A-Z0-9_]*")
        text = str(int(value)) if isinstance(value, bool | int) else value
        if "\n" in text:
            raise ValueError(f"sd_notify field {key} contains a newline")
        lines.append(f"{key}={text}")
    return ("\n".join(lines) + "\n").encode()


def notify(**fields: str | int) -> bool:
    """Send `fields` (e.g. READY=1, STATUS="...") to systemd; True when sent."""
    data = message(**fields)
    try:
        address = _address(os.environ)
    except ValueError as e:
        log.warning("sd_notify: %s", e)
        return False
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:  # close-on-exec
            sock.sendto(data, address)
    except OSError as e:
        log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), e)
        return False
    return True


def ready(status: str | None = None) -> bool:
    """Start-up is complete (the unit leaves 'activating'); optionally a status line."""
    return notify(READY=1) if status is None else notify(READY=1, STATUS=status)


def status(text: str) -> bool:
    """A one-line status shown by `systemctl status`. No patient identifiers in it."""
    return notify(STATUS=text)


def watchdog() -> bool:
    """Keep-alive ping; send every `watchdog_interval()` seconds while healthy."""
    return notify(WATCHDOG=1)


def stopping() -> bool:
    """An orderly shutdown has begun."""
    return notify(STOPPING=1)


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds between watchdog pings (half the unit's WatchdogSec), or None when off.

    As sd_watchdog_enabled(3): WATCHDOG_USEC must be a positive integer, and WATCHDOG_PID, when
    set, must name this process (otherwise the watchdog is meant for another one).
    """
    env = os.environ if environ is None else environ
    usec_text = env.get("WATCHDOG_USEC", "")
    if not usec_text:
        return None
    try:
        usec = int(usec_text, 10)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec_text)
        return None
    if usec <= 0:
        return None
    pid_text = env.get("WATCHDOG_PID", "")
    if pid_text:
        try:
            target = int(pid_text, 10)
        except ValueError:
            log.warning("ignoring the watchdog: WATCHDOG_PID=%r is not a process id", pid_text)
            return None
        if target != (os.getpid() if pid is None else pid):
            return None
    return usec / 2 / 1_000_000
