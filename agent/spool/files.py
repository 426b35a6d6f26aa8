"""Durable file operations: write to a temporary name, fsync, rename, fsync the folder."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path

from .model import check_uid

FileData = bytes | Sequence[bytes | memoryview]
"""A file's bytes: in one piece, or in pieces that are written as they are (os.writev), never
joined (an image's pixels are not copied once more)."""

DIRECT_MIN = 1 << 16  # bytes: a new file at least this large is written with O_DIRECT,
DIRECT_MAX = 8 << 20  # and at most this large (each writing thread keeps a buffer of it)
DIRECT_BLOCK = 4096  # what O_DIRECT writes in: a multiple of any disk's logical block
_direct = threading.local()

SUFFIX = ".dcm"
TEMP_SUFFIX = ".tmp"
FILE_MODE = 0o640
DIR_MODE = 0o750


def instance_path(instances_dir: Path, study_uid: str, sop_uid: str) -> Path:
    """`instances_dir/<study UID>/<SOP Instance UID>.dcm`; both UIDs are checked here."""
    study = check_uid(study_uid, "Study Instance UID")
    return instances_dir / study / (check_uid(sop_uid, "SOP Instance UID") + SUFFIX)


def temp_path(final: Path) -> Path:
    """A unique hidden temporary name next to `final` (same folder, so rename is atomic)."""
    return final.with_name(f".{final.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def fsync_dir(path: Path) -> None:
    """Make the entries of folder `path` (creations, renames, removals) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dir(path: Path) -> bool:
    """Create folder `path` (its parent must exist); True when it was created now.

    The caller fsyncs the parent when this returns True.
    """
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        if not path.is_dir():
            raise
        return False
    return True


def make_dirs(path: Path) -> None:
    """Create `path` and any missing parents, fsyncing each new entry's parent."""
    if path.is_dir():
        return
    make_dirs(path.parent)
    if make_dir(path):
        fsync_dir(path.parent)


def pieces(data: FileData) -> list[memoryview]:
    """`data` as views of its bytes, none copied."""
    if isinstance(data, bytes | bytearray | memoryview):
        return [memoryview(data)]
    return [memoryview(p) for p in data]


def size_and_sha256(data: FileData) -> tuple[int, str]:
    """The byte count and the SHA-256 (hex) of `data`."""
    digest = hashlib.sha256()
    size = 0
    for piece in pieces(data):
        digest.update(piece)
        size += piece.nbytes
    return size, digest.hexdigest()


def _write_all(fd: int, data: FileData) -> None:
    """All of `data`, a short write continued."""
    views = [v.cast("B") for v in pieces(data) if v.nbytes]
    while views:
        written = os.writev(fd, views)
        while views and written >= views[0].nbytes:
            written -= views.pop(0).nbytes
        if views:
            views[0] = views[0][written:]


def write_durable(final: Path, data: FileData) -> None:
    """Write `data` to `final` so that after return it is on disk under that name.

    Order: temporary file (O_EXCL) in the same folder, write, fsync(file), rename, fsync(folder).
    Whoever crashes before the rename leaves only a temporary file, which recovery removes; the
    final name never holds a partial file. os.rename replaces an existing `final`: the caller
    makes sure that never replaces an accepted file.
    """
    write_in_place(final, data)
    fsync_dir(final.parent)


def write_in_place(final: Path, data: FileData) -> None:
    """`write_durable` but for the folder fsync: the file's bytes are durable on return, its
    name only once the caller has fsynced the folder (which may cover several files)."""
    tmp = _synced_temp(final, data)
    try:
        os.rename(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_new(fd: int, data: FileData) -> None:
    """All of `data` into the new, empty file `fd`: a large file's whole blocks bypass the
    page cache (O_DIRECT, from a reused buffer of this thread), its tail is written as usual.

    Why: on a VM whose free memory goes back to the host, each page of cache a new file takes
    is a fresh page for the host to provide (slower than the copy itself), and a spool file is
    written once and read again only to be sent. Where the file system has no direct I/O
    (EINVAL), all of it goes through the page cache. Durability is fsync's either way."""
    views = [v.cast("B") for v in pieces(data) if v.nbytes]
    size = sum(v.nbytes for v in views)
    bulk = size - size % DIRECT_BLOCK
    if not DIRECT_MIN <= size <= DIRECT_MAX or not _set_direct(fd, True):
        _write_all(fd, views)
        return
    buf = _direct_buffer(size)
    at = 0
    for v in views:
        buf[at : at + v.nbytes] = v
        at += v.nbytes
    with memoryview(buf) as view:
        written = 0
        try:
            while written < bulk and written % DIRECT_BLOCK == 0:
                written += os.write(fd, view[written:bulk])
        except OSError as e:
            if e.errno != errno.EINVAL or written:
                raise
        finally:
            _set_direct(fd, False)
        _write_all(fd, [view[written:size]])


def _set_direct(fd: int, on: bool) -> bool:
    """O_DIRECT on or off for `fd`; False when its file system refuses it."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        return False
    return True


def _direct_buffer(size: int) -> mmap.mmap:
    """This thread's page-aligned buffer of at least `size` bytes, kept for its next file
    (its pages stay mapped: no fresh page per file); freed with the thread."""
    buf: mmap.mmap | None = getattr(_direct, "buffer", None)
    if buf is None or len(buf) < size:
        if buf is not None:
            buf.close()
        buf = _direct.buffer = mmap.mmap(-1, size + (-size % mmap.PAGESIZE))
    return buf


def _synced_temp(final: Path, data: FileData) -> Path:
    """`data` in a new temporary file beside `final`, fsynced; removed again on failure."""
    tmp = temp_path(final)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            _write_new(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def remove_durable(path: Path) -> None:
    """Unlink `path` (missing is fine) and fsync its folder."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fsync_dir(path.parent)


def move_aside(src: Path, dest_dir: Path) -> Path:
    """Move `src` into `dest_dir` (same file system) without replacing anything; durable.

    Returns the new path: `dest_dir/<name>`, or `<name>.1`, `<name>.2`... when taken.
    """
    if make_dir(dest_dir):
        fsync_dir(dest_dir.parent)
    target = dest_dir / src.name
    n = 0
    while True:
        try:
            # link() fails on an existing name where rename() would silently replace it.
            os.link(src, target)
            break
        except FileExistsError:
            n += 1
            target = dest_dir / f"{src.name}.{n}"
    fsync_dir(dest_dir)
    os.unlink(src)
    fsync_dir(src.parent)
    return target


def create_durable(final: Path, data: bytes) -> None:
    """Like `write_durable`, but `final` must not exist: FileExistsError, nothing replaced.

    The temporary file is published with link(), which fails on an existing name where
    rename() would silently replace it (two writers choosing the same name)."""
    tmp = _synced_temp(final, data)
    try:
        os.link(tmp, final)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    fsync_dir(final.parent)


def append_durable(path: Path, data: bytes) -> None:
    """Append `data` to `path` (created with FILE_MODE) and fsync it. A short write is
    continued; an error raises after whatever part was written (the caller repairs a torn
    tail before its next append)."""
    new = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if new:
        fsync_dir(path.parent)


def ends_with_newline(path: Path) -> bool:
    """Whether `path` is empty or missing, or its last byte is a newline."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return True
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
    except FileNotFoundError:
        return True


def fsync_file(path: Path) -> None:
    """fsync an existing file's data (e.g. one a crashed writer may have left unsynced)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
