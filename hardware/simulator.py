"""The reconstructor's side of a hardware interface, for `modality-agent simulate` and tests.

A `Reconstructor` plays a `Plan` (series of slices under an exam token, at a rate, with
faults) against the far side of an interface, so that the agent's real driver reads it. The
content is the mock's (`hardware.mock`: a helical chest acquisition over the phantom, marked
simulated); only the transport differs. `DropFolderReconstructor` writes the drop folder of
`hardware.directory` (DROPFOLDER.md, which also says what each fault must lead to);
`hardware.serial_simulator` plays the serial-shm device (PROTOCOL.md appendix A).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from hardware.base import HardwareError, ScanRequest, SeriesEnd, SeriesStart, SliceReady
from hardware.directory import (
    DONE,
    END_FILE,
    ERROR_FILE,
    SERIES_FILE,
    encode_end,
    encode_error,
    encode_slice,
    encode_start,
    slice_names,
)
from hardware.dose import IrradiationEvent
from hardware.mock import MockDriver


class Fault(enum.StrEnum):
    """Faults a far side can inject; what each leads to is in DROPFOLDER.md and PROTOCOL.md."""

    PARTIAL = "partial"  # drop folder: a raw file written slowly, in pieces
    GARBAGE = "garbage"  # bytes or files that are not the protocol
    DUPLICATE = "duplicate"  # one slice announced twice
    REORDER = "reorder"  # slices announced pairwise out of order
    LOSE = "lose"  # one slice the hardware itself lost
    HW_ERROR = "hw-error"  # the last series stops half-way with a hardware error
    CRC = "crc"  # serial line: an announcement with a bad CRC
    DROP = "drop"  # serial line: an announcement lost on the line
    TORN = "torn"  # serial-shm: a slot read torn
    DISCONNECT = "disconnect"  # serial line: the line vanishes mid-series, then comes back


def parse_faults(text: str | None) -> frozenset[Fault]:
    """ "lose,reorder" -> {LOSE, REORDER}; ValueError naming the unknown ones."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    known = {f.value: f for f in Fault}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(f.value for f in Fault)}"
        )
    return frozenset(known[n] for n in names)


@dataclass(frozen=True)
class Plan:
    token: str
    series: int
    slices: int  # per series
    rate_per_s: float | None = None  # None: as fast as it can write
    faults: frozenset[Fault] = frozenset()
    # the acquisition's irradiation record (where the interface carries one): preceded by a
    # localizer's; with a CTDIvol dose-check notification above this value (mGy)
    localizer: bool = False
    dose_check_ctdivol_mgy: float | None = None

    def __post_init__(self) -> None:
        if self.series < 1 or self.slices < 1:
            raise ValueError("a plan needs at least one series of at least one slice")
        if self.rate_per_s is not None and not self.rate_per_s > 0:
            raise ValueError(f"rate must be > 0 slices per second, got {self.rate_per_s}")
        if self.dose_check_ctdivol_mgy is not None and not self.dose_check_ctdivol_mgy > 0:
            raise ValueError(
                f"the dose-check CTDIvol must be > 0 mGy, got {self.dose_check_ctdivol_mgy}"
            )


@dataclass(frozen=True)
class PlayedSeries:
    series_key: str
    planned: int  # slices the series should have had
    written: tuple[int, ...]  # indices written intact (each once, whatever the faults)


@dataclass(frozen=True)
class Played:
    series: tuple[PlayedSeries, ...]
    injected: dict[str, int] = field(default_factory=dict)  # fault -> times it was injected
    irradiation: tuple[IrradiationEvent, ...] = ()  # the dose records sent (serial-shm)

    @property
    def expected(self) -> int:
        """Slices the agent should accept (or hold) from this play."""
        return sum(len(s.written) for s in self.series)


class Reconstructor(Protocol):
    """The far side of one hardware interface."""

    faults: frozenset[Fault]  # the faults it can inject

    def play(self, plan: Plan) -> Played:
        """Produce `plan` (blocking, paced by its rate); what was written, for the caller to
        wait for."""
        ...


def mock_content(
    plan: Plan, first_series_number: int = 1
) -> Iterator[SeriesStart | SliceReady | IrradiationEvent]:
    """The mock's events for `plan` (starts, slices and the acquisition's irradiation record,
    after a localizer's when the plan asks; ends are the writer's business), paced by its
    rate, series numbered from `first_series_number`."""
    mock = MockDriver(
        queue_size=4, localizer=plan.localizer, dose_check_ctdivol_mgy=plan.dose_check_ctdivol_mgy
    )
    mock.open()
    try:
        mock.request_scan(ScanRequest(plan.token, plan.series, plan.slices, plan.rate_per_s))
        number = first_series_number
        ended = 0
        while ended < plan.series:
            event = mock.read_event(30.0)
            if event is None:
                raise RuntimeError("the mock produced nothing for 30 s")
            if isinstance(event, SeriesStart):
                yield dataclasses.replace(event, series_number=number)
                number += 1
            elif isinstance(event, SliceReady | IrradiationEvent):
                yield event
            elif isinstance(event, SeriesEnd):
                ended += 1
            elif isinstance(event, HardwareError):
                raise RuntimeError(f"the mock failed: {event.message}")
    finally:
        mock.close()


class DropFolderReconstructor:
    """Writes a plan into a drop folder by the rules of DROPFOLDER.md: each file under a
    temporary name, fsynced, renamed into place; a slice's header after its raw file."""

    faults = frozenset(
        {Fault.PARTIAL, Fault.GARBAGE, Fault.DUPLICATE, Fault.REORDER, Fault.LOSE, Fault.HW_ERROR}
    )

    def __init__(self, folder: Path, *, partial_pause_s: float = 0.05) -> None:
        self.folder = folder
        self.partial_pause_s = partial_pause_s

    def play(self, plan: Plan) -> Played:
        if not self.folder.is_dir():
            raise FileNotFoundError(f"drop folder {self.folder} does not exist")
        faults = plan.faults
        played: list[PlayedSeries] = []
        pending: list[SliceReady] = []  # for REORDER: held back to be written after the next
        current: SeriesStart | None = None
        written: list[int] = []
        last_series = plan.series - 1
        series_done = 0

        def finish(start: SeriesStart) -> None:
            nonlocal series_done
            for s in pending:
                self._slice(s, written)
            pending.clear()
            n = plan.slices
            if Fault.HW_ERROR in faults and series_done == last_series:
                message = "reconstruction aborted: simulated hardware error"
                data = encode_error(start.series_key, "RECON_ABORTED", message, n)
                self._write(start.series_key, ERROR_FILE, data)
            else:
                if Fault.GARBAGE in faults:
                    self._garbage(start, n)
                self._write(start.series_key, END_FILE, encode_end(start.series_key, n))
            played.append(PlayedSeries(start.series_key, n, tuple(sorted(set(written)))))
            written.clear()
            series_done += 1

        for event in mock_content(plan, self._next_series_number(plan.token)):
            if isinstance(event, IrradiationEvent):
                continue  # the drop folder has no form for dose records (DROPFOLDER.md)
            if isinstance(event, SeriesStart):
                if current is not None:
                    finish(current)
                current = event
                (self.folder / event.series_key).mkdir(exist_ok=True)
                self._write(event.series_key, SERIES_FILE, encode_start(event))
                continue
            i, n = event.index, plan.slices
            if Fault.LOSE in faults and i == n // 2:
                continue
            if Fault.HW_ERROR in faults and series_done == last_series and i >= n // 2:
                continue
            if Fault.REORDER in faults and i % 2 == 0 and i + 1 < n:
                pending.append(event)  # written after its successor
                continue
            slow = Fault.PARTIAL in faults and i == (n - 1) // 2
            self._slice(event, written, slow=slow)
            for s in pending:
                self._slice(s, written)
            pending.clear()
            if Fault.DUPLICATE in faults and i == n - 1:
                self._slice(event, written)
        if current is not None:
            finish(current)
        return Played(tuple(played))

    # -- files ----------------------------------------------------------------------------

    def _slice(self, slice_: SliceReady, written: list[int], *, slow: bool = False) -> None:
        header, raw = encode_slice(slice_)
        header_name, raw_name = slice_names(slice_.index)
        if slow:  # in place, in pieces: harmless, since the header is not there yet
            path = self.folder / slice_.series_key / raw_name
            with path.open("wb") as f:
                step = max(1, len(raw) // 4)
                for at in range(0, len(raw), step):
                    f.write(raw[at : at + step])
                    f.flush()
                    time.sleep(self.partial_pause_s)
                os.fsync(f.fileno())
        else:
            self._write(slice_.series_key, raw_name, raw)
        self._write(slice_.series_key, header_name, header)  # last: the completion marker
        written.append(slice_.index)

    def _garbage(self, start: SeriesStart, n: int) -> None:
        """Two bad slices beyond the series' end (so that no real slice is lost)."""
        key = start.series_key
        header, raw = slice_names(n + 1)
        self._write(key, raw, b"\0" * 16)
        self._write(key, header, b"\x00{ not a header")
        bad = SliceReady(
            series_key=key,
            index=n + 2,
            image_position=(0.0, 0.0, 0.0),
            table_position_mm=0.0,
            acquisition_time=_now(),
            pixels=_zeros(start.rows, start.columns),
        )
        header_bytes, raw_bytes = encode_slice(bad)
        doc = json.loads(header_bytes)
        doc["crc32"] ^= 1
        header, raw = slice_names(n + 2)
        self._write(key, raw, raw_bytes)
        self._write(key, header, json.dumps(doc).encode())

    def _write(self, key: str, name: str, data: bytes) -> None:
        """Under a temporary name, fsynced, then renamed into place."""
        folder = self.folder / key
        temp = folder / f".{name}.tmp"
        with temp.open("wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, folder / name)

    def _next_series_number(self, token: str) -> int:
        """Series numbers go on from those already written under `token` (live or done)."""
        highest = 0
        for base in (self.folder, self.folder / DONE):
            for doc_path in base.glob(f"*/{SERIES_FILE}"):
                try:
                    doc = json.loads(doc_path.read_bytes())
                except (OSError, ValueError):
                    continue
                if isinstance(doc, dict) and doc.get("token") == token:
                    number = doc.get("series_number")
                    if isinstance(number, int):
                        highest = max(highest, number)
        return highest + 1


def _now() -> datetime:
    return datetime.now(UTC)


def _zeros(rows: int, columns: int) -> npt.NDArray[np.uint16]:
    return np.zeros((rows, columns), dtype=np.uint16)
