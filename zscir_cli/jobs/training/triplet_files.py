"""Triplet files, the JSONL Stage II trains on: written by `zscir synth`, read back (and
validated, line by line, before anything is encoded) by `zscir compose-train`.

One object a line:
  reference, target       image ids of the data set named by `dataset`, or image paths
                          (relative to the file's folder)
  modification            the modification text
  reference_caption, target_caption
  edit_type, old, new     what the edit changed
  score                   1.0 for an exact target, else the caption similarity of the match
  source, recipe          template | scene; template/words, template/content or scene
  dataset                 (with --data) the prepared data set's cache key
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zscir_cli.core.durable import write_atomically
from zscir_cli.core.errors import UserError
from zscir_cli.core.text import read_text
from zscir_cli.data.paths import OUTSIDE_HINT, inside
from zscir_cli.data.synth import SynthReport

REQUIRED = ("reference", "target", "modification")
log = logging.getLogger("zscir.synth")


@dataclass
class TripletFile:
    rows: list[dict[str, Any]]
    dataset_key: str | None
    skipped: list[str]
    duplicates: int = 0  # lines that repeated an earlier (reference, target, modification)




def _image_path(path: Path, n: int, field: str, value: str, allow_outside: bool) -> Path:
    """Where a triplet's image lies; refused, naming the line, when it escapes the file's folder."""
    folder = Path(os.path.normpath(path.parent.absolute()))
    found = inside(folder, value)
    if found is not None:
        return found
    if not allow_outside:
        raise UserError(f"{path}:{n}: {field} '{value}' lies outside the triplet file's folder "
                        f"{folder}.", OUTSIDE_HINT)
    p = Path(value).expanduser()
    return p if p.is_absolute() else folder / p


def _parse_line(path: Path, n: int, line: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{n}: not valid JSON ({e.msg}).", "Fix or remove that line.") from e
    if not isinstance(row, dict):
        raise UserError(f"{path}:{n}: expected a JSON object.", "Each line is one triplet object.")
    missing = [k for k in REQUIRED if not isinstance(row.get(k), str) or not row.get(k, "").strip()]
    if missing:
        raise UserError(f"{path}:{n}: missing or empty {', '.join(missing)}.",
                        "Each triplet needs reference, target and modification strings.")
    return row


def read_triplets(path: Path, skip_bad: bool = False, *, allow_outside: bool = False,
                  strict: bool = False) -> TripletFile:
    """Validate a triplet file before anything is encoded. Malformed lines are errors naming the
    line; so are image paths that leave the file's folder (absolute, or '..' climbing out)
    unless `allow_outside`, and missing images unless `skip_bad` (then counted). A repeated
    (reference, target, modification) is dropped and counted: it would stand twice in a batch,
    each copy a false negative of the other; `strict` makes it an error."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"Triplet file not found: {path}.", "Write one with 'zscir synth --out FILE'.")
    lines = [(n, line) for n, line in enumerate(read_text(path).splitlines(), start=1)
             if line.strip()]
    parsed = [(n, _parse_line(path, n, line)) for n, line in lines]
    keys = {row.get("dataset") for _, row in parsed}
    if len(keys) > 1:
        raise UserError(f"{path} mixes triplets of several data sets ({', '.join(map(str, keys))}).",
                        "Use one data set per triplet file.")
    # every path is checked before any file is opened
    located = [(n, row, {f: _image_path(path, n, f, row[f], allow_outside) for f in ("reference", "target")}
                if row.get("dataset") is None else None) for n, row in parsed]
    rows, skipped, seen = [], [], {}
    for n, row, images in located:
        if images is not None:
            gone = next(((f, p) for f, p in images.items() if not p.is_file()), None)
            if gone is not None:
                if not skip_bad:
                    raise UserError(f"{path}:{n}: {gone[0]} image not found: {gone[1]}.",
                                    "Fix the path, or pass --skip-bad to leave such triplets out.")
                skipped.append(f"line {n}: {gone[1]}")
                continue
            row.update({f: str(p.resolve()) for f, p in images.items()})
        key = (row["reference"], row["target"], row["modification"].strip())
        if key in seen:
            if strict:
                raise UserError(f"{path}:{n}: repeats the triplet of line {seen[key]}.",
                                "Remove the repeated lines (without --strict they are dropped).")
            continue
        seen[key] = n
        rows.append(row)
    if not rows:
        raise UserError(f"{path} holds no usable triplet.", "Write triplets with 'zscir synth'.")
    duplicates = len(located) - len(skipped) - len(rows)
    if duplicates:
        log.warning(f"{path}: dropped {duplicates} repeated triplet(s) (same reference, target and "
                    "modification as an earlier line)")
    return TripletFile(rows, next(iter(keys)), skipped, duplicates)


def write_triplets(report: SynthReport, out: Path, dataset_key: str | None) -> int:
    """Write the JSONL file: ids of the data set `dataset_key`, or (None) image paths, written
    relative to the file's folder (as they are read back). Returns how many rows name an image
    outside that folder."""
    out = Path(out)
    if dataset_key is None:  # images may have gone since the captions were read
        gone = sorted({p for t in report.triplets for p in (t.reference, t.target) if not Path(p).is_file()})
        if gone:
            raise UserError(f"{len(gone)} image(s) of the triplets do not exist: {', '.join(gone[:5])}.",
                            f"Restore them and run again; nothing was written to {out}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(os.path.normpath(out.parent.absolute()))
    outside = 0
    lines = []
    for t in report.triplets:
        row = t.to_json()
        if dataset_key:
            row["dataset"] = dataset_key
        else:
            for field in ("reference", "target"):
                row[field] = Path(os.path.relpath(row[field], folder)).as_posix()
            outside += any(row[k].startswith("../") for k in ("reference", "target"))
        lines.append(json.dumps(row) + "\n")
    write_atomically(out, "".join(lines).encode("utf-8"))
    return outside
