"""Logging set up once by the CLI: plain lines on stderr, which journald timestamps itself.

pynetdicom logs every PDU and, at DEBUG, dataset contents with patient identifiers; it is kept
at WARNING unless an engineer asks for debug output knowingly.
"""

from __future__ import annotations

import logging
import sys


def setup(verbose: bool = False, debug: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if debug else logging.WARNING)
