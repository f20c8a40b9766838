"""User-facing errors.

A `UserError` is a problem with what the user gave us (a path, a name, a file's content). The
CLI prints its message and hint as one or two sentences and exits with code 2, without a
traceback unless ZSCIR_DEBUG=1.
"""

from __future__ import annotations

import difflib
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
