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

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zscir_cli.core.errors import UserError
from zscir_cli.data import shapes
from zscir_cli.data.synth import SynthReport, scene_triplets, template_triplets
from zscir_cli.pipeline.context import Context
from zscir_cli.pipeline.datasets import find_dataset, load_split

REQUIRED = ("reference", "target", "modification")


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


def corpus_from_file(path: Path) -> Corpus:
    """JSONL ({"image": ..., "caption": ...}) or CSV (image,caption); paths relative to the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"Captions file not found: {path}.", "Give a JSONL or CSV file of image paths and captions.")
    rows: list[tuple[int, dict]] = []
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = [(n, r) for n, r in enumerate(reader, start=2)]
    else:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{n}: not valid JSON ({e.msg}).",
                                    'Each line must be like {"image": "a.jpg", "caption": "a red dress"}.') from e
    ids, caps = [], []
    for n, r in rows:
        img = r.get("image") or r.get("file_name") if isinstance(r, dict) else None
        cap = r.get("caption", r.get("text")) if isinstance(r, dict) else None
        if not isinstance(img, str) or not isinstance(cap, str) or not cap.strip():
            raise UserError(f"{path}:{n}: expected an image path ('image' or 'file_name') and a caption "
                            "('caption' or 'text').", "Fix that row.")
        ids.append(str((path.parent / img).resolve()))
        caps.append(cap)
    if not ids:
        raise UserError(f"{path} holds no captions.", "Give a file with one image and caption a row.")
    return Corpus(ids, caps, None, None)


def synthesise(ctx: Context, corpus: Corpus, *, mode: str, max_triplets: int, seed: int,
               min_similarity: float, embed=None) -> SynthReport:
    if mode == "scene":
        if corpus.scenes is None:
            raise UserError("--mode scene needs scene graphs, which only the shapes world has.",
                            "Use --mode template, or --data shapes.")
        return scene_triplets(corpus.ids, corpus.scenes, corpus.captions, max_triplets=max_triplets, seed=seed)
    if mode != "template":
        raise UserError(f"Unknown mode '{mode}'.", "Use template or scene.")
    with ctx.reporter.task("matching edited captions", total=None) as task:
        return template_triplets(corpus.ids, corpus.captions, embed, max_triplets=max_triplets, seed=seed,
                                 min_similarity=min_similarity, progress=lambda n: task.advance(n))


def write_triplets(report: SynthReport, corpus: Corpus, out: Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.incomplete")
    with open(tmp, "w", encoding="utf-8") as f:
        for t in report.triplets:
            row = t.to_json()
            if corpus.dataset_key:
                row["dataset"] = corpus.dataset_key
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, out)


@dataclass
class TripletFile:
    rows: list[dict[str, Any]]
    dataset_key: str | None
    skipped: list[str]


def read_triplets(path: Path, skip_bad: bool = False) -> TripletFile:
    """Validate a triplet file; malformed lines are errors naming the line; missing images are
    errors too unless `skip_bad` (then counted)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"Triplet file not found: {path}.", "Write one with 'zscir synth --out FILE'.")
    rows, keys, skipped = [], set(), []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
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
        keys.add(row.get("dataset"))
        if row.get("dataset") is None:
            for field in ("reference", "target"):
                p = Path(row[field])
                p = p if p.is_absolute() else (path.parent / p)
                if not p.is_file():
                    if not skip_bad:
                        raise UserError(f"{path}:{n}: {field} image not found: {p}.",
                                        "Fix the path, or pass --skip-bad to leave such triplets out.")
                    skipped.append(f"line {n}: {p}")
                    break
                row[field] = str(p.resolve())
            else:
                rows.append(row)
            continue
        rows.append(row)
    if len(keys) > 1:
        raise UserError(f"{path} mixes triplets of several data sets ({', '.join(map(str, keys))}).",
                        "Use one data set per triplet file.")
    if not rows:
        raise UserError(f"{path} holds no usable triplet.", "Write triplets with 'zscir synth'.")
    return TripletFile(rows, next(iter(keys)), skipped)
