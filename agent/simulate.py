"""`simulate` for drivers whose far side is outside the daemon (the drop folder): this process
plays the reconstructor, then waits over the control socket until the daemon has accepted (or
held) every slice it wrote (SPEC §8).

Waiting is driven by the daemon's `slice` events; each one is checked against the `status`
counts (events are only a wake-up: a slow reader may miss some). On timeout, the slices still
in the drop folder, not yet released by the agent, are named.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agent.cli import EXIT_FAILED, EXIT_NO_DAEMON, EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE
from agent.config import Config
from agent.control.client import ControlClient, DaemonUnreachable, exit_code
from agent.control.protocol import OpError
from agent.events import Event
from agent.open_series import ranges
from hardware.directory import slice_names
from hardware.simulator import DropFolderReconstructor, Plan, Played, Reconstructor, parse_faults


def reconstructor_for(cfg: Config) -> Reconstructor | None:
    """The far side of the configured interface, or None where there is none yet."""
    if cfg.hardware.driver == "directory":
        return DropFolderReconstructor(Path(cfg.hardware.options["folder"]))
    return None


def simulate_far_side(cfg: Config, args: argparse.Namespace) -> int:
    reconstructor = reconstructor_for(cfg)
    if reconstructor is None:
        print(f"simulate: no far side for the {cfg.hardware.driver} driver yet", file=sys.stderr)
        return EXIT_USAGE
    try:
        faults = parse_faults(args.fault)
        if args.timeout is None or not args.timeout > 0:
            raise ValueError("--timeout: expected seconds above 0")
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
                plan = Plan(token, args.series, args.slices, args.rate, faults)
            except ValueError as e:
                print(f"simulate: {e}", file=sys.stderr)
                return EXIT_USAGE
            before = _taken(client)
            with ControlClient(socket, timeout=None) as events:
                stream = iter(events.events(["slice"]))  # subscribed before the first file
                try:
                    played = reconstructor.play(plan)
                except OSError as e:
                    print(f"simulate: cannot write: {e}", file=sys.stderr)
                    return EXIT_FAILED
                got = _wait(client, events, stream, before, played.expected, args.timeout)
    except DaemonUnreachable as e:
        print(f"simulate: {e}", file=sys.stderr)
        return EXIT_NO_DAEMON
    except OpError as e:
        print(f"simulate: {e.message}", file=sys.stderr)
        return exit_code(e)
    result = {"requested": plan.series * plan.slices, "written": played.expected, "accepted": got}
    if got < played.expected:
        print(
            f"simulate: {got} of {played.expected} slices accepted after {args.timeout:g} s; "
            f"not accepted: {_missing(cfg, played)}",
            file=sys.stderr,
        )
        return EXIT_TIMEOUT
    if args.json:
        print(json.dumps({**result, "series": [s.series_key for s in played.series]}, indent=2))
    else:
        print(f"{got} slice(s) accepted in {len(played.series)} series")
    return EXIT_OK


def _open_exam_token(client: ControlClient) -> str | None:
    exam = client.request("exam.status").get("exam")
    return str(exam["token"]) if exam else None


def _taken(client: ControlClient, timeout: float | None = None) -> int:
    counts: dict[str, Any] = client.request("status", timeout=timeout)["counts"]
    return int(counts["slices_accepted"]) + int(counts["slices_held"])


def _wait(
    client: ControlClient,
    events: ControlClient,
    stream: Iterator[Event],
    before: int,
    wanted: int,
    timeout: float,
) -> int:
    """Slices accepted or held since `before`, once `wanted` or when `timeout` s passed."""
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
            if got >= wanted or left <= 0:
                return got
            next(stream, None)  # a slice event, or the deadline (then one last look)
    finally:
        timer.cancel()


def _missing(cfg: Config, played: Played) -> str:
    """The slices still in the drop folder (not released by the agent), by series."""
    folder = Path(cfg.hardware.options["folder"])
    parts = []
    for s in played.series:
        left = [i for i in s.written if (folder / s.series_key / slice_names(i)[0]).exists()]
        if left:
            parts.append(f"series {s.series_key} indices {ranges(left)}")
    return "; ".join(parts) or "none left in the drop folder (the agent may still be filing)"
