"""`modality-agent`: parse, call the library, print. Exit codes (SPEC §8): 0 done, 1 failed,
2 bad usage or config, 3 timed out, 4 daemon not reachable."""

from __future__ import annotations

import argparse
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

    handler = getattr(commands, args.command.replace("-", "_"))
    try:
        return int(handler(args))
    except KeyboardInterrupt:
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
