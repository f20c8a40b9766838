"""Training data in shards, read as streams: webdataset tar files and CSV/TSV files.

- webdataset (img2dataset's output): tar files whose members are grouped into samples by key,
  the member's path up to the first dot of its name (`000123.jpg`, `000123.txt`,
  `000123.json` are one sample). The image is the `.jpg`/`.jpeg`/`.png`/`.webp` member, the
  caption the `.txt` member (else a `.json` member's "caption"). Shard lists use brace
  expansion, as webdataset does: `shards/{00000..00099}.tar`.
- CSV/TSV (open_clip's `--csv-img-key`/`--csv-caption-key`/`--csv-separator` convention): a
  header line naming the columns, one image path and caption a row.

Neither reader holds more than one sample (one row) in memory: a corpus of any size streams.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import UnidentifiedImageError

from zscir_cli.core.errors import UserError
from zscir_cli.core.text import ENCODING
from zscir_cli.data.pixels import open_limited

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
_KEY = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's split: key, then extension(s)


def expand_braces(pattern: str) -> list[str]:
    """`a{0..2}b` -> a0b a1b a2b (zero-padded to the width written: {00..10}); `{x,y}` -> x y;
    several groups multiply, left to right."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    r = _RANGE.match(body)
    if r is not None:
        lo, hi = int(r.group(1)), int(r.group(2))
        width = len(r.group(1)) if r.group(1).startswith("0") else 0
        step = 1 if hi >= lo else -1
        choices = [str(i).zfill(width) for i in range(lo, hi + step, step)]
    else:
        choices = body.split(",")
    return [out for c in choices for out in expand_braces(head + c + tail)]


@dataclass
class Sample:
    id: str  # shard name / key, unique in the corpus
    where: str  # how messages name it: shard path and member
    image: bytes | None  # the image member's bytes (None: the sample has no image)
    caption: str | None  # None: no caption member
    fault: str | None = None  # why the sample cannot be used although it has an image (a bad caption member)


def iter_tar(path: Path, name: str) -> Iterator[Sample]:
    """The samples of one tar shard in member order; `name` prefixes the ids. A shard that
    cannot be read to its end raises ShardError after the samples before the damage, naming the
    member: a member cut short, or an archive without its end (tarfile's stream reader would
    stop there without a word)."""
    group: dict[str, bytes] = {}
    key: str | None = None
    last = "its first member"
    try:
        with tarfile.open(path, mode="r|*") as tar:  # a stream: members are read once, in order
            for member in tar:
                last = member.name
                if not member.isfile():
                    continue
                m = _KEY.match(member.name)
                if m is None:
                    continue
                k, ext = m.group(1), m.group(2).lower()
                if k != key and key is not None:
                    yield _sample(path, name, key, group)
                    group = {}
                key = k
                f = tar.extractfile(member)
                group[ext] = f.read() if f is not None else b""
                if len(group[ext]) != member.size:
                    raise ShardError(path, f"member {member.name} is cut off ({len(group[ext])} of {member.size} bytes)")
            _check_end(path, tar, last)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise ShardError(path, f"after member {last}: {type(e).__name__}: {e}".splitlines()[0][:200]) from e
    if key is not None:
        yield _sample(path, name, key, group)


def _check_end(path: Path, tar: tarfile.TarFile, last: str) -> None:
    """An uncompressed archive ends with two zero blocks after its last member: one that stops
    before them was cut off (a compressed one says so itself, through its decompressor)."""
    if tar.fileobj is not None and getattr(tar.fileobj, "cmp", None) is None and \
            getattr(tar.fileobj, "comptype", "tar") == "tar" and path.stat().st_size < tar.offset + 2 * tarfile.BLOCKSIZE:
        raise ShardError(path, f"it ends after member {last}, without the end of the archive (cut off?)")


class ShardError(Exception):
    """A shard that cannot be read to its end (truncated, not a tar)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _sample(path: Path, name: str, key: str, group: dict[str, bytes]) -> Sample:
    ext = next((e for e in IMAGE_EXTS if e in group), None)
    caption, fault = None, None
    if "txt" in group:
        caption = group["txt"].decode(ENCODING, errors="replace").strip()  # a BOM is no part of it
    elif "json" in group:  # img2dataset's metadata: a null caption is a missing one
        try:
            meta = json.loads(group["json"].decode(ENCODING, errors="replace"))
        except ValueError as e:
            meta, fault = None, f"{key}.json is not JSON ({e})"
        value = meta.get("caption") if isinstance(meta, dict) else None
        if fault is None and not isinstance(meta, dict):
            fault = f"{key}.json holds {type(meta).__name__}, not an object with a 'caption'"
        elif isinstance(value, str):
            caption = value.strip()
        elif value is not None:
            fault = f"the caption of {key}.json is {type(value).__name__}, not text"
    where = f"{path}: {key}.{ext or '*'}"
    return Sample(f"{name}/{key}", where, group[ext] if ext else None, caption, fault)


def check_image_bytes(data: bytes, what: str) -> str | None:
    """None if the image decodes (within the pixel limit), else the reason."""
    try:
        with open_limited(io.BytesIO(data), what) as im:
            im.load()
        return None
    except UnidentifiedImageError:  # its message names an in-memory buffer: say it plainly
        return "UnidentifiedImageError: not an image format Pillow reads"
    except Exception as e:  # noqa: BLE001 - reported per member
        return f"{type(e).__name__}: {e}".splitlines()[0][:200]


def separator_for(path: Path, separator: str | None) -> str:
    """The field separator: as given ('\\t' and 'tab' mean a tab), else by the file's suffix
    (.tsv: tab; otherwise comma)."""
    if separator is None:
        return "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    sep = {"\\t": "\t", "tab": "\t"}.get(separator, separator)
    if len(sep) != 1:
        raise UserError(f"--separator must be one character, got '{separator}'.", "e.g. --separator ',' or '\\t'.")
    return sep


def iter_csv(path: Path, image_column: str, caption_column: str | None, separator: str) -> Iterator[tuple[int, str, str | None]]:
    """(line, image path as written, caption or None when empty) for every data row."""
    shown = {"\t": "tab", ",": "comma"}.get(separator, repr(separator))
    try:
        f = open(path, newline="", encoding=ENCODING)  # noqa: SIM115 - closed below, rows stream
    except OSError as e:
        raise UserError(f"Cannot read {path} ({e.strerror}).", "Check the path.") from e
    with f:
        reader = csv.reader(f, delimiter=separator)
        try:
            header = next(reader, None)
            if header is None:
                raise UserError(f"{path} is empty.", "Give a file whose first line names the columns.")
            missing = [c for c in (image_column, caption_column) if c is not None and c not in header]
            if missing:
                raise UserError(f"{path}: the header ({shown}-separated) has no column "
                                f"{', '.join(repr(c) for c in missing)}; it has {', '.join(repr(c) for c in header[:8])}.",
                                "Name the columns with --image-column and --caption-column, or the "
                                "separator with --separator.")
            ii = header.index(image_column)
            ci = header.index(caption_column) if caption_column is not None else None
            for row in reader:
                if not row or all(not v.strip() for v in row):
                    continue
                if len(row) != len(header):
                    raise UserError(f"{path}:{reader.line_num}: {len(row)} fields, the header has {len(header)}.",
                                    "Quote fields that hold the separator, or fix the row.")
                cap = row[ci].strip() if ci is not None else ""
                yield reader.line_num, row[ii], (cap or None)
        except csv.Error as e:
            raise UserError(f"{path}:{reader.line_num}: not valid {shown}-separated text ({e}).",
                            "Fix that line.") from e
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text after line {reader.line_num} (byte {e.start} of a block).",
                            "Save it as UTF-8.") from None
