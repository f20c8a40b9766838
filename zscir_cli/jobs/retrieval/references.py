"""Is a query's reference file one of the indexed images? Then it is left out of the ranking,
as a reference given by id is: the reference itself at rank 1 (score 1.0) answers nothing.

The same image is the same file (by path, links followed) or the same bytes (a copy elsewhere);
bytes are compared only with gallery images of exactly the reference's size.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from zscir_cli.data.galleries import DatasetGallery, Gallery


def gallery_row_of(reference: str | Path | bytes, ids: list[str], gallery: Gallery | None) -> int | None:
    """The index row (into `ids`) whose image is the file `reference` (or, given bytes, an
    uploaded image's content), else None. `gallery` is the index's gallery re-opened (None when
    it is gone: nothing can be compared)."""
    if gallery is None:
        return None
    rows: dict[str, int] = {}
    for r, i in enumerate(ids):
        rows.setdefault(i, r)
    if isinstance(reference, bytes):
        return _same_bytes(reference, None, rows, gallery)
    path = Path(reference).expanduser()
    if not path.is_file():
        return None
    real = path.resolve()
    root = getattr(gallery, "root", None)
    if root is not None:  # a file of the indexed folder: found by its id, without a scan
        for base in (Path(root), Path(root).resolve()):
            for p in (path.absolute(), real):
                try:
                    rel = Path(os.path.normpath(p)).relative_to(base).as_posix()
                except ValueError:
                    continue
                if rel in rows:
                    return rows[rel]
    return _same_bytes(path.read_bytes(), real, rows, gallery)


def _same_bytes(data: bytes, real: Path | None, rows: dict[str, int], gallery: Gallery) -> int | None:
    for gid, file, blob in _entries(gallery):
        r = rows.get(gid)
        if r is None:
            continue
        if blob is not None or file is None:
            if blob is not None and len(blob) == len(data) and blob == data:
                return r
            continue
        try:
            if file.stat().st_size != len(data):
                continue
            if file.resolve() == real or file.read_bytes() == data:
                return r
        except OSError:  # a vanished gallery file is simply not the reference
            continue
    return None


def _entries(gallery: Gallery) -> Iterator[tuple[str, Path | None, bytes | None]]:
    """(id, file, bytes) of every gallery image, without decoding any."""
    if isinstance(gallery, DatasetGallery):
        import datasets as hf

        raw = gallery.dataset.cast_column("image", hf.Image(decode=False)).select_columns(["image"])
        cells = (c for batch in raw.iter(batch_size=512) for c in batch["image"])  # bounded memory
        for gid, cell in zip(gallery.ids, cells):
            blob = cell.get("bytes") if isinstance(cell, dict) else None
            where = cell.get("path") if isinstance(cell, dict) else None
            if blob is not None:
                yield gid, None, blob
            elif where:
                yield gid, Path(where), None
        return
    files = getattr(gallery, "files", None)
    if files is not None:
        yield from ((gid, Path(f), None) for gid, f in zip(gallery.ids, files))
