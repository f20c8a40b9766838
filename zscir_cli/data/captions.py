"""The one reader of caption files: every command that takes captions reads them here.

Accepted, one image a row:

- JSONL (`.jsonl`, `.json`, `.ndjson`): one object a line;
- CSV (`.csv`) or TSV (`.tsv`, `.tab`): a header line naming the columns;

with either column convention: `image` + `caption` (zscir's), or `file_name` + `text` (the
Hugging Face imagefolder `metadata.jsonl` / `metadata.csv`). Other columns are ignored. A file of
another suffix is read as JSONL when its first character is '{', else as CSV (TSV when its header
holds a tab). Every bad row is named by its line number.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

from zscir_cli.core.errors import UserError
from zscir_cli.core.text import ENCODING

IMAGE_KEYS = ("image", "file_name")
CAPTION_KEYS = ("caption", "text")
# what each command's --help says it accepts
FORMAT_HELP = ("JSONL, CSV or TSV, one image a row, with columns image and caption, or file_name and "
               "text (the Hugging Face imagefolder metadata.jsonl/metadata.csv); image paths relative "
               "to the file")
EXAMPLE = '{"image": "a.jpg", "caption": "a red dress"}'


@dataclass(frozen=True)
class CaptionRow:
    line: int  # 1-based line of the file where the row starts
    image: str  # as written in the file
    caption: str  # '' when the row has none (allowed only where captions are optional)


def read_captions(path: str | Path, *, require_caption: bool = True) -> list[CaptionRow]:
    """The rows of a caption file, in file order; a user error names the first bad line."""
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"Captions file not found: {path}.",
                        f"Give a file in one of the accepted forms: {FORMAT_HELP}.") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a captions file.", f"Give a file: {FORMAT_HELP}.") from None
    try:
        text = raw.decode(ENCODING)  # a spreadsheet's byte-order mark is not part of the header
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (byte {e.start}).", "Save it as UTF-8.") from e
    kind = _kind(path, text)
    records = _jsonl(path, text) if kind == "jsonl" else _table(path, text, "\t" if kind == "tsv" else ",")
    rows = [_row(path, n, rec, require_caption) for n, rec in records]
    if not rows:
        raise UserError(f"{path} holds no captions.", f"Write one image and caption a row, e.g. {EXAMPLE}.")
    return rows


def _kind(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix in (".tsv", ".tab"):
        return "tsv"
    head = text.lstrip()
    if head.startswith("{"):
        return "jsonl"
    return "tsv" if "\t" in head.split("\n", 1)[0] else "csv"


def _jsonl(path: Path, text: str) -> list[tuple[int, dict]]:
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not valid JSON ({e.msg}).",
                            f"Each line must be one object such as {EXAMPLE}.") from e
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}.",
                            f"Each line must be one object such as {EXAMPLE}.")
        out.append((n, obj))
    return out


def _table(path: Path, text: str, delimiter: str) -> list[tuple[int, dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    fields = [f.strip() for f in (reader.fieldnames or [])]
    reader.fieldnames = fields
    what = "TSV" if delimiter == "\t" else "CSV"
    if not any(k in fields for k in IMAGE_KEYS):
        raise UserError(f"{path}:1: the {what} header has no 'file_name' column (nor 'image'); "
                        f"it has: {', '.join(fields) or 'nothing'}.",
                        "The first line must name the columns, e.g. image,caption or file_name,text.")
    out, start = [], reader.line_num + 1
    try:
        for rec in reader:
            if any(v not in (None, "") for k, v in rec.items() if k is not None):
                out.append((start, rec))
            start = reader.line_num + 1  # a quoted caption may span lines
    except csv.Error as e:
        raise UserError(f"{path}:{reader.line_num}: not valid {what} ({e}).", "Fix the quoting of that line.") from e
    return out


def _row(path: Path, n: int, rec: dict, require_caption: bool) -> CaptionRow:
    image = next((rec[k] for k in IMAGE_KEYS if rec.get(k) not in (None, "")), None)
    if not isinstance(image, str) or not image.strip():
        raise UserError(f"{path}:{n}: no image path (an 'image' or 'file_name' string).",
                        f"Every row names its image, e.g. {EXAMPLE}.")
    caption = next((rec[k] for k in CAPTION_KEYS if rec.get(k) is not None), "")
    if not isinstance(caption, str):
        raise UserError(f"{path}:{n}: the caption must be a string, got {type(caption).__name__}.",
                        f"Put the caption in 'caption' or 'text', e.g. {EXAMPLE}.")
    if require_caption and not caption.strip():
        raise UserError(f"{path}:{n}: no caption for '{image}' ('caption' or 'text' is missing or empty).",
                        "Give every row a caption, or remove the row.")
    return CaptionRow(n, image.strip(), caption)


def captions_digest(pairs: list[tuple[str, str]]) -> str:
    """sha256 of (image id, caption) pairs: what a data set's captions contribute to its key."""
    return hashlib.sha256(json.dumps(sorted(pairs), ensure_ascii=False).encode()).hexdigest()
