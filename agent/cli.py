"""`modality-agent`: parse, call the library, print. Exit codes (SPEC §8): 0 done, 1 failed,
2 bad usage or config, 3 timed out, 4 daemon not reachable."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from agent import logs

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TIMEOUT, EXIT_NO_DAEMON = 0, 1, 2, 3, 4


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    p.add_argument(
        "--debug", action="store_true", help="log at DEBUG (may include patient identifiers)"
    )


def _config(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, type=Path, help="the agent's TOML file")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _common(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="modality-agent", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("check-config", help="validate a config file (exit 0 or 2)")
    p.add_argument("-c", "--config", required=True, type=Path)
    _common(p)

    p = sub.add_parser("archive", help="the bundled minimal Storage SCP")
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--dir", required=True, type=Path)
    p.add_argument("--ae", default="ARCHIVE", help="our AE title (default ARCHIVE)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    _common(p)

    p = sub.add_parser("run", help="the daemon, in the foreground (systemd Type=notify)")
    _config(p)

    exam = sub.add_parser("exam", help="start, end, inspect an exam; assign a held series")
    steps = exam.add_subparsers(dest="step", required=True, parser_class=_Parser)
    p = steps.add_parser("start", help="select the patient and procedure for the next acquisition")
    _config(p)
    p.add_argument("--patient-id")
    p.add_argument("--patient-name", help="DICOM PN, e.g. DOE^JANE")
    p.add_argument("--birth-date", help="YYYYMMDD")
    p.add_argument("--sex", choices=["M", "F", "O"])
    p.add_argument("--weight", type=float, metavar="KG", help="Patient's Weight, by hand")
    p.add_argument("--size", type=float, metavar="M", help="Patient's Size in metres, by hand")
    p.add_argument("--accession", help="alone: take the worklist item with this Accession Number")
    p.add_argument("--sps-id", help="take the worklist item with this Scheduled Procedure Step ID")
    p.add_argument("--unscheduled", action="store_true", help="an unidentified emergency patient")
    p.add_argument("--operator", help="who performs the exam (Operators' Name)")
    p.add_argument("--dest", action="append", default=[], help="destination name (repeatable)")
    p = steps.add_parser("end", help="close the open exam")
    _config(p)
    p.add_argument("--discontinue", metavar="REASON", help="the exam was not completed")
    p = steps.add_parser("status", help="the open exam and the held series")
    _config(p)
    p = steps.add_parser("assign", help="file a held (unassigned) series under an exam")
    _config(p)
    p.add_argument("--series", required=True, help="the held series' Series Instance UID")
    p.add_argument("--to", required=True, help="the exam's token or Study Instance UID")
    p.add_argument("--operator", help="who decided (recorded with the time)")
    p.add_argument(
        "--incomplete",
        action="store_true",
        help="assign a series that never ended (e.g. cut short by a hardware error)",
    )

    p = sub.add_parser("simulate", help="play the reconstructor: acquire series now")
    _config(p)
    p.add_argument("--series", type=int, default=1)
    p.add_argument("--slices", type=int, default=10, help="slices per series")
    p.add_argument("--rate", type=float, help="slices per second (default: as fast as taken)")
    p.add_argument("--token", help="exam token (default: the open exam's)")
    p.add_argument(
        "--fault",
        help="comma-separated faults to inject: directory: partial, garbage, duplicate, "
        "reorder, lose, hw-error; serial-shm: crc, garbage, drop, lose, duplicate, reorder, "
        "torn, disconnect, hw-error",
    )
    p.add_argument(
        "--localizer", action="store_true", help="serial-shm: a localizer before the acquisition"
    )
    p.add_argument(
        "--dose-check-ctdivol",
        type=float,
        metavar="MGY",
        help="serial-shm: the scanner's dose check notifies above this CTDIvol (TID 10015)",
    )
    p.add_argument("--timeout", type=float, default=600)

    p = sub.add_parser(
        "simulator", help="run the simulated serial-shm reconstructor (for simulate) until stopped"
    )
    _config(p)
    p.add_argument("--slots", type=int, default=16, help="ring slots of 512x512 (default 16)")

    p = sub.add_parser("queue", help="delivery state per study and destination")
    _config(p)
    p = sub.add_parser("retry", help="re-arm failed deliveries and cut backoff waits short")
    _config(p)
    p.add_argument("--study", help="only this Study Instance UID")
    p.add_argument("--dest", help="only this destination")
    p = sub.add_parser("wait", help="block until everything queued is delivered")
    _config(p)
    p.add_argument("--timeout", type=float, default=600)
    p = sub.add_parser("worklist", help="query the Modality Worklist (the RIS) now")
    _config(p)
    p.add_argument("--date", help="YYYYMMDD or YYYYMMDD-YYYYMMDD (default: today, as configured)")
    p.add_argument("--patient-name", help="DICOM PN; * and ? match any characters")
    p.add_argument("--accession")
    p.add_argument("--sps-id", help="Scheduled Procedure Step ID")
    p.add_argument("--cached", action="store_true", help="the last good list, without asking")
    p = sub.add_parser(
        "dose-check", help="check CT Radiation Dose SR files against TID 10011 (exit 0 or 1)"
    )
    p.add_argument("files", nargs="+", type=Path)
    _common(p)
    p = sub.add_parser("audit", help="the audit trail: who did what, when (newest last)")
    _config(p)
    p.add_argument("--last", type=int, default=100, help="how many records (default 100)")
    p = sub.add_parser("echo", help="C-ECHO configured peers")
    _config(p)
    p.add_argument("names", nargs="*", help="peer names (default: all)")
    p = sub.add_parser("doctor", help="check the whole setup; say what is wrong, what to do")
    _config(p)
    p.set_defaults(handler="agent.doctor:command")
    for name, module, what in (
        ("conformance", "conformance", "the DICOM Conformance Statement"),
        ("config-reference", "config.reference", "the configuration reference"),
    ):
        p = sub.add_parser(name, help=f"print {what}, generated from the code")
        p.add_argument("--write", action="store_true", help="write it into docs/")
        p.add_argument("--check", action="store_true", help="exit 1 when docs/ is out of date")
        p.set_defaults(handler=f"agent.{module}:command")
        _common(p)
    p = sub.add_parser("tui", help="the technologist's terminal UI, a client of the daemon")
    p.add_argument("-c", "--config", required=True, type=Path, help="the agent's TOML file")
    _common(p)

    p = sub.add_parser("demo", help="all-in-one: bundled archive, mock scanner, one exam")
    p.add_argument("--slices", type=int, default=120, help="images in the exam (default 120)")
    p.add_argument("--workdir", type=Path, help="where spool and archive go (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _common(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.verbose, args.debug)
    from agent import commands

    name = args.command + (f"_{args.step}" if args.command == "exam" else "")
    if getattr(args, "handler", None):  # "module:function", imported only when used
        module, _, function = args.handler.partition(":")
        handler = getattr(importlib.import_module(module), function)
    else:
        handler = getattr(commands, name.replace("-", "_"))
    try:
        return int(handler(args))
    except KeyboardInterrupt:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
