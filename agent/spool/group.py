"""Group commit: accepts that reach the index together share one folder fsync and one index
transaction.

Each accepting thread writes its file, fsyncs it and renames it into place on its own, then
calls `GroupCommit.commit`. Whoever finds no commit in progress leads: it takes every accept
waiting (its own included), fsyncs each of their folders once, then inserts all their rows in
one transaction; the others wait for that and return its outcome. For every file the order
stays fsync(file) -> rename -> fsync(folder) -> index commit -> return, and an accept alone
costs what it did before (its folder fsync, then its commit).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import files
from .index import Index, Row
from .model import SpooledInstance


@dataclass(eq=False)
class _Waiting:
    folder: Path
    row: Row
    done: bool = False
    result: SpooledInstance | None = None
    error: BaseException | None = field(default=None, repr=False)

    def outcome(self) -> SpooledInstance:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class GroupCommit:
    def __init__(self, index: Index, clock: Callable[[], float]) -> None:
        self._index = index
        self._clock = clock
        self._cond = threading.Condition()
        self._waiting: list[_Waiting] = []
        self._busy = False  # a leader is committing

    def commit(self, folder: Path, row: Row) -> SpooledInstance:
        """Make the name of a file already renamed into `folder` durable, then index `row`.
        Returns once both are durable; raises what stopped either (nothing indexed then)."""
        me = _Waiting(folder, row)
        with self._cond:
            self._waiting.append(me)
            self._cond.notify_all()  # (for whoever watches the queue)
            while self._busy and not me.done:
                self._cond.wait()
            if me.done:
                return me.outcome()
            self._busy = True
            group, self._waiting = self._waiting, []
        try:
            self._commit(group)
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
        return me.outcome()

    def _commit(self, group: list[_Waiting]) -> None:
        try:
            for folder in dict.fromkeys(w.folder for w in group):
                files.fsync_dir(folder)
            results = self._index.insert_many([w.row for w in group], self._clock())
        except BaseException as e:
            for w in group:
                w.error, w.done = e, True
            if not isinstance(e, Exception):
                raise
            return
        for w, result in zip(group, results, strict=True):
            if isinstance(result, SpooledInstance):
                w.result = result
            else:
                w.error = result
            w.done = True
