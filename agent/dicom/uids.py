"""UID generation (SPEC §4): valid, and unique across restarts and across consoles.

With an organisation root, a UID is `<root>.<n>` where `n` is one integer made of a random
*session* number (drawn from the OS's CSPRNG when the factory is made, at least 64 bits) and a
32-bit counter: unique within a factory by construction, and across restarts and consoles by
the session's randomness (the same argument that makes UUIDs unique). Without a root, each UID
is `2.25.<a fresh UUID4 as an integer>` (ITU-T X.667, PS3.5 §B.2).

pydicom's own root (1.2.826.0.1.3680043.8.498) is pydicom's, not ours: it is refused.
"""

from __future__ import annotations

import math
import re
import secrets
import threading
import uuid
from importlib import metadata

MAX_UID_LENGTH = 64
COUNTER_BITS = 32
MIN_SESSION_BITS = 64
#: digits a UID needs after the root for uniqueness: room for the session and the counter
MIN_SUFFIX_DIGITS = math.ceil((MIN_SESSION_BITS + COUNTER_BITS) / math.log2(10))
#: the longest root that leaves room for `MIN_SUFFIX_DIGITS` (and the dot before them)
MAX_ROOT_LENGTH = MAX_UID_LENGTH - 1 - MIN_SUFFIX_DIGITS

PYDICOM_ROOT = "1.2.826.0.1.3680043.8.498"
UUID_ROOT = "2.25"

#: identifies this software in File Meta Information (0002,0012): fixed, in the 2.25 form
IMPLEMENTATION_CLASS_UID = (
    f"{UUID_ROOT}.{uuid.uuid5(uuid.NAMESPACE_URL, 'urn:modality-agent:implementation').int}"
)


def _version() -> str:
    try:
        return metadata.version("modality-agent")
    except metadata.PackageNotFoundError:  # a source tree that is not installed
        return "0"


#: (0002,0013), SH, 16 characters at most: names this software and its version
IMPLEMENTATION_VERSION_NAME = f"MODAGENT_{_version()}"[:16]

_UID_RE = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")


def is_valid_uid(s: str) -> bool:
    """True when `s` is a valid DICOM UID (PS3.5 §9.1) and a well-formed OID.

    At most 64 characters, digits and dots only, at least two components, no empty component,
    no leading zero in a component; the first arc is 0, 1 or 2, and under 0 and 1 the second
    arc is at most 39 (ITU-T X.660).
    """
    if not isinstance(s, str) or len(s) > MAX_UID_LENGTH or not _UID_RE.fullmatch(s):
        return False
    arcs = s.split(".")
    if arcs[0] not in ("0", "1", "2"):
        return False
    return not (arcs[0] in ("0", "1") and int(arcs[1]) > 39)


def _under(uid: str, root: str) -> bool:
    return uid == root or uid.startswith(root + ".")


def validate_root(root: str) -> str:
    """Return `root` when it can serve as an organisation root; raise ValueError otherwise."""
    if not isinstance(root, str) or not root:
        raise ValueError("uid_root must be a non-empty string of digits and dots")
    if not is_valid_uid(root):
        raise ValueError(
            f"uid_root {root!r} is not a valid UID root: expected digits and dots, at least "
            "two components, no empty component, no leading zero in a component, "
            "first arc 0, 1 or 2 (e.g. '1.2.826.0.1.3680043.10.999')"
        )
    if _under(root, PYDICOM_ROOT):
        raise ValueError(
            f"uid_root {root!r} is under pydicom's own root {PYDICOM_ROOT}, which is not ours "
            "to use: configure the organisation's root, or leave uid_root unset for 2.25 UIDs"
        )
    if _under(root, UUID_ROOT):
        raise ValueError(
            f"uid_root {root!r} is under {UUID_ROOT}, whose UIDs must be whole UUIDs: "
            "leave uid_root unset to get 2.25 UUID-derived UIDs"
        )
    if len(root) > MAX_ROOT_LENGTH:
        raise ValueError(
            f"uid_root {root!r} is {len(root)} characters long; at most {MAX_ROOT_LENGTH} leave "
            f"room for the {MIN_SUFFIX_DIGITS} digits that keep each UID unique within the "
            f"{MAX_UID_LENGTH}-character limit"
        )
    return root


class UidFactory:
    """Makes new UIDs under `root`, or in the 2.25 UUID form when `root` is None. Thread-safe."""

    def __init__(self, root: str | None = None) -> None:
        self.root: str | None = None if root is None else validate_root(root)
        self._lock = threading.Lock()
        self._counter = 0
        self._session = 0
        if self.root is not None:
            digits = MAX_UID_LENGTH - len(self.root) - 1
            # largest bit count whose every value fits in `digits` decimal digits, capped
            bits = min(128, math.floor(digits * math.log2(10)))
            self._session_bits = bits - COUNTER_BITS
            self._new_session()

    def _new_session(self) -> None:
        self._session = secrets.randbits(self._session_bits)
        self._counter = 0

    def new(self) -> str:
        """A new UID, never returned before by any factory, in this process or another."""
        if self.root is None:
            return f"{UUID_ROOT}.{uuid.uuid4().int}"
        with self._lock:
            self._counter += 1
            if self._counter >= 1 << COUNTER_BITS:
                self._new_session()
                self._counter = 1
            value = (self._session << COUNTER_BITS) | self._counter
        return f"{self.root}.{value}"

    def __repr__(self) -> str:
        return f"UidFactory(root={self.root!r})"
