"""The public benchmarks' trees: prepare (validate, count what is missing) and open a prepared
split. Ranking is in `protocols.ranking`, metrics and prediction files in `protocols.predictions`.
Nothing here imports torch: `zscir prepare` and `zscir score` start in a fraction of a second."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zscir_cli.core.cache import Artifact
from zscir_cli.core.errors import UserError
from zscir_cli.data.public_trees import LOADERS, SOURCES, SPLITS, BenchQuery, present_splits, split_files, tree_hint
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.datasets.store import find_dataset
from zscir_cli.jobs.protocols.config import BenchmarkRequest

KIND = "dataset"
MAX_LISTED = 20
PROTOCOLS = {
    "fashioniq": "FashionIQ: captions stripped of '.?, ', queries '{c1} and {c2}' and '{c2} and {c1}' encoded, "
                 "normalised, averaged; per-category gallery; reference NOT removed; R@10, R@50 per category "
                 "and their mean",
    "cirr": "CIRR: reference removed from the ranking; R@1/5/10/50 over the split gallery; Recall_subset@1/2/3 "
            "over img_set members minus the reference",
    "circo": "CIRCO: whole gallery, top 50; AP@K = sum of precision@r at ground-truth ranks r <= K / min(K, #GT); "
             "mAP@5/10/25/50; Recall@K counts target_img_id only",
}


def _annotation_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.json")):
        st = p.stat()
        h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def choose_splits(name: str, root: Path, splits: list[str] | None) -> tuple[list[str], list[str]]:
    """(splits to prepare, splits left out because their annotation files are absent). Named
    splits must all be there (their loader names what is missing); without names, every split
    whose files are present, or, when none is, the first split's error."""
    for split in splits or ():
        if split not in SPLITS[name]:
            raise UserError(f"{name} has no split '{split}'.", f"Choose one of: {', '.join(SPLITS[name])}.")
    if splits:
        return list(dict.fromkeys(splits)), []
    present = present_splits(name, root) if root.is_dir() else []
    if not present:
        LOADERS[name](root, SPLITS[name][0])  # raises, naming the folder or the missing files
    return present, [s for s in SPLITS[name] if s not in present]


def prepare_benchmark(ctx: Context, req: BenchmarkRequest) -> tuple[Artifact, bool]:
    """Validate the tree and record the chosen splits (default: those present; the manifest names
    the absent ones under `missing_splits`)."""
    name, skip_missing, force, splits = req.name, req.skip_missing, req.force, req.splits or None
    root = (Path(req.root) if req.root is not None else default_root(name)).expanduser().resolve()
    chosen, absent = choose_splits(name, root, splits)
    loaded = {split: LOADERS[name](root, split) for split in chosen}
    config = {"name": name, "root": str(root), "annotations": _annotation_digest(root), "skip_missing": skip_missing,
              "splits": chosen}
    key = ctx.store.key_for(KIND, config)
    found = ctx.store.get(KIND, key)
    if found is not None and not force:
        return found, False
    missing = sorted({m for b in loaded.values() for m in b.missing})
    if missing and not skip_missing:
        shown = ", ".join(missing[:MAX_LISTED])
        raise UserError(f"{len(missing)} image(s) of {name} are missing under {root}: {shown}"
                        + (" ..." if len(missing) > MAX_LISTED else "") + ".",
                        "Download them, or pass --skip-missing to go on without them (the queries that need "
                        "them are excluded and counted in every result).")
    counts: dict[str, Any] = {}
    if found is not None:
        ctx.store.remove(found)
    with ctx.store.create(KIND, key, config=config,
                          description=f"{name} at {root}" + (f" ({len(missing)} images missing)" if missing else "")) as out:
        for split, b in loaded.items():
            gone = set(b.missing)
            kept, excluded = [], 0
            for q in b.queries:
                if q.reference in gone or (q.target is not None and q.target in gone):
                    excluded += 1
                    continue
                q.targets = [t for t in q.targets if t not in gone]
                q.subset = [s for s in q.subset if s not in gone]
                kept.append(q.to_json())
            galleries = {g: [i for i in ids if i not in gone] for g, ids in b.galleries.items()}
            folder = out.path / split
            folder.mkdir()
            (folder / "queries.json").write_text(json.dumps(kept))
            (folder / "galleries.json").write_text(json.dumps(galleries))
            (folder / "images.json").write_text(json.dumps({k: str(v) for k, v in b.images.items() if k not in gone}))
            counts[split] = {"queries": len(kept), "excluded_queries": excluded,
                             "gallery": {(g or "all"): len(v) for g, v in galleries.items()},
                             "missing_images": len(gone & {i for ids in b.galleries.values() for i in ids}
                                                   | {q.reference for q in b.queries} & gone),
                             "ground_truth": b.has_ground_truth}
        out.manifest.update({"name": name, "root": str(root), "counts": counts, "missing_images": len(missing),
                             "missing_examples": missing[:MAX_LISTED], "splits": list(loaded),
                             "missing_splits": {s: [r for r in split_files(name, s) if not (root / r).is_file()]
                                                for s in absent}})
    return ctx.store.get(KIND, key), True  # type: ignore[return-value]


@dataclass
class PreparedSplit:
    artifact: Artifact | None  # None when read straight from annotation files (scoring)
    name: str
    split: str
    queries: list[BenchQuery]
    galleries: dict[str, list[str]]
    images: dict[str, str]

    @property
    def excluded(self) -> int:
        if self.artifact is None:
            return 0
        return int(self.artifact.manifest["counts"][self.split]["excluded_queries"])

    @property
    def has_ground_truth(self) -> bool:
        return bool(self.queries) and all(q.targets for q in self.queries)


def open_split(ctx: Context, name: str, split: str) -> PreparedSplit:
    art = find_dataset(ctx, name)
    if split not in SPLITS.get(name, ()):
        raise UserError(f"{name} has no split '{split}'.", f"Choose one of: {', '.join(SPLITS.get(name, ()))}.")
    folder = art.path / split
    if not folder.is_dir():
        raise UserError(f"{name} was prepared from {art.manifest.get('root')} without its {split} split "
                        f"(prepared: {', '.join(art.manifest.get('splits', [])) or 'none'}).",
                        f"Add the {split} annotation files, then run 'zscir prepare {name} ROOT' again.")
    queries = [BenchQuery(**q) for q in json.loads((folder / "queries.json").read_text())]
    return PreparedSplit(art, name, split, queries, json.loads((folder / "galleries.json").read_text()),
                         json.loads((folder / "images.json").read_text()))


def split_from_root(name: str, root: Path, split: str) -> PreparedSplit:
    """A split read from the annotation files alone: scoring needs no image."""
    b = LOADERS[name](Path(root).expanduser(), split)
    return PreparedSplit(None, name, split, b.queries, b.galleries, {k: str(v) for k, v in b.images.items()})


def default_root(name: str) -> Path:
    import os

    base = os.environ.get("ZSCIR_DATA")
    if not base:
        raise UserError(f"No ROOT given for {name} and ZSCIR_DATA is not set.",
                        tree_hint(name, f"Get {name} from {SOURCES[name]}, then run 'zscir prepare {name} ROOT', "
                                        f"or set ZSCIR_DATA to the folder holding {name}/."))
    return Path(base) / name
