"""One function per CLI subcommand: each takes the parsed arguments and returns an exit code."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from agent import config
from agent.cli import EXIT_FAILED, EXIT_NO_DAEMON, EXIT_OK, EXIT_USAGE


def check_config(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if cfg is None:
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


# -- the daemon and its clients -------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from agent.control.server import SocketInUse
    from agent.daemon import Daemon
    from hardware.base import DriverError

    cfg = _load(args)
    if cfg is None:
        return EXIT_USAGE
    daemon = Daemon(cfg)
    try:
        daemon.start()
    except (SocketInUse, DriverError, OSError) as e:
        print(f"run: cannot start: {e}", file=sys.stderr)
        return EXIT_FAILED
    try:
        daemon.run_forever()
    finally:
        daemon.stop()
    return EXIT_OK


def exam_start(args: argparse.Namespace) -> int:
    payload = {
        "patient_id": args.patient_id,
        "patient_name": args.patient_name,
        "birth_date": args.birth_date,
        "sex": args.sex,
        "weight_kg": args.weight,
        "size_m": args.size,
        "accession": args.accession,
        "sps_id": args.sps_id,
        "unscheduled": args.unscheduled,
        "operator": args.operator,
        "destinations": args.dest,
    }
    return _call(args, "exam.start", {k: v for k, v in payload.items() if v not in (None, [])})


def exam_end(args: argparse.Namespace) -> int:
    payload = {} if args.discontinue is None else {"discontinue": args.discontinue}
    return _call(args, "exam.end", payload)


def exam_status(args: argparse.Namespace) -> int:
    return _call(args, "exam.status", {})


def exam_assign(args: argparse.Namespace) -> int:
    payload = {
        "series_instance_uid": args.series,
        "exam": args.to,
        "operator": args.operator,
        "incomplete": args.incomplete,
    }
    return _call(args, "exam.assign", {k: v for k, v in payload.items() if v})


def simulate(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if cfg is None:
        return EXIT_USAGE
    if cfg.hardware.driver != "mock":  # the far side runs here, the daemon reads it
        from agent.simulate import simulate_far_side

        return simulate_far_side(cfg, args)
    if args.fault:
        print(
            "simulate: --fault is for drivers with a far side (directory, serial-shm)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.localizer or args.dose_check_ctdivol is not None:
        print(
            "simulate: for the mock, set localizer and dose_check_ctdivol_mgy in [hardware]",
            file=sys.stderr,
        )
        return EXIT_USAGE
    payload = {"series": args.series, "slices": args.slices, "timeout": args.timeout}
    if args.rate:
        payload["rate"] = args.rate
    if args.token:
        payload["token"] = args.token
    return _call(args, "simulate", payload, timeout=args.timeout + 30)


def simulator(args: argparse.Namespace) -> int:
    from hardware.serial_simulator import DEFAULT_RING_NAME, SimulatorError, SimulatorServer

    cfg = _load(args)
    if cfg is None:
        return EXIT_USAGE
    if cfg.hardware.driver != "serial-shm":
        print(
            f"simulator: is the serial-shm device; this config's driver is "
            f"{cfg.hardware.driver} (`simulate` plays its far side by itself)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not 1 <= args.slots <= 65535:
        print(f"simulator: --slots expected 1 to 65535, got {args.slots}", file=sys.stderr)
        return EXIT_USAGE
    options = cfg.hardware.options
    try:
        server = SimulatorServer(
            str(options["port"]), options.get("ring_name") or DEFAULT_RING_NAME, slots=args.slots
        )
        server.start()
    except (SimulatorError, OSError) as e:
        print(f"simulator: {e}", file=sys.stderr)
        return EXIT_FAILED
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(
        f"simulator ready: line {server.line}, ring {server.device.ring_path}, "
        f"orders at {server.orders}",
        flush=True,
    )
    stop.wait()
    server.stop()
    return EXIT_OK


def queue(args: argparse.Namespace) -> int:
    return _call(args, "queue", {}, show=_show_queue)


def retry(args: argparse.Namespace) -> int:
    payload = {k: v for k, v in (("study", args.study), ("dest", args.dest)) if v}
    return _call(args, "retry", payload)


def wait(args: argparse.Namespace) -> int:
    return _call(args, "wait", {"timeout": args.timeout}, timeout=args.timeout + 30)


def worklist(args: argparse.Namespace) -> int:
    payload = {
        "date": args.date,
        "patient_name": args.patient_name,
        "accession": args.accession,
        "sps_id": args.sps_id,
        "cached": args.cached or None,
    }
    return _call(
        args, "worklist", {k: v for k, v in payload.items() if v is not None}, show=_show_worklist
    )


def echo(args: argparse.Namespace) -> int:
    code = _call(args, "echo", {"names": args.names} if args.names else {}, show=_show_echo)
    return code


def tui(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if cfg is None:
        return EXIT_USAGE
    from agent.tui.app import run_tui

    return run_tui(cfg)


def _load(args: argparse.Namespace) -> config.Config | None:
    try:
        return config.load(args.config)
    except config.ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return None


def dose_check(args: argparse.Namespace) -> int:
    from agent.dose.check import main as check

    return check([str(f) for f in args.files])


def audit(args: argparse.Namespace) -> int:
    return _call(args, "audit", {"last": args.last}, show=_show_audit)


def _show_audit(doc: dict[str, Any]) -> int:
    for r in doc["records"]:
        who = " / ".join(x for x in (r["operator"], r["os_user"]) if x) or "-"
        objects = " ".join(f"{k}={v}" for k, v in r["objects"].items())
        print(f"{r['time']}  {r['action']:<18} {who:<24} {r['outcome']}  {objects}".rstrip())
    if doc["damaged_lines"]:
        print(f"damaged lines (torn by a crash?): {doc['damaged_lines']}")
    return EXIT_OK


def _call(
    args: argparse.Namespace,
    op: str,
    payload: dict[str, Any],
    timeout: float | None = 60,
    show: Callable[[dict[str, Any]], int] | None = None,
) -> int:
    from agent.control.client import ControlClient, DaemonUnreachable, exit_code
    from agent.control.protocol import OpError

    cfg = _load(args)
    if cfg is None:
        return EXIT_USAGE
    try:
        with ControlClient(cfg.agent.control_socket, timeout=timeout) as client:
            result = client.request(op, payload, timeout=timeout)
    except DaemonUnreachable as e:
        print(f"{args.command}: {e}", file=sys.stderr)
        return EXIT_NO_DAEMON
    except OpError as e:
        print(f"{args.command}: {e.message}", file=sys.stderr)
        if args.json and e.details:
            print(json.dumps(e.details, indent=2), file=sys.stderr)
        return exit_code(e)
    if args.json or show is None:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    return show(result)


def _show_queue(doc: dict[str, Any]) -> int:
    if not doc["studies"]:
        print("nothing queued")
    for s in doc["studies"]:
        label = s["accession_number"] or ("unscheduled" if s["unscheduled"] else "")
        print(f"{s['study_instance_uid']}  {label}  {s['images']} image(s)")
        for d in s["destinations"]:
            extra = f"  next attempt {d['next_attempt']}" if d["next_attempt"] else ""
            error = f"  last error: {d['last_error']}" if d["last_error"] else ""
            print(
                f"  {d['name']:<16} {d['state']:<10} {d['sent']}/{d['images']} sent"
                f", {d['failed']} failed{extra}{error}"
            )
    for h in doc.get("unassigned", []):
        what = h["description"] or "no series start seen"
        print(
            f"held: series {h['series_instance_uid']} ({what}), {h['slices']} slices: {h['reason']}"
        )
    for a in doc["alarms"]:
        print(f"ALARM {a['kind']}: {a['message']} (since {a['since']})")
    return EXIT_OK


def _show_worklist(doc: dict[str, Any]) -> int:
    dates = " to ".join(sorted(set(doc["dates"])))
    if doc["stale"] and doc["fetched_at"] is None:
        print(f"worklist: no answer ({doc['error']}) and no list kept", file=sys.stderr)
        return EXIT_FAILED
    if doc["stale"]:
        print(
            f"STALE: the RIS did not answer ({doc['error'] or 'not asked'}); the list kept "
            f"from {doc['fetched_at']} ({doc['age_seconds']:.0f} s old)",
            file=sys.stderr,
        )
    more = " (truncated: more exist)" if doc["truncated"] else ""
    print(f"{doc['count']} item(s) for {dates}{more}")
    for i in doc["items"]:
        safety = [f"allergies: {', '.join(i['allergies'])}"] if i["allergies"] else []
        safety += [f"alerts: {', '.join(i['medical_alerts'])}"] if i["medical_alerts"] else []
        if i["pregnancy_status"] and i["pregnancy_status"] != "not pregnant":
            safety.append(f"pregnancy: {i['pregnancy_status']}")
        print(
            f"{i['accession_number'] or '-':<16} {i['scheduled_procedure_step_id'] or '-':<12} "
            f"{i['scheduled_time'][:4]:<4} {i['patient_name']} ({i['patient_id']}, "
            f"{i['birth_date'] or '?'}, {i['sex'] or '?'}) "
            f"{i['scheduled_procedure_step_description'] or i['requested_procedure_description']}"
        )
        for line in safety + [f"unusable: {p}" for p in i["problems"]] + i["notes"]:
            print(f"    {line}")
    return EXIT_OK


def _show_echo(result: dict[str, Any]) -> int:
    for p in result["peers"]:
        state = f"ok ({p['seconds']} s)" if p["ok"] else f"FAILED: {p['error']}"
        print(f"{p['name']}: {state}")
    return EXIT_OK if all(p["ok"] for p in result["peers"]) else EXIT_FAILED
