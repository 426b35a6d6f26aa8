"""Recovery at open: bring the files and the index back into agreement after a crash.

Rules (the index is the truth about what was accepted):
- a temporary file (hidden, `.tmp`) was never renamed, so never accepted: removed;
- a final-named `<sop>.dcm` with no index row (crash between rename and commit) was never
  accepted: moved to `orphans/<study>/`, neither deleted nor sent;
- an index row whose file is missing or has the wrong size is flagged ("missing", "size") and
  never sent; a flagged row whose file is now intact (size and SHA-256) is cleared;
- deliveries left "sending" go back to "pending" (no acknowledgement was recorded);
- retries scheduled further ahead than the longest plausible delay (the wall clock stepped back
  between two runs) are pulled in to now + that delay.
Nothing here raises on a damaged spool: it reports.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from . import files
from .files import SUFFIX
from .index import Index
from .model import InvalidUID, RecoveryReport, SpooledInstance, SpoolProblem, check_uid

log = logging.getLogger(__name__)


def file_problem(path: Path, instance: SpooledInstance, full: bool) -> tuple[str, str] | None:
    """(kind, detail) when the file at `path` is not the accepted one; `full` also hashes it."""
    try:
        size = path.stat().st_size
        digest = None
        if full and size == instance.size:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return "missing", f"{path} is missing"
    return content_problem(path, instance, size, digest)


def content_problem(
    path: Path, instance: SpooledInstance, size: int, digest: str | None
) -> tuple[str, str] | None:
    """(kind, detail) when `size` or `digest` (None: not hashed) of the file at `path` is not
    the accepted one."""
    if size != instance.size:
        return "size", f"{path} has {size} bytes, {instance.size} were accepted"
    if digest is not None and digest != instance.sha256:
        return "corrupt", f"{path}: SHA-256 {digest} differs from the accepted {instance.sha256}"
    return None


def _scan_files(instances_dir: Path, orphans_dir: Path, index: Index) -> tuple[int, list[Path]]:
    known = index.locations()
    removed = 0
    orphans: list[Path] = []
    for study_dir in sorted(instances_dir.iterdir()):
        try:
            study = check_uid(study_dir.name)
        except InvalidUID:
            log.warning("spool: leaving alone %s (not a study folder)", study_dir)
            continue
        if study_dir.is_symlink() or not study_dir.is_dir():
            log.warning("spool: leaving alone %s (not a folder)", study_dir)
            continue
        dirty = False
        for entry in sorted(study_dir.iterdir()):
            name = entry.name
            if entry.is_symlink() or not entry.is_file():
                log.warning("spool: leaving alone %s (not a regular file)", entry)
                continue
            if files.is_temp_name(name):
                log.info("spool: removing %s, left by an interrupted write", entry)
                entry.unlink()
                removed += 1
                dirty = True
            elif name.endswith(SUFFIX) and (study, name[: -len(SUFFIX)]) not in known:
                moved = files.move_aside(entry, orphans_dir / study)
                log.warning(
                    "spool: %s was never accepted (no index row): moved to %s", entry, moved
                )
                orphans.append(moved)
            elif not name.endswith(SUFFIX):
                log.warning("spool: leaving alone unexpected file %s", entry)
        if dirty:
            files.fsync_dir(study_dir)
    # Study folders created by an earlier run are durable from here on.
    files.fsync_dir(instances_dir)
    return removed, orphans


def recover(
    instances_dir: Path, orphans_dir: Path, index: Index, now: float, max_retry_delay: float
) -> RecoveryReport:
    removed, orphans = _scan_files(instances_dir, orphans_dir, index)
    sending = index.reset_sending(now)
    clamped = index.clamp_next_attempt(now + max_retry_delay, now)
    for instance, flagged in index.to_check():
        path = files.instance_path(
            instances_dir, instance.study_instance_uid, instance.sop_instance_uid
        )
        found = file_problem(path, instance, full=flagged is not None)
        if found is not None and found[0] != flagged:
            log.error("spool: %s: %s; it will not be sent", instance.sop_instance_uid, found[1])
            index.set_problem(instance.sop_instance_uid, *found)
        elif found is None and flagged is not None:
            log.warning("spool: %s is intact again; cleared", instance.sop_instance_uid)
            index.set_problem(instance.sop_instance_uid, None, None)
    problems = [
        SpoolProblem(
            kind,
            inst.sop_instance_uid,
            files.instance_path(instances_dir, inst.study_instance_uid, inst.sop_instance_uid),
            detail,
        )
        for inst, kind, detail in index.problems()
    ]
    if sending or clamped:
        log.info("spool: %d interrupted sends re-queued, %d retries pulled in", sending, clamped)
    return RecoveryReport(
        temp_files_removed=removed,
        orphans_moved=tuple(orphans),
        sending_reset=sending,
        next_attempt_clamped=clamped,
        problems=tuple(problems),
    )
