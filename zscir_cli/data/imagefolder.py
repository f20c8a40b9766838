"""User image folders in the Hugging Face imagefolder convention.

A folder of images, optionally with `metadata.jsonl` or `metadata.csv` beside them (or a
captions file given with --captions), read by `data.captions`: each row names an image (relative
to the captions file's folder) and its caption. Images without a row have no caption.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from zscir_cli.core.errors import UserError
from zscir_cli.data.captions import read_captions
from zscir_cli.data.galleries import list_images
from zscir_cli.data.pixels import open_limited


@dataclass
class FolderItem:
    id: str  # path relative to the folder, with '/'
    path: Path
    caption: str  # '' when the metadata has none


METADATA = ("metadata.jsonl", "metadata.csv")


def metadata_file(root: Path) -> Path | None:
    """The folder's Hugging Face imagefolder metadata file, if it has one."""
    found = [root / n for n in METADATA if (root / n).is_file()]
    if len(found) > 1:
        raise UserError(f"{root} has both metadata.jsonl and metadata.csv.", "Keep one of them.")
    return found[0] if found else None


def read_metadata(root: Path, captions: Path | None = None) -> dict[str, str] | None:
    """{image id: caption} from `captions` (image paths relative to that file's folder, which
    must name images under `root`) or else from the folder's metadata file; None when neither.
    Read by the one caption reader, so both column conventions and CSV/TSV are accepted."""
    source = captions if captions is not None else metadata_file(root)
    if source is None:
        return None
    source = Path(source).expanduser().absolute()
    base = source.parent.resolve()  # `root` is resolved too: a linked folder compares equal
    out: dict[str, str] = {}
    lines: dict[str, int] = {}
    for row in read_captions(source, require_caption=False):
        where = Path(os.path.normpath(base / Path(row.image).expanduser()))
        if where != root and root not in where.parents:
            raise UserError(f"{source}:{row.line}: image '{row.image}' is not under the folder {root}.",
                            "Name images of the folder, relative to the captions file's folder.")
        name = where.relative_to(root).as_posix()
        if name in lines:
            raise UserError(f"{source}:{row.line}: '{row.image}' already has a caption on line {lines[name]}.",
                            "Keep one caption per image.")
        lines[name] = row.line
        out[name] = row.caption
    return out


def scan_folder(root: str | Path, captions: Path | None = None) -> tuple[list[FolderItem], bool]:
    """Every image with its caption; (items, has_captions). Captions naming a missing file fail."""
    root = Path(root).expanduser().resolve()
    files = list_images(root)
    meta = read_metadata(root, captions)
    ids = {p.relative_to(root).as_posix(): p for p in files}
    if meta is not None:
        missing = [name for name in meta if name not in ids]
        if missing:
            src = captions or metadata_file(root)
            raise UserError(f"{src} names {len(missing)} image(s) that do not exist: "
                            + ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "") + f" (under {root}).",
                            "Fix those image paths or add the images.")
    items = [FolderItem(i, p, (meta or {}).get(i, "")) for i, p in ids.items()]
    return items, meta is not None


def check_image(path: Path) -> str | None:
    """None if the image decodes, else the reason (a decompression bomb is refused by its
    header, never decoded)."""
    try:
        with open_limited(path, path.name) as im:
            im.load()
        return None
    except Exception as e:  # noqa: BLE001 - reported per file
        return f"{type(e).__name__}: {e}".splitlines()[0][:200]
