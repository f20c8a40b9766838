"""User image folders in the Hugging Face imagefolder convention.

A folder of images, optionally with `metadata.jsonl` (one JSON object a line) or
`metadata.csv` beside them, each row naming a `file_name` (relative to the folder) and its
caption in `text`. Images without a row have no caption.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from zscir_cli.core.errors import UserError
from zscir_cli.data.images import list_images
from zscir_cli.data.pixels import open_limited


@dataclass
class FolderItem:
    id: str  # path relative to the folder, with '/'
    path: Path
    caption: str  # '' when the metadata has none


def read_metadata(root: Path) -> dict[str, str] | None:
    """{file_name: text} from metadata.jsonl or metadata.csv, None when there is neither."""
    jsonl, csv_path = root / "metadata.jsonl", root / "metadata.csv"
    if jsonl.is_file() and csv_path.is_file():
        raise UserError(f"{root} has both metadata.jsonl and metadata.csv.", "Keep one of them.")
    rows: list[tuple[int, dict]] = []
    if jsonl.is_file():
        source = jsonl
        for n, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{jsonl}:{n}: not valid JSON ({e.msg}).",
                                "Each line must be one object such as {\"file_name\": \"a.jpg\", \"text\": \"...\"}.") from e
            if not isinstance(obj, dict):
                raise UserError(f"{jsonl}:{n}: expected a JSON object, got {type(obj).__name__}.",
                                "Each line must be one object with file_name and text.")
            rows.append((n, obj))
    elif csv_path.is_file():
        source = csv_path
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "file_name" not in reader.fieldnames:
                raise UserError(f"{csv_path}: the header has no 'file_name' column.",
                                "The first line must name the columns, e.g. file_name,text.")
            rows = [(n, row) for n, row in enumerate(reader, start=2)]
    else:
        return None
    out: dict[str, str] = {}
    for n, row in rows:
        name = row.get("file_name")
        if not isinstance(name, str) or not name:
            raise UserError(f"{source}:{n}: no 'file_name'.", "Every row names its image in file_name.")
        text = row.get("text", "")
        if not isinstance(text, str):
            raise UserError(f"{source}:{n}: 'text' must be a string.", "Put the caption in text.")
        out[Path(name).as_posix()] = text
    return out


def scan_folder(root: str | Path) -> tuple[list[FolderItem], bool]:
    """Every image with its caption; (items, has_metadata). Metadata naming a missing file fails."""
    root = Path(root).expanduser().resolve()
    files = list_images(root)
    meta = read_metadata(root)
    ids = {p.relative_to(root).as_posix(): p for p in files}
    if meta is not None:
        missing = [name for name in meta if name not in ids]
        if missing:
            raise UserError(f"The metadata of {root} names {len(missing)} image(s) that do not exist: "
                            + ", ".join(missing[:10]) + ".", "Fix the file_name entries or add the images.")
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
