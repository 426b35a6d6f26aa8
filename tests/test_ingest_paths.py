"""The ingest fast paths: a large spool file's blocks written around the page cache (and every
way back to an ordinary write), index reads that never wait for a commit, and the driver's
copy of a slot made outside its lock."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.spool import Spool
from agent.spool import files as spool_files
from hardware.base import SliceReady
from hardware.serial_device import SerialDevice
from hardware.serial_shm import SerialShmDriver
from hardware.serial_shm import driver as shm_driver
from tests.test_serial_shm import Agent, device, driver  # noqa: F401 (fixtures)
from tests.test_spool import STUDY, rec

WAIT_S = 10.0


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool(tmp_path / "spool") as s:
        yield s


def image(size: int) -> list[bytes | memoryview]:
    """A file in pieces as the assembler gives them: a header, then 16-bit pixels (2-D)."""
    header = bytes(range(256)) * 3
    count = (size - len(header)) // 2
    pixels = np.arange(count, dtype="<u2").reshape(1, count)
    return [header, memoryview(pixels.data)]


def joined(data: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(memoryview(p).cast("B")) for p in data)


def direct_writes(monkeypatch: pytest.MonkeyPatch, fail: int | None = None) -> list[int]:
    """The sizes written while O_DIRECT was on; with `fail`, each such write raises it."""
    sizes: list[int] = []
    real = os.write

    def write(fd: int, data: memoryview) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            if fail is not None:
                raise OSError(fail, os.strerror(fail))
            sizes.append(len(data))
        return real(fd, data)

    monkeypatch.setattr(spool_files.os, "write", write)
    return sizes


@pytest.mark.parametrize(
    "size",
    [
        spool_files.DIRECT_MIN,
        512 * 1024 + 1234,
        3 * 1024 * 1024 + 4096,
        1000,
        spool_files.DIRECT_MAX + 4096,  # beyond: no thread keeps a buffer that large
    ],
)
def test_a_large_file_goes_around_the_page_cache_in_whole_blocks(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    data = image(size)
    size = len(joined(data))
    sizes = direct_writes(monkeypatch)
    inst = spool.accept(rec(1), data, ["PACS"])
    assert spool.read(inst) == joined(data) and inst.size == size
    block = spool_files.DIRECT_BLOCK
    if not spool_files.DIRECT_MIN <= size <= spool_files.DIRECT_MAX:
        assert sizes == []
    else:  # (on a file system without direct I/O there is none: see the test below)
        assert sum(sizes) in (0, size - size % block)
        assert all(n % block == 0 for n in sizes)


def test_the_thread_s_buffer_is_kept_and_grown(tmp_path: Path) -> None:
    for n, size in enumerate([300_000, 200_000, 900_000]):
        data = os.urandom(size)
        spool_files.write_durable(tmp_path / f"{n}.dcm", data)
        assert (tmp_path / f"{n}.dcm").read_bytes() == data
    buffer = spool_files._direct.buffer
    assert len(buffer) >= 900_000 and len(buffer) % 4096 == 0


def test_a_file_system_without_direct_io_gets_an_ordinary_write(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = fcntl.fcntl

    def no_direct(fd: int, cmd: int, arg: int = 0) -> int:
        if cmd == fcntl.F_SETFL and arg & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")  # e.g. tmpfs before Linux 6.6
        return real(fd, cmd, arg)

    monkeypatch.setattr(spool_files.fcntl, "fcntl", no_direct)
    sizes = direct_writes(monkeypatch)
    data = image(600_000)
    inst = spool.accept(rec(1), data, ["PACS"])
    assert spool.read(inst) == joined(data) and sizes == []


def test_a_direct_write_refused_at_once_is_made_an_ordinary_one(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct_writes(monkeypatch, fail=errno.EINVAL)  # e.g. a disk with larger blocks
    data = image(600_000)
    inst = spool.accept(rec(1), data, ["PACS"])
    assert spool.read(inst) == joined(data)


def test_a_failed_direct_write_fails_the_accept_and_leaves_no_file(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct_writes(monkeypatch, fail=errno.EIO)
    with pytest.raises(OSError) as raised:
        spool.accept(rec(1), image(600_000), ["PACS"])
    assert raised.value.errno == errno.EIO
    assert list((spool.root / "instances" / STUDY).iterdir()) == []
    monkeypatch.undo()
    inst = spool.accept(rec(1), image(600_000), ["PACS"])
    assert spool.read(inst) == joined(image(600_000))


def test_reads_of_the_index_do_not_wait_for_a_commit(spool: Spool) -> None:
    """An accept looks its SOP Instance UID up while another group of accepts commits."""
    inst = spool.accept(rec(1), b"x" * 100, ["PACS"])
    found: list[object] = []
    with spool._index._writer.use():  # as a commit in progress holds it
        reader = threading.Thread(
            target=lambda: found.extend([spool.get(rec(1).sop_instance_uid), spool.instances()])
        )
        reader.start()
        reader.join(WAIT_S)
        assert not reader.is_alive()
    assert found == [inst, [inst]]


def test_the_slot_is_copied_outside_the_driver_s_lock(
    device: SerialDevice,  # noqa: F811
    driver: SerialShmDriver,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the I/O thread copies a slot (and checks its CRC), another thread may take the
    driver's lock: a worker's release, the acquisition's read_event."""
    taken: list[bool] = []
    real = shm_driver.read_slot

    def read_slot(*args: object, **kwargs: object) -> object:
        other = threading.Thread(target=lambda: taken.append(_take(driver._lock)))
        other.start()
        other.join(WAIT_S)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(shm_driver, "read_slot", read_slot)
    driver.set_exam_token("EX")
    driver.open()
    assert device.wait_for(lambda: device.token == "EX")
    device.scan(1, 3)
    agent = Agent(driver, device)
    agent.pump(lambda: len(agent.ends) == 1)
    assert len([e for e in agent.events if isinstance(e, SliceReady)]) == 3
    assert taken == [True] * 3


def _take(lock: threading.RLock) -> bool:
    if not lock.acquire(timeout=WAIT_S / 2):
        return False
    lock.release()
    return True
