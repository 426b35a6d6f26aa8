"""The irradiation events the hardware reported, kept durably (SPEC §3).

The CT Radiation Dose SR is built from these records alone, never from guesses, so a record
is on disk before the hardware is told it may forget it (`Driver.acknowledge`). One JSON file
per event (hardware.event_codec), named by a hash of its Irradiation Event UID: a replayed
record is kept once, and no file name is ever built from a value the hardware sent.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from agent.spool.files import fsync_dir, fsync_file, is_temp_name, make_dirs, write_durable
from hardware.dose import IrradiationEvent
from hardware.event_codec import EventCodecError, irradiation_from_json, irradiation_to_json

log = logging.getLogger(__name__)


class IrradiationRecords:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        if folder.is_dir():  # a crash before a rename leaves a temporary file: never a record
            for path in folder.iterdir():
                if is_temp_name(path.name):
                    path.unlink()

    def keep(self, event: IrradiationEvent) -> bool:
        """Make `event` durable; False when it was kept before (a replay). OSError: not kept."""
        path = self._path(event.event_uid)
        if path.exists():  # kept before, perhaps by a write cut short before its folder fsync
            fsync_file(path)
            fsync_dir(self.folder)
            return False
        make_dirs(self.folder)
        write_durable(path, json.dumps(irradiation_to_json(event), indent=1).encode())
        return True

    def for_token(self, token: str) -> list[IrradiationEvent]:
        """The records acquired under exam `token`, oldest first."""
        return sorted((e for e in self._all() if e.token == token), key=lambda e: e.start_time)

    def by_uid(self, event_uids: set[str]) -> list[IrradiationEvent]:
        """The records with these Irradiation Event UIDs (e.g. named by images of a series
        acquired under another token, then assigned)."""
        return [e for e in self._all() if e.event_uid in event_uids]

    def _all(self) -> list[IrradiationEvent]:
        events = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                events.append(irradiation_from_json(json.loads(path.read_bytes())))
            except (OSError, ValueError, EventCodecError) as e:
                log.error("irradiation record %s unreadable: %s", path.name, e)
        return events

    def _path(self, event_uid: str) -> Path:
        return self.folder / f"{hashlib.sha256(event_uid.encode()).hexdigest()[:32]}.json"
