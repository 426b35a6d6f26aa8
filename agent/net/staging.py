"""Each outgoing instance as a Part 10 file in the transfer syntax it goes out in.

When the archive takes the stored syntax, that is the spooled file itself (verified by the
spool first, in a thread, while the instances before it are sent) and its bytes are streamed as
they are: no decode, no re-encode. Otherwise the
instance is transcoded once per instance and syntax, in a process pool (every core, never on a
sending thread), into a staging folder, and kept there until the instance is done with, so
that a retry does not compress it again. Memory stays bounded: files, not bytes, are passed.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from agent.dicom import codecs

__all__ = ["Staging", "transcode_file"]

_pool_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None
_checker: ThreadPoolExecutor | None = None


def _shared_pool() -> ProcessPoolExecutor:
    """One pool for every destination. Spawned, not forked (the daemon has threads), so that
    each worker is the daemon's own child and can notice when the daemon is gone."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(
                max_workers=os.cpu_count() or 1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_worker_start,
                initargs=(os.getpid(),),
            )
        return _pool


def _shared_checker() -> ThreadPoolExecutor:
    """Threads that verify spooled files (read and SHA-256, both without the GIL) ahead of
    their C-STORE, so that checking the next files overlaps sending this one."""
    global _checker
    with _pool_lock:
        if _checker is None:
            _checker = ThreadPoolExecutor(os.cpu_count() or 1, "spool-check")
        return _checker


WORKER_NICENESS = 10  # compression yields the cores to acquisition and sending


def _worker_start(owner: int) -> None:
    """In each worker: a daemon killed with SIGKILL never shuts its pool down, and the
    workers would wait for work forever; each leaves once its parent is no longer `owner`.
    Workers run at a lower priority: taking slices in and keeping the link busy come first,
    compression uses what is left (on a 2-core console, at full priority it slowed both)."""
    os.nice(WORKER_NICENESS)

    def watch() -> None:
        while os.getppid() == owner:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="owner-watch", daemon=True).start()


def _forget_pool(broken: ProcessPoolExecutor) -> None:
    """A worker died (killed, out of memory): the next instance gets a new pool."""
    global _pool
    with _pool_lock:
        if _pool is broken:
            _pool = None
    broken.shutdown(wait=False, cancel_futures=True)


def _load_codecs() -> None:
    codecs.available()  # probes every plugin once, in this worker


def transcode_file(source: str, ts_uid: str, target: str) -> float:
    """In a worker: `source` transcoded to `ts_uid`, written to `target` (temp name, rename;
    no fsync: a staged copy can always be made again from the spool). Returns the seconds it
    took this worker."""
    started = time.perf_counter()
    data = codecs.transcode_bytes(Path(source).read_bytes(), ts_uid)
    partial = Path(target + ".part")
    partial.write_bytes(data)
    partial.replace(target)
    return time.perf_counter() - started


class Staging:
    """The staged copies of one destination's instances."""

    def __init__(self) -> None:
        self._dir: Path | None = None  # made when first needed, removed when nothing is due
        self._staged: dict[tuple[str, str], Future[Path]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def warm() -> list[Future[None]]:
        """Start the pool now (each worker imports the codecs: about a second), not when the
        first instance to transcode is waiting; done when each worker has."""
        pool = _shared_pool()
        return [pool.submit(_load_codecs) for _ in range(os.cpu_count() or 1)]

    def _folder(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="modality-agent-staging-"))
        return self._dir

    def stage(
        self,
        sop_uid: str,
        stored_ts: str,
        ts: str,
        source: Callable[[], Path],
        checked: Future[Path] | None = None,
        timed: Callable[[float], None] | None = None,
    ) -> Future[Path]:
        """The file to send `sop_uid` in `ts`: the spooled file once `source()` has verified
        it (in a thread; its errors, damaged or missing, are the future's), or a copy of it
        transcoded to `ts` in the pool, made once per instance and syntax. `checked`: that
        verification, already started. `timed` hears how many seconds a worker took for a
        transcoding made now."""
        if ts == stored_ts:
            return checked or _shared_checker().submit(source)
        with self._lock:
            staged = self._staged.get((sop_uid, ts))
            if staged is not None and not _failed(staged):
                return staged
            staged = Future()
            self._staged[(sop_uid, ts)] = staged
        target = self._folder() / f"{sop_uid}.{ts}.dcm"
        checked = checked or _shared_checker().submit(source)
        checked.add_done_callback(lambda c: _transcode(c, ts, target, staged, timed))
        return staged

    def discard(self, sop_uid: str) -> None:
        """`sop_uid` is done with (delivered or failed): its staged copies go."""
        with self._lock:
            keys = [k for k in self._staged if k[0] == sop_uid]
            for key in keys:
                del self._staged[key]
        if self._dir is not None:
            for path in self._dir.glob(f"{sop_uid}.*"):
                path.unlink(missing_ok=True)

    def clear(self) -> None:
        """Nothing is due any more: every staged copy goes."""
        with self._lock:
            self._staged.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


def _failed(staged: Future[Path]) -> bool:
    return staged.done() and (staged.cancelled() or staged.exception() is not None)


def _transcode(
    checked: Future[Path],
    ts: str,
    target: Path,
    staged: Future[Path],
    timed: Callable[[float], None] | None,
) -> None:
    """Once the spooled file is verified: its transcoding, in the pool."""
    try:
        original = checked.result()
        pool = _shared_pool()
        try:
            job = pool.submit(transcode_file, str(original), ts, str(target))
        except RuntimeError:  # the pool broke or shut down under us: a new one
            _forget_pool(pool)
            pool = _shared_pool()
            job = pool.submit(transcode_file, str(original), ts, str(target))
        job.add_done_callback(lambda j: _settle(j, staged, target, pool, timed))
    except BaseException as e:  # the future must end, or its sender would wait for ever
        _end(staged, e)


def _settle(
    job: Future[float],
    staged: Future[Path],
    target: Path,
    pool: ProcessPoolExecutor,
    timed: Callable[[float], None] | None,
) -> None:
    """`staged` ends with `job`, whatever happened to it (cancelled with a broken pool too):
    its sender waits for it."""
    try:
        error = job.exception()
        if error is None:
            if timed is not None:
                timed(job.result())
            staged.set_result(target)
            return
        if isinstance(error, BrokenProcessPool):
            _forget_pool(pool)
        staged.set_exception(error)
    except BaseException as e:  # CancelledError among them
        _end(staged, RuntimeError(f"the transcoding did not finish: {e!r}"))


def _end(staged: Future[Path], error: BaseException) -> None:
    """`staged` fails with `error`, unless it has ended already (its sender may have given up
    waiting and cancelled it)."""
    if not staged.done():
        staged.set_exception(error)
