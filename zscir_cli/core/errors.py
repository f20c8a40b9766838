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


_OS_FIXES = {
    errno.EACCES: "Check its permissions, or pass --cache-dir DIR (or set ZSCIR_HOME) to use a "
                  "folder you can write.",
    errno.EPERM: "Check its permissions and ownership.",
    errno.EROFS: "The file system is read-only: pass --cache-dir DIR (or set ZSCIR_HOME) to use "
                 "a writable folder.",
    errno.ENOSPC: "The disk is full: free space ('zscir cache rm' prunes the cache) or pass "
                  "--cache-dir DIR on another disk.",
    errno.EDQUOT: "The disk quota is exhausted: free space ('zscir cache rm' prunes the cache) "
                  "or pass --cache-dir DIR on another disk.",
    errno.EISDIR: "A file was expected there, not a folder: give a file's path.",
    errno.ENOTDIR: "A part of the path is a file where a folder was expected: check the path.",
    errno.ENOENT: "Check the path.",
    errno.EMFILE: "Too many files are open: raise the limit (ulimit -n) or use fewer --workers.",
}


def os_error(e: OSError) -> UserError:
    """An operating-system failure (permissions, a full disk, a folder where a file belongs)
    as a user error: one sentence naming the path, then the fix."""
    what = (e.strerror or str(e) or type(e).__name__).rstrip(".")
    if e.filename is not None:
        where = f"{os.fsdecode(e.filename)}"
        if e.filename2 is not None:
            where += f" -> {os.fsdecode(e.filename2)}"
        message = f"{where}: {what[:1].lower() + what[1:]}."
    else:
        message = f"The system refused an operation: {what[:1].lower() + what[1:]}."
    return UserError(message, _OS_FIXES.get(e.errno or 0, "Check the path and try again."))
