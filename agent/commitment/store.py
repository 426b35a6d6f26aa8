"""The storage commitment requests sent and not yet answered, kept durably beside the spool.

`<spool>/commitment/<destination>/<Transaction UID>.json` holds one request (its instances,
who may report, its deadline) and its study, written before the N-ACTION goes out, so that a
report arriving after a restart is still matched, and removed once the request is settled.
Which instances are committed is the spool's own record (`Spool.mark_committed`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from agent.net.commitment import CommitmentRequest
from agent.spool.files import make_dirs, remove_durable, write_durable
from agent.spool.model import check_uid

log = logging.getLogger(__name__)


class RequestStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def keep(self, study_uid: str, request: CommitmentRequest) -> None:
        path = self._path(request.destination, request.transaction_uid)
        make_dirs(path.parent)
        doc = {"study": check_uid(study_uid, "Study Instance UID"), "request": request.to_json()}
        write_durable(path, json.dumps(doc).encode())

    def drop(self, destination: str, transaction_uid: str) -> None:
        remove_durable(self._path(destination, transaction_uid))

    def pending(self, destination: str) -> list[tuple[str, CommitmentRequest]]:
        """(study, request) of every request sent and not yet settled."""
        folder = self.root / destination
        out = []
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                doc = json.loads(path.read_bytes())
                out.append((str(doc["study"]), CommitmentRequest.from_json(doc["request"])))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.error("commitment request %s unreadable (%s): asked again", path.name, e)
                path.unlink(missing_ok=True)
        return out

    def _path(self, destination: str, transaction_uid: str) -> Path:
        return self.root / destination / f"{check_uid(transaction_uid, 'Transaction UID')}.json"
