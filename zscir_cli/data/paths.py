"""Paths that a file names, relative to its own folder (captions, triplets, CSV rows, queries):
where they lead, and whether they stay inside that folder."""

from __future__ import annotations

import os
from pathlib import Path

OUTSIDE_HINT = ("Keep the images in the file's folder or below it, or pass --allow-outside-paths "
                "if you trust the file.")
def inside(folder: Path, value: str) -> Path | None:
    """`folder / value` when it stays inside `folder` (compared without following links, so a
    linked image folder is fine), else None: absolute paths and '..' that climbs out."""
    rel = Path(value).expanduser()
    if rel.is_absolute():
        return None
    joined = Path(os.path.normpath(folder / rel))
    return joined if joined == folder or folder in joined.parents else None
