"""One function per CLI subcommand: each takes the parsed arguments and returns an exit code."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from agent import config
from agent.cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def check_config(args: argparse.Namespace) -> int:
    try:
        cfg = config.load(args.config)
    except config.ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return EXIT_USAGE
    names = ", ".join(d.name for d in cfg.destinations)
    print(f"{cfg.source}: valid ({cfg.hardware.driver} hardware; destinations: {names})")
    return EXIT_OK


def archive(args: argparse.Namespace) -> int:
    from agent.net.archive import Archive

    if not 0 <= args.port <= 65535:
        print(f"archive: --port expected 0 to 65535, got {args.port}", file=sys.stderr)
        return EXIT_USAGE
    try:
        scp = Archive(args.dir, args.port, args.ae, args.host).start()
    except OSError as e:
        print(f"archive: cannot listen on {args.host}:{args.port}: {e.strerror}", file=sys.stderr)
        return EXIT_FAILED
    print(f"archive {scp.ae_title} listening on {scp.host}:{scp.port}, writing to {args.dir}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    scp.stop()
    print(f"archive stopped after {scp.received} instances")
    return EXIT_OK


def demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    if args.slices < 1:
        print("demo: --slices expected at least 1", file=sys.stderr)
        return EXIT_USAGE
    return run_demo(args.slices, args.workdir, args.json)
