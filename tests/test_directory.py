"""The drop-folder driver on a temporary folder, with the simulator (or single files) on the
writer's side: inotify and polling, completion rules, every fault, restarts."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from hardware import open_driver
from hardware.base import DriverError, Event, HardwareError, SeriesEnd, SeriesStart, SliceReady
from hardware.directory import (
    BAD_FILE,
    DONE,
    END_FILE,
    QUARANTINE,
    SERIES_FILE,
    DirectoryDriver,
    encode_end,
    encode_slice,
    encode_start,
    slice_names,
)
from hardware.simulator import DropFolderReconstructor, Fault, Plan, mock_content, parse_faults

MODES = [pytest.param(False, id="inotify"), pytest.param(True, id="polling")]


@pytest.fixture(params=MODES)
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DirectoryDriver]:
    d = DirectoryDriver(folder=tmp_path, polling=request.param, poll_interval=0.05)
    d.open()
    yield d
    d.close()


def play(folder: Path, series: int = 1, slices: int = 4, faults: str = "") -> list[str]:
    played = DropFolderReconstructor(folder, partial_pause_s=0.01).play(
        Plan("TOKEN", series, slices, faults=parse_faults(faults))
    )
    return [s.series_key for s in played.series]


def read(driver: DirectoryDriver, ends: int = 1, release: bool = True) -> list[Event]:
    """Events until `ends` series ended (slices released as the agent would)."""
    events: list[Event] = []
    while sum(isinstance(e, SeriesEnd) for e in events) < ends:
        event = driver.read_event(10)
        assert event is not None, f"nothing within 10 s after {summary(events)}"
        events.append(event)
        if release and isinstance(event, SliceReady):
            driver.release(event)
    return events


def summary(events: list[Event]) -> list[str]:
    out = []
    for e in events:
        if isinstance(e, SliceReady):
            out.append(f"slice {e.index}")
        elif isinstance(e, HardwareError):
            out.append(f"error {e.code}")
        else:
            out.append(type(e).__name__)
    return out


def write(folder: Path, name: str, data: bytes) -> None:
    temp = folder / f".{name}.tmp"
    temp.write_bytes(data)
    temp.rename(folder / name)


def one_series(n: int = 3) -> tuple[SeriesStart, list[SliceReady]]:
    events = list(mock_content(Plan("TOKEN", 1, n)))
    (start,) = [e for e in events if isinstance(e, SeriesStart)]
    return start, [e for e in events if isinstance(e, SliceReady)]


# -- the basics --------------------------------------------------------------------------


def test_series_delivered_in_order_and_moved_aside(driver: DirectoryDriver) -> None:
    folder = driver.folder
    (key,) = play(folder, slices=4)
    events = read(driver)
    assert summary(events) == ["SeriesStart", *(f"slice {i}" for i in range(4)), "SeriesEnd"]
    start = events[0]
    assert isinstance(start, SeriesStart) and start.token == "TOKEN" and start.simulated
    first = events[1]
    assert isinstance(first, SliceReady) and first.pixels.shape == (start.rows, start.columns)
    assert first.pixels.dtype == np.uint16 and int(first.pixels.max()) > 1000  # a phantom
    assert driver.read_event(0.05) is None  # the end was handled: the series is tidied
    assert sorted(p.name for p in folder.iterdir()) == [DONE, QUARANTINE]
    done = sorted(p.name for p in (folder / DONE / key).iterdir())
    assert done == sorted([SERIES_FILE, END_FILE, *(n for i in range(4) for n in slice_names(i))])


def test_registered_in_the_driver_table(tmp_path: Path) -> None:
    d = open_driver("directory", {"folder": tmp_path, "polling": True, "poll_interval": 0.5})
    assert isinstance(d, DirectoryDriver) and d.polling


def test_open_says_what_is_wrong_with_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="does not exist"):
        DirectoryDriver(folder=tmp_path / "nowhere").open()
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        with pytest.raises(DriverError, match="not writable"):
            DirectoryDriver(folder=locked).open()
    d = DirectoryDriver(folder=tmp_path)
    with pytest.raises(DriverError, match="not open"):
        d.read_event(0)


def test_files_found_at_open_and_unreleased_ones_announced_again(tmp_path: Path) -> None:
    (key,) = play(tmp_path, slices=3)  # written while no agent ran
    d = DirectoryDriver(folder=tmp_path)
    d.open()
    start, first, second = (d.read_event(5) for _ in range(3))
    assert isinstance(start, SeriesStart) and isinstance(first, SliceReady)
    assert isinstance(second, SliceReady)
    d.release(first)  # the agent dies before releasing the second
    d.close()
    d = DirectoryDriver(folder=tmp_path)
    d.open()
    events = read(d)
    assert summary(events) == ["SeriesStart", "slice 1", "slice 2", "SeriesEnd"]
    d.read_event(0)
    d.close()
    assert not (tmp_path / key).exists()


def test_incomplete_and_temporary_files_are_never_read(driver: DirectoryDriver) -> None:
    start, slices = one_series(2)
    folder = driver.folder / start.series_key
    folder.mkdir()
    header, raw = encode_slice(slices[0])
    # a slice header before its series start: it waits
    write(folder, slice_names(0)[1], raw)
    write(folder, slice_names(0)[0], header)
    assert driver.read_event(0.2) is None
    write(folder, SERIES_FILE, encode_start(start))
    assert isinstance(driver.read_event(5), SeriesStart)
    s0 = driver.read_event(5)
    assert isinstance(s0, SliceReady) and s0.index == 0
    driver.release(s0)
    # half a raw file in place, and a header under its temporary name: nothing yet
    header, raw = encode_slice(slices[1])
    (folder / slice_names(1)[1]).write_bytes(raw[: len(raw) // 2])
    (folder / f".{slice_names(1)[0]}.tmp").write_bytes(header)
    assert driver.read_event(0.2) is None
    (folder / slice_names(1)[1]).write_bytes(raw)
    (folder / f".{slice_names(1)[0]}.tmp").rename(folder / slice_names(1)[0])
    assert isinstance(s1 := driver.read_event(5), SliceReady) and s1.index == 1
    assert np.array_equal(s1.pixels, slices[1].pixels)


def test_a_gap_waits_then_gives_up(tmp_path: Path) -> None:
    driver = DirectoryDriver(folder=tmp_path, gap_wait=0.3)
    driver.open()
    try:
        start, slices = one_series(3)
        folder = tmp_path / start.series_key
        folder.mkdir()
        write(folder, SERIES_FILE, encode_start(start))
        for s in (slices[0], slices[2]):
            header, raw = encode_slice(s)
            write(folder, slice_names(s.index)[1], raw)
            write(folder, slice_names(s.index)[0], header)
        assert isinstance(driver.read_event(5), SeriesStart)
        assert isinstance(s0 := driver.read_event(5), SliceReady) and s0.index == 0
        assert driver.read_event(0.1) is None  # slice 2 waits for slice 1
        assert isinstance(s2 := driver.read_event(5), SliceReady) and s2.index == 2
        write(folder, END_FILE, encode_end(start.series_key, 3))
        end = driver.read_event(5)
        assert isinstance(end, SeriesEnd) and end.slices == 3
    finally:
        driver.close()


# -- the simulator's faults --------------------------------------------------------------


def test_fault_names() -> None:
    assert parse_faults(" lose, hw-error ") == {Fault.LOSE, Fault.HW_ERROR}
    with pytest.raises(ValueError, match="bogus"):
        parse_faults("lose,bogus")


def test_partial_is_never_read_half_written(driver: DirectoryDriver) -> None:
    play(driver.folder, slices=5, faults="partial")
    events = read(driver)
    assert summary(events) == ["SeriesStart", *(f"slice {i}" for i in range(5)), "SeriesEnd"]
    assert driver.bad_files == 0


def test_reorder_is_delivered_in_index_order(driver: DirectoryDriver) -> None:
    play(driver.folder, slices=6, faults="reorder")
    assert summary(read(driver))[1:-1] == [f"slice {i}" for i in range(6)]


def test_duplicate_gives_one_slice(driver: DirectoryDriver) -> None:
    play(driver.folder, slices=4, faults="duplicate")
    assert summary(read(driver))[1:-1] == [f"slice {i}" for i in range(4)]


def test_a_slice_written_again_after_its_release_is_not_announced(
    driver: DirectoryDriver,
) -> None:
    (key,) = play(driver.folder, slices=2)
    done = driver.folder / DONE / key
    read(driver, release=True)
    driver.read_event(0)  # tidied
    # the reconstructor writes slice 1 again into a fresh folder of the same series
    (driver.folder / key).mkdir()
    for name in (*slice_names(1), SERIES_FILE, END_FILE):
        write(driver.folder / key, name, (done / name).read_bytes())
    events = read(driver)
    assert summary(events) == ["SeriesStart", "SeriesEnd"]
    assert driver.duplicates == 1


def test_lose_leaves_a_gap_for_the_agent_to_name(driver: DirectoryDriver) -> None:
    play(driver.folder, slices=5, faults="lose")
    events = read(driver)
    assert summary(events)[1:] == ["slice 0", "slice 1", "slice 3", "slice 4", "SeriesEnd"]
    end = events[-1]
    assert isinstance(end, SeriesEnd) and end.slices == 5  # index 2 missing: a gap alarm


def test_garbage_is_quarantined_and_reported(driver: DirectoryDriver) -> None:
    (key,) = play(driver.folder, slices=3, faults="garbage")
    events = read(driver)
    assert summary(events) == [
        "SeriesStart",
        "slice 0",
        "slice 1",
        "slice 2",
        f"error {BAD_FILE}",
        f"error {BAD_FILE}",
        "SeriesEnd",
    ]
    errors = [e for e in events if isinstance(e, HardwareError)]
    assert "not JSON" in errors[0].message and "CRC-32" in errors[1].message
    assert all(e.series_key == key for e in errors)
    assert driver.bad_files == 2
    quarantined = sorted(p.name for p in (driver.folder / QUARANTINE / key).iterdir())
    assert quarantined == sorted([*slice_names(4), *slice_names(5)])


def test_hw_error_closes_the_series_short(driver: DirectoryDriver) -> None:
    first, second = play(driver.folder, series=2, slices=4, faults="hw-error")
    events = read(driver, ends=2)
    names = summary(events)
    assert names.count("SeriesEnd") == 2
    tail = [summary([e])[0] for e in events if getattr(e, "series_key", None) == second]
    assert tail == ["SeriesStart", "slice 0", "slice 1", "error RECON_ABORTED", "SeriesEnd"]
    end = events[-1]
    assert isinstance(end, SeriesEnd) and end.series_key == second and end.slices == 4
    assert sum(1 for e in events if getattr(e, "series_key", None) == first) == 6


def test_bad_files_never_stop_the_driver(driver: DirectoryDriver) -> None:
    folder = driver.folder
    write(folder, "stray.txt", b"hello")  # not a series folder
    bad = folder / "BAD"
    bad.mkdir()
    write(bad, SERIES_FILE, b"[1, 2]")
    write(bad, "notes.txt", b"?")
    start, slices = one_series(1)
    wrong = json.loads(encode_start(start))
    wrong["series_key"] = "OTHER"
    write(bad, SERIES_FILE + "x", b"")  # an unknown name
    events = [driver.read_event(2) for _ in range(4)]
    assert all(isinstance(e, HardwareError) and e.code == BAD_FILE for e in events), events
    assert driver.read_event(0.1) is None
    assert driver.bad_files == 4
    assert (folder / QUARANTINE / "stray.txt").exists()
    # a good series start written afterwards is taken
    write(bad, SERIES_FILE, json.dumps({**wrong, "series_key": "BAD"}).encode())
    e = driver.read_event(5)
    assert isinstance(e, SeriesStart) and e.series_key == "BAD"
    naive = SliceReady("BAD", 0, (0, 0, 0), 0, datetime.now(), slices[0].pixels)
    header, raw = encode_slice(naive)
    write(bad, slice_names(0)[1], raw)
    write(bad, slice_names(0)[0], header)
    e = driver.read_event(5)
    assert isinstance(e, HardwareError) and "UTC offset" in e.message
    ok = SliceReady("BAD", 1, (0, 0, 0), 0, datetime.now(UTC), slices[0].pixels)
    header, raw = encode_slice(ok)
    write(bad, slice_names(1)[1], raw[:-2])  # short
    write(bad, slice_names(1)[0], header)
    e = driver.read_event(5)
    assert isinstance(e, HardwareError) and "bytes" in e.message
