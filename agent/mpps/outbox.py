"""The MPPS outbox: N-CREATE and N-SET messages kept durably, in order, until the RIS took them.

The RIS may be down for the whole exam, and the agent may restart meanwhile; the messages must
still arrive, and in the order they were made (an N-SET before its N-CREATE means nothing to a
RIS). Each message is one file, `<10-digit number>.mpps`: a JSON header line (kind, SOP
Instance UID, when it was made), a newline, then the data set encoded in Explicit VR Little
Endian exactly as built, so that values copied from the worklist keep their bytes. Files are
created durably and never replaced (fsync, link, fsync of the folder), marked `.attempted`
before each sending, and removed only once the RIS answered; a message the RIS refuses for
good is moved to `failed/` and named in an alarm, so that one bad message never blocks the
others. One outbox object per spool: it numbers the messages.
"""

from __future__ import annotations

import collections
import json
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from agent.spool.files import create_durable, is_temp_name, make_dirs, move_aside, remove_durable

N_CREATE, N_SET = "N-CREATE", "N-SET"
_NAME = re.compile(r"^(\d{10})\.mpps$")


class OutboxError(ValueError):
    """A message file whose content cannot be decoded (damaged): never sent, set aside."""

    def __init__(self, number: int, detail: str) -> None:
        super().__init__(f"MPPS message {number:010d}: {detail}")
        self.number = number


@dataclass(frozen=True)
class MppsMessage:
    number: int  # its place in the order of sending
    kind: str  # N_CREATE or N_SET
    sop_instance_uid: str  # the Performed Procedure Step
    made: datetime
    dataset: Dataset

    @property
    def name(self) -> str:
        return f"{self.number:010d}.mpps"


def encode(kind: str, sop_instance_uid: str, made: datetime, dataset: Dataset) -> bytes:
    header = {"kind": kind, "sop_instance_uid": sop_instance_uid, "made": made.isoformat()}
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, dataset)
    return json.dumps(header).encode() + b"\n" + buf.getvalue()


def decode(number: int, data: bytes) -> MppsMessage:
    head, newline, body = data.partition(b"\n")
    try:
        h = json.loads(head)
        kind = h["kind"]
        if kind not in (N_CREATE, N_SET) or not newline:
            raise ValueError(f"kind {kind!r}")
        ds = read_dataset(BytesIO(body), is_implicit_VR=False, is_little_endian=True)
        return MppsMessage(
            number, kind, str(h["sop_instance_uid"]), datetime.fromisoformat(h["made"]), ds
        )
    except Exception as e:  # any damage reads as one error, with its place
        raise OutboxError(number, f"{type(e).__name__}: {e}") from None


class MppsOutbox:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.failed_dir = folder / "failed"
        self._lock = threading.Lock()
        self.round_lock = threading.Lock()  # one delivery round at a time (agent.mpps.sender)
        self.attempts: collections.Counter[int] = collections.Counter()  # transient failures
        make_dirs(folder)
        for path in folder.iterdir():  # left by a crash before the rename: never a message
            if is_temp_name(path.name):
                path.unlink()
        self._next = max((n for n, _ in self._names()), default=0) + 1

    def put(self, kind: str, sop_instance_uid: str, dataset: Dataset) -> MppsMessage:
        """Make a message durable, after every message put before it. A name is never
        reused: should another writer have taken it, the next one is used."""
        made = datetime.now(UTC)
        data = encode(kind, sop_instance_uid, made, dataset)
        with self._lock:
            while True:
                number = self._next
                self._next += 1
                try:
                    create_durable(self.folder / f"{number:010d}.mpps", data)
                    break
                except FileExistsError:
                    continue
        return MppsMessage(number, kind, sop_instance_uid, made, dataset)

    def pending(self) -> list[MppsMessage | OutboxError]:
        """Every message not yet taken by the RIS, oldest first; a damaged one as its error,
        in its place. OSError when a file cannot be read now (the round is tried later)."""
        out: list[MppsMessage | OutboxError] = []
        for number, path in self._names():
            data = path.read_bytes()
            try:
                out.append(decode(number, data))
            except OutboxError as e:
                out.append(e)
        return out

    def attempted(self, message: MppsMessage) -> bool:
        """Whether it was sent before (its answer then lost, or the agent died waiting)."""
        return self._attempt_marker(message.number).exists()

    def mark_attempted(self, message: MppsMessage) -> None:
        """Durably note that `message` is about to be sent."""
        marker = self._attempt_marker(message.number)
        if not marker.exists():
            create_durable(marker, b"")

    def count(self) -> int:
        return len(self._names())

    def done(self, message: MppsMessage) -> None:
        """The RIS took it: forget it."""
        remove_durable(self.folder / message.name)
        remove_durable(self._attempt_marker(message.number))

    def fail(self, number: int) -> Path:
        """The RIS refused it for good (or it is damaged): set it aside, kept."""
        make_dirs(self.failed_dir)
        kept = move_aside(self.folder / f"{number:010d}.mpps", self.failed_dir)
        remove_durable(self._attempt_marker(number))
        return kept

    def failed(self) -> int:
        if not self.failed_dir.is_dir():
            return 0
        return sum(1 for p in self.failed_dir.iterdir() if ".mpps" in p.name)

    def _attempt_marker(self, number: int) -> Path:
        return self.folder / f"{number:010d}.attempted"

    def _names(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.folder.iterdir():
            m = _NAME.match(path.name)
            if m and path.is_file():
                found.append((int(m.group(1)), path))
        return sorted(found)
