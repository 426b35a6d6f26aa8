"""`simulate` for drivers whose far side is outside the daemon: this process plays the
reconstructor (writes the drop folder, or orders a scan from the running serial-shm
simulator), then waits over the control socket until the daemon has accepted (or held) every
slice played (SPEC §8).

Waiting is driven by the daemon's `slice` events; each one is checked against the `status`
counts (events are only a wake-up: a slow reader may miss some). On timeout, the slices the
agent has not released (still in the drop folder, or held in the ring) are named.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agent.cli import EXIT_FAILED, EXIT_NO_DAEMON, EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE
from agent.config import Config
from agent.control.client import ControlClient, DaemonUnreachable, exit_code
from agent.control.protocol import OpError
from agent.events import Event
from agent.open_series import ranges
from hardware.directory import slice_names
from hardware.event_codec import irradiation_to_json
from hardware.serial_simulator import SerialReconstructor, SimulatorError
from hardware.simulator import DropFolderReconstructor, Plan, Played, Reconstructor, parse_faults

RELEASE_POLL_S = 0.2  # how often the ring is looked at once every slice was taken


def reconstructor_for(cfg: Config, timeout: float | None = None) -> Reconstructor | None:
    """The far side of the configured interface, or None where there is none."""
    if cfg.hardware.driver == "directory":
        return DropFolderReconstructor(Path(cfg.hardware.options["folder"]))
    if cfg.hardware.driver == "serial-shm":
        return SerialReconstructor(str(cfg.hardware.options["port"]), timeout)
    return None


def simulate_far_side(cfg: Config, args: argparse.Namespace) -> int:
    reconstructor = reconstructor_for(cfg, args.timeout)
    if reconstructor is None:
        print(f"simulate: no far side for the {cfg.hardware.driver} driver", file=sys.stderr)
        return EXIT_USAGE
    try:
        faults = parse_faults(args.fault)
        if _dose_options(args) and cfg.hardware.driver != "serial-shm":
            raise ValueError(
                "--localizer and --dose-check-ctdivol: the drop folder carries no "
                "irradiation records (DROPFOLDER.md)"
            )
        if args.timeout is None or not args.timeout > 0:
            raise ValueError("--timeout: expected seconds above 0")
        unavailable = faults - reconstructor.faults
        if unavailable:
            raise ValueError(
                f"--fault {','.join(sorted(unavailable))}: not available for the "
                f"{cfg.hardware.driver} driver; it has {', '.join(sorted(reconstructor.faults))}"
            )
    except ValueError as e:
        print(f"simulate: {e}", file=sys.stderr)
        return EXIT_USAGE
    socket = cfg.agent.control_socket
    try:
        with ControlClient(socket) as client:
            token = args.token or _open_exam_token(client)
            if token is None:
                print("simulate: no exam is open: start one, or give --token", file=sys.stderr)
                return EXIT_FAILED
            try:
                plan = Plan(
                    token,
                    args.series,
                    args.slices,
                    args.rate,
                    faults,
                    localizer=args.localizer,
                    dose_check_ctdivol_mgy=args.dose_check_ctdivol,
                )
            except ValueError as e:
                print(f"simulate: {e}", file=sys.stderr)
                return EXIT_USAGE
            before = _taken(client)
            with ControlClient(socket, timeout=None) as events:
                stream = iter(events.events(["slice"]))  # subscribed before the first file
                try:
                    played = reconstructor.play(plan)
                except TimeoutError as e:
                    print(f"simulate: {e}", file=sys.stderr)
                    return EXIT_TIMEOUT
                except (OSError, SimulatorError) as e:
                    print(f"simulate: cannot play: {e}", file=sys.stderr)
                    return EXIT_FAILED
                left = functools.partial(_left_behind, cfg, reconstructor, played)
                got = _wait(client, stream, events, before, played.expected, left, args.timeout)
    except DaemonUnreachable as e:
        print(f"simulate: {e}", file=sys.stderr)
        return EXIT_NO_DAEMON
    except OpError as e:
        print(f"simulate: {e.message}", file=sys.stderr)
        return exit_code(e)
    result = {"requested": plan.series * plan.slices, "written": played.expected, "accepted": got}
    not_taken = _left_behind(cfg, reconstructor, played)
    if got < played.expected or not_taken:
        print(
            f"simulate: {got} of {played.expected} slices accepted after {args.timeout:g} s; "
            f"not accepted: {_describe(played, not_taken)}",
            file=sys.stderr,
        )
        return EXIT_TIMEOUT
    if args.json:
        series = [s.series_key for s in played.series]
        records = [irradiation_to_json(e) for e in played.irradiation]
        doc = {**result, "series": series, "injected": played.injected, "irradiation": records}
        print(json.dumps(doc, indent=2))
    else:
        print(f"{got} slice(s) accepted in {len(played.series)} series")
    return EXIT_OK


def _dose_options(args: argparse.Namespace) -> bool:
    return bool(args.localizer) or args.dose_check_ctdivol is not None


def _open_exam_token(client: ControlClient) -> str | None:
    exam = client.request("exam.status").get("exam")
    return str(exam["token"]) if exam else None


def _taken(client: ControlClient, timeout: float | None = None) -> int:
    counts: dict[str, Any] = client.request("status", timeout=timeout)["counts"]
    return int(counts["slices_accepted"]) + int(counts["slices_held"])


def _wait(
    client: ControlClient,
    stream: Iterator[Event],
    events: ControlClient,
    before: int,
    wanted: int,
    left_behind: Callable[[], set[tuple[str, int]]],
    timeout: float,
) -> int:
    """Slices accepted or held since `before`, once `wanted` and none of the played ones is
    left behind (not yet taken by the agent: the count alone could include slices of an
    earlier play), or when `timeout` s passed."""
    timer = threading.Timer(timeout, events.close)  # ends the event iteration at the deadline
    timer.daemon = True
    timer.start()
    deadline = time.monotonic() + timeout
    got = 0
    try:
        while True:
            left = deadline - time.monotonic()
            try:
                got = _taken(client, max(left, 0.5)) - before
            except OpError as e:
                if e.code != "timeout":
                    raise
                return got  # the daemon did not answer in time
            if left <= 0 or (got >= wanted and not left_behind()):
                return got
            if got >= wanted:  # all taken, a slot not yet seen released: that has no event
                time.sleep(min(RELEASE_POLL_S, left))  # (a lost release is repaired later)
                continue
            next(stream, None)  # a slice event, or the deadline (then one last look)
    finally:
        timer.cancel()


def _left_behind(cfg: Config, reconstructor: Reconstructor, played: Played) -> set[tuple[str, int]]:
    """(series key, index) of the played slices the agent has not taken yet: still in the
    drop folder, or in held slots of the simulator's ring."""
    if isinstance(reconstructor, SerialReconstructor):
        try:
            held = set(reconstructor.held())
        except (OSError, SimulatorError):
            return set()  # cannot tell: the counts decide
        return {(s.series_key, i) for s in played.series for i in s.written} & held
    folder = Path(cfg.hardware.options["folder"])
    return {
        (s.series_key, i)
        for s in played.series
        for i in s.written
        if (folder / s.series_key / slice_names(i)[0]).exists()
    }


def _describe(played: Played, left: set[tuple[str, int]]) -> str:
    parts = []
    for s in played.series:
        indices = sorted(i for key, i in left if key == s.series_key)
        if indices:
            parts.append(f"series {s.series_key} indices {ranges(indices)}")
    return "; ".join(parts) or "none left behind (the agent may still be filing)"
