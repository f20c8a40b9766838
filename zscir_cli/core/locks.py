"""Inter-process locks on cache entries (an artifact key, a training run).

Two identical commands run at once must not both do the work, nor tear each other's files:
whoever takes a name's lock first does the work; a second process waits for it (saying which
process it waits for), then finds the finished artifact. `cache rm` asks `is_held` before it
removes anything a live process may be writing.

Locks are `filelock` locks on `<root>/.locks/<name>.lock` (fcntl on POSIX, so a killed holder
releases its lock at once), with the holder's pid and host written beside them for messages.
One `FileLock` object per path and process makes nested holds of one name re-entrant.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

LOCK_DIR = ".locks"
_locks: dict[str, FileLock] = {}
_guard = threading.Lock()
# a forked child must not take or release its parent's locks through their FileLock objects,
# which filelock refuses (it shares their flock until it exits: a DataLoader worker forked under a
# lock keeps it a few seconds past a killed parent, until it sees the parent gone)
os.register_at_fork(after_in_child=_locks.clear)


def lock_path(root: Path, name: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return Path(root) / LOCK_DIR / f"{safe}.lock"


def _lock(path: Path) -> FileLock:
    with _guard:
        lock = _locks.get(str(path))
        if lock is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock = _locks[str(path)] = FileLock(str(path))
        return lock


def holder(root: Path, name: str) -> str:
    """'pid N on HOST' of the process that holds (or last held) the lock, or 'another process'."""
    try:
        text = lock_path(root, name).with_suffix(".owner").read_text(encoding="utf-8").strip()
    except OSError:
        text = ""
    return text or "another process"


@contextlib.contextmanager
def hold(root: Path, name: str, *, wait: bool = True,
         on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold `name`'s lock for the block. Held elsewhere: with `wait`, call `on_wait(holder)` and
    block until it is free; without, raise `Busy`."""
    path = lock_path(root, name)
    lock = _lock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        who = holder(root, name)
        if not wait:
            raise Busy(name, who) from None
        if on_wait is not None:
            on_wait(who)
        lock.acquire()
    try:
        if lock.lock_counter == 1:
            with contextlib.suppress(OSError):
                path.with_suffix(".owner").write_text(f"pid {os.getpid()} on {socket.gethostname()}\n",
                                                      encoding="utf-8")
        yield
    finally:
        lock.release()


def is_held(root: Path, name: str) -> bool:
    """Whether a live process (this one included) holds `name`'s lock now."""
    path = lock_path(root, name)
    if not path.exists():
        return False
    lock = _lock(path)
    if lock.is_locked:  # held by this process
        return True
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


class Busy(Exception):
    """A lock is held by another process and the caller chose not to wait."""

    def __init__(self, name: str, who: str):
        super().__init__(f"{name} is held by {who}")
        self.name = name
        self.who = who


def held_among(root: Path, prefix: str) -> str | None:
    """The holder of a held lock whose name starts with `prefix` (the locks of one job's processes,
    one each), or None when no live process holds one."""
    folder = Path(root) / LOCK_DIR
    for path in sorted(folder.glob(f"{re.sub(r'[^A-Za-z0-9_.-]', '_', prefix)}*.lock")) if folder.is_dir() else []:
        name = path.name.removesuffix(".lock")
        if is_held(root, name):
            return holder(root, name)
    return None
