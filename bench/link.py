"""A network link of a given rate for the send benchmarks: a veth pair between this network
namespace and one the benchmark creates (the archive listens inside it), shaped with `tc tbf`
(token bucket) in both directions. Needs root and iproute2; everything is removed on exit."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

DESCRIPTION = "veth pair into a network namespace created by the bench, tc tbf rate both ways"


@dataclass(frozen=True)
class Link:
    netns: str
    host: str  # the archive's address, inside netns
    rate: str


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def _shape(device: str, rate: str, netns: str = "") -> None:
    """A token bucket of `rate`; its burst is 2 ms of the rate (at least 64 KiB, as the veth
    carries 64 KiB GSO packets), its queue 50 ms."""
    bits_per_s = _bits(rate)
    burst = max(65536, bits_per_s // 8 // 500)
    where = ["ip", "netns", "exec", netns] if netns else []
    args = [*where, "tc", "qdisc", "add", "dev", device, "root", "tbf", "rate", rate]
    args += ["burst", str(burst), "latency", "50ms"]
    done = subprocess.run(args, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {done.stderr.strip()}")


def _bits(rate: str) -> int:
    units = {"kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
    for unit, factor in units.items():
        if rate.endswith(unit):
            return int(float(rate.removesuffix(unit)) * factor)
    raise ValueError(f"rate {rate!r}: expected a number and kbit, mbit or gbit")


def unavailable() -> str | None:
    """Why a shaped link cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (ip netns, tc)"
    probe = f"mabench-probe-{os.getpid()}"
    try:
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except (RuntimeError, OSError) as e:
        return f"network namespaces unavailable: {e}"
    return None


@contextlib.contextmanager
def shaped(rate: str) -> Iterator[Link]:
    """A link of `rate` (tc words: "100mbit", "1gbit") to a fresh namespace."""
    tag = f"{os.getpid() % 10000}"
    netns, outside, inside = f"mabench-{tag}", f"mab{tag}a", f"mab{tag}b"
    _ip("netns", "add", netns)
    try:
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", netns)
        _ip("addr", "add", "10.213.0.1/30", "dev", outside)
        _ip("link", "set", outside, "up")
        _ip("-n", netns, "addr", "add", "10.213.0.2/30", "dev", inside)
        _ip("-n", netns, "link", "set", inside, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _shape(outside, rate)
        _shape(inside, rate, netns)
        yield Link(netns, "10.213.0.2", rate)
    finally:
        with contextlib.suppress(RuntimeError):
            _ip("link", "del", outside)  # its peer goes with it
        _ip("netns", "del", netns)
