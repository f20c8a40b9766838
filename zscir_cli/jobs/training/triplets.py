"""`zscir synth`: write synthetic triplets as JSONL, and read them back for Stage II.

JSONL schema, one object a line:
  reference, target       image ids of the data set named by `dataset`, or image paths
  modification            the modification text
  reference_caption, target_caption
  edit_type, old, new     what the edit changed
  score                   1.0 for an exact target, else the caption similarity of the match
  source                  template | scene
  dataset                 (with --data) the prepared data set's cache key
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zscir_cli.core.errors import UserError
from zscir_cli.data import shapes
from zscir_cli.data.captions import read_captions
from zscir_cli.data.shapes.triplets import scene_triplets
from zscir_cli.data.paths import OUTSIDE_HINT, inside
from zscir_cli.data.synth import MATCHES, SynthReport, template_triplets
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.datasets.store import find_dataset, load_split

REQUIRED = ("reference", "target", "modification")
log = logging.getLogger("zscir.synth")


@dataclass
class Corpus:
    ids: list[str]
    captions: list[str]
    scenes: list | None  # shapes scenes, for --mode scene
    dataset_key: str | None  # ids are rows of this data set's train split; else paths


def corpus_from_dataset(ctx: Context, name: str) -> Corpus:
    art = find_dataset(ctx, name)
    ds = load_split(art, "pairs", "train")
    caps = list(ds["caption"])
    scenes = [shapes.Scene.from_json(s) for s in ds["scene"]] if "scene" in ds.column_names else None
    return Corpus(list(ds["id"]), caps, scenes, art.key)


def corpus_from_file(path: Path, allow_outside: bool = False) -> Corpus:
    """A captions file (see `data.captions`: JSONL, CSV or TSV, image/caption or file_name/text);
    image paths are relative to the file, inside its folder unless `allow_outside`, and every
    image must exist: a triplet is never written to an image that is not there."""
    path = Path(path).expanduser()
    folder = Path(os.path.normpath(path.parent.absolute()))
    ids, caps, missing = [], [], []
    for row in read_captions(path):
        found = inside(folder, row.image)
        if found is None and not allow_outside:
            raise UserError(f"{path}:{row.line}: image '{row.image}' lies outside the captions file's folder "
                            f"{folder}.", OUTSIDE_HINT)
        # kept unresolved, so that a linked image folder stays inside the file's folder when written
        image = Path(os.path.normpath(path.parent.absolute() / Path(row.image).expanduser()))
        if not image.is_file():
            missing.append(f"line {row.line}: {row.image}")
        ids.append(str(image))
        caps.append(row.caption)
    if missing:
        raise UserError(f"{path} names {len(missing)} image(s) that do not exist ("
                        + "; ".join(missing[:10]) + ("; ..." if len(missing) > 10 else "") + ").",
                        "Fix those paths (relative to the captions file) or remove their lines.")
    return Corpus(ids, caps, None, None)


def check_options(mode: str, match: str) -> None:
    """Refuse an unknown --mode or --match before any model loads."""
    if mode not in ("template", "scene"):
        raise UserError(f"Unknown mode '{mode}'.", "Use template or scene.")
    if match not in MATCHES:
        raise UserError(f"Unknown --match '{match}'.", f"Use {' or '.join(MATCHES)}.")


def synthesise(ctx: Context, corpus: Corpus, *, mode: str, max_triplets: int, seed: int,
               min_similarity: float, embed=None, match: str = "words") -> SynthReport:
    if mode == "scene":
        if corpus.scenes is None:
            raise UserError("--mode scene needs scene graphs, which only the shapes world has.",
                            "Use --mode template, or --data shapes.")
        return scene_triplets(corpus.ids, corpus.scenes, corpus.captions, max_triplets=max_triplets, seed=seed)
    check_options(mode, match)
    with ctx.reporter.task("matching edited captions", total=None) as task:
        return template_triplets(corpus.ids, corpus.captions, embed, max_triplets=max_triplets, seed=seed,
                                 min_similarity=min_similarity, match=match, progress=lambda n: task.advance(n))


def write_triplets(report: SynthReport, corpus: Corpus, out: Path) -> int:
    """Write the JSONL file; image paths are written relative to its folder (as they are read
    back). Returns how many rows name an image outside that folder."""
    out = Path(out)
    if corpus.dataset_key is None:  # images may have gone since the captions were read
        gone = sorted({p for t in report.triplets for p in (t.reference, t.target) if not Path(p).is_file()})
        if gone:
            raise UserError(f"{len(gone)} image(s) of the triplets do not exist: {', '.join(gone[:5])}.",
                            f"Restore them and run again; nothing was written to {out}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(os.path.normpath(out.parent.absolute()))
    outside = 0
    tmp = out.with_name(f".{out.name}.incomplete")
    with open(tmp, "w", encoding="utf-8") as f:
        for t in report.triplets:
            row = t.to_json()
            if corpus.dataset_key:
                row["dataset"] = corpus.dataset_key
            else:
                for field in ("reference", "target"):
                    row[field] = Path(os.path.relpath(row[field], folder)).as_posix()
                outside += any(row[k].startswith("../") for k in ("reference", "target"))
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, out)
    return outside


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
    lines = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
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
