"""User-facing errors.

A `UserError` is a problem with what the user gave us (a path, a name, a file's content). The
CLI prints its message and hint as one or two sentences and exits with code 2, without a
traceback unless ZSCIR_DEBUG=1.
"""

from __future__ import annotations

import difflib
import errno
import os
from collections.abc import Iterable

EXIT_USER_ERROR = 2


class UserError(Exception):
    """Bad input: `message` says what is wrong, `hint` what to do about it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # what the CLI prints
        return f"{self.message} {self.hint}" if self.hint else self.message


def close_matches(word: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """The choices closest to `word`, for 'did you mean' hints (case-insensitive)."""
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    found = difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.5)
    if not found:  # fall back on substring matches: 'vit-l' should find 'ViT-L-14'
        found = [c for c in lowered if word.lower() in c][:n]
    return [lowered[f] for f in found]


_ROOM = "Free some space ('zscir cache rm' prunes the cache), or pass --cache-dir DIR on a disk with room."
_WRITABLE = ("Check its permissions, or pass --cache-dir DIR (or set ZSCIR_HOME) to use a folder you "
             "can write.")
# The one table of what the system refused: errno -> (what happened, what to do about it). Every
# OSError a command meets becomes a sentence from it (`os_error`), a failed write of the cache too
# (`durable.write_failure`).
OS_ERRORS = {
    errno.ENOSPC: ("the disk is full", _ROOM),
    errno.EDQUOT: ("the disk quota is exceeded", _ROOM),
    errno.EFBIG: ("the file is too large for the file system", _ROOM),
    errno.EACCES: ("permission denied", _WRITABLE),
    errno.EPERM: ("the operation is not permitted", _WRITABLE),
    errno.EROFS: ("the file system is read-only", "Pass --cache-dir DIR (or set ZSCIR_HOME) to use a writable folder."),
    errno.EISDIR: ("a folder is where a file was expected", "Give a file's path."),
    errno.ENOTDIR: ("a part of the path is a file where a folder was expected", "Check the path."),
    errno.ENOENT: ("no such file or folder", "Check the path."),
    errno.EMFILE: ("too many files are open", "Raise the limit (ulimit -n) or use fewer --workers."),
}


def os_error(e: OSError) -> UserError:
    """An operating-system failure (permissions, a full disk, a folder where a file belongs)
    as a user error: one sentence naming the path, then the fix."""
    known = OS_ERRORS.get(e.errno or 0)
    what = known[0] if known else (e.strerror or str(e) or type(e).__name__).rstrip(".")
    if e.filename is not None:
        where = f"{os.fsdecode(e.filename)}"
        if e.filename2 is not None:
            where += f" -> {os.fsdecode(e.filename2)}"
        message = f"{where}: {what[:1].lower() + what[1:]}."
    else:
        message = f"The system refused an operation: {what[:1].lower() + what[1:]}."
    return UserError(message, known[1] if known else "Check the path and try again.")
