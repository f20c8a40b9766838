"""Output paths named on the command line, checked before any work: a long run never fails at
its last step for a path it could not write."""

from __future__ import annotations

import os
from pathlib import Path

from zscir_cli.core.errors import UserError


def check_output(path: Path) -> Path:
    """Make an output file's folder (what a user naming a new folder means) and check it can be
    written, before any work: a long run never fails at its last step for a path."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{path} is a folder.", "Give a file name, e.g. results.html.")
    _check_folder(path.parent, UserError)
    return path


def check_output_dir(folder: Path) -> Path:
    """Make an output folder and check it can be written, before any work."""
    folder = Path(folder).expanduser()
    _check_folder(folder, UserError)
    return folder


def _check_folder(folder: Path, error: type) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".zscir-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise error(f"Cannot write to {folder} ({e.strerror or e}).",
                    "Choose a folder you can write, or create it first.") from e
