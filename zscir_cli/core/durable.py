"""Durable writes: the one way a file is written (`write_atomically`) or a finished one put in
place (`publish`), flushed to disk with ordinary permissions; a write that failed for want of
space or permission becomes a sentence naming the path and the fix (from `errors.OS_ERRORS`)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from zscir_cli.core import faults
from zscir_cli.core.errors import OS_ERRORS, UserError

# writers outside Python (safetensors, faiss) report the OS error in their message only
_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS)
_MESSAGE_ERRNOS = {os.strerror(n): n for n in _WRITE_ERRNOS}


def write_failure(exc: BaseException, root: Path) -> UserError | None:
    """The UserError for a write that failed for want of space or permission, else None."""
    if isinstance(exc, UserError) or not isinstance(exc, Exception):
        return None
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None:
        text = str(exc)
        match = re.search(r"os error (\d+)", text)
        code = int(match.group(1)) if match else next(
            (n for msg, n in _MESSAGE_ERRNOS.items() if msg in text), None)
    if code not in _WRITE_ERRNOS:
        return None
    what, fix = OS_ERRORS[code]
    path = getattr(exc, "filename", None)
    where = f"{path}" if path else f"to the cache at {root}"
    return UserError(f"Could not write {where}: {what}; nothing of the unfinished artifact "
                     "was kept.", fix)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def settle(folder: Path) -> None:
    """Give the artifact's files ordinary permissions (some writers make them 0600) and flush
    them and their folders to disk, so the rename that publishes the artifact never outlives
    its content after a power cut."""
    mask = _umask()
    for dirpath, _dirnames, filenames in os.walk(folder):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in filenames:
            path = os.path.join(dirpath, name)
            os.chmod(path, 0o666 & ~mask)
            fsync_path(Path(path))
        fsync_path(Path(dirpath))


def publish(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Put a finished file (written under a temporary name by another writer: a memory map, a
    parquet writer) in place: flushed, renamed over `path`, and the rename itself flushed."""
    fsync_path(Path(tmp))
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # some file systems cannot fsync a folder
        fsync_path(Path(path).parent)


def write_atomically(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], None], *,
                     kill_point: str | None = None) -> None:
    """The one durable write of a file: `data` (bytes, or a function that writes to the open
    file) goes to a temporary file of its own beside `path` (pid and a random part: two processes,
    or a killed one's leftover, never share one), is flushed and fsync'd, then renamed over
    `path`, and the folder is fsync'd so that the rename survives a power cut. A crash at any
    instant leaves the old file or the new one, never a torn one; a failed write leaves nothing."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.incomplete")
    try:
        with open(tmp, "wb") as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        if kill_point:
            faults.point(kill_point)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # some file systems cannot fsync a folder
        fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entry to the disk (a folder: the names renamed into it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
