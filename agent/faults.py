"""Which failures may pass, and how to name one without quoting a patient's data."""

from __future__ import annotations

import errno
import re
import sqlite3

from pydicom.datadict import keyword_dict

from agent.spool import SpoolClosed

#: errors after which the same work may well succeed (a full disk, a busy or closed index)
TRANSIENT = (OSError, sqlite3.OperationalError, SpoolClosed)


def describe(exc: BaseException) -> str:
    """An error's kind without its text, which may quote a patient's data: the type, the errno
    name of an OSError, the DICOM keywords the message names."""
    name = type(exc).__name__
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{name} {errno.errorcode.get(exc.errno, exc.errno)}"
    keywords = sorted({w for w in re.findall(r"[A-Z][A-Za-z0-9]+", str(exc)) if w in keyword_dict})
    return f"{name} ({', '.join(keywords)})" if keywords else name
