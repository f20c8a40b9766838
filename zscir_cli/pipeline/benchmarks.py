"""The public benchmarks: prepare (validate, count what is missing), eval, submission files and
offline scoring. Every number comes from one ranking (`index.search.rank`) and one set of
metric functions (`eval.metrics`), whether it is printed by `eval` or read back by `score`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zscir_cli.core.cache import Artifact
from zscir_cli.core.errors import UserError
from zscir_cli.data.benchmarks import FIQ_CATEGORIES, LOADERS, SPLITS, BenchQuery
from zscir_cli.data.images import Gallery, load_rgb
from zscir_cli.eval.metrics import map_at_k, recall_at_k
from zscir_cli.index import search
from zscir_cli.model.backbone import Backbone
from zscir_cli.pipeline.context import Context
from zscir_cli.pipeline.features import cached_features
from zscir_cli.pipeline.indexing import index_gallery
from zscir_cli.pipeline.methods import QueryMethod, load_method
from zscir_cli.pipeline.report import Scored

KIND = "dataset"
MAX_LISTED = 20
DEPTH = 50  # every protocol needs at most the top 50
PROTOCOLS = {
    "fashioniq": "FashionIQ: captions stripped of '.?, ', queries '{c1} and {c2}' and '{c2} and {c1}' encoded, "
                 "normalised, averaged; per-category gallery; reference NOT removed; R@10, R@50 per category "
                 "and their mean",
    "cirr": "CIRR: reference removed from the ranking; R@1/5/10/50 over the split gallery; Recall_subset@1/2/3 "
            "over img_set members minus the reference",
    "circo": "CIRCO: whole gallery, top 50; AP@K = sum of precision@r at ground-truth ranks r <= K / min(K, #GT); "
             "mAP@5/10/25/50; Recall@K counts target_img_id only",
}


class PathGallery(Gallery):
    def __init__(self, ids: list[str], paths: dict[str, str], source: dict[str, Any]):
        self.ids = ids
        self.paths = paths
        self.source = source

    def image(self, i: int):
        return load_rgb(self.paths[self.ids[i]])


def _annotation_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.json")):
        st = p.stat()
        h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def prepare_benchmark(ctx: Context, name: str, root: Path, skip_missing: bool = False,
                      force: bool = False) -> tuple[Artifact, bool]:
    root = Path(root).expanduser().resolve()
    loaded = {split: LOADERS[name](root, split) for split in SPLITS[name]}
    config = {"name": name, "root": str(root), "annotations": _annotation_digest(root), "skip_missing": skip_missing}
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
                             "gallery": {g: len(v) for g, v in galleries.items()},
                             "missing_images": len(gone & {i for ids in b.galleries.values() for i in ids}
                                                   | {q.reference for q in b.queries} & gone),
                             "ground_truth": b.has_ground_truth}
        out.manifest.update({"name": name, "root": str(root), "counts": counts, "missing_images": len(missing),
                             "missing_examples": missing[:MAX_LISTED], "splits": list(loaded)})
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
    from zscir_cli.pipeline.datasets import find_dataset

    art = find_dataset(ctx, name)
    if split not in SPLITS.get(name, ()):
        raise UserError(f"{name} has no split '{split}'.", f"Choose one of: {', '.join(SPLITS.get(name, ()))}.")
    folder = art.path / split
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
        from zscir_cli.data.benchmarks import LAYOUTS, SOURCES

        raise UserError(f"No ROOT given for {name} and ZSCIR_DATA is not set. Get {name} from {SOURCES[name]}; "
                        f"the expected tree is:\n{LAYOUTS[name]}",
                        f"Run 'zscir prepare {name} ROOT', or set ZSCIR_DATA to the folder holding {name}/.")
    return Path(base) / name


# -- ranking ---------------------------------------------------------------------------------------

@dataclass
class Rankings:
    """Per query: the top gallery ids (and, for CIRR, the ranked img_set members)."""

    top: list[list[str]]
    subset: list[list[str]] | None = None


def _gallery(data: PreparedSplit, group: str) -> PathGallery:
    ids = data.galleries[group]
    return PathGallery(ids, data.images, {"kind": "benchmark", "dataset": data.artifact.key, "split": data.split,
                                          "group": group, "count": len(ids)})


def rank_split(ctx: Context, backbone: Backbone, method: QueryMethod, data: PreparedSplit) -> Rankings:
    """Rank every query of the split with `method`, following the benchmark's protocol."""
    refs = sorted({q.reference for q in data.queries})
    ref_feats = cached_features(ctx, backbone, PathGallery(refs, data.images, {
        "kind": "benchmark-references", "dataset": data.artifact.key, "split": data.split}), grid=method.grid)
    ref_row = {r: i for i, r in enumerate(ref_feats.ids)}
    top: list[list[str]] = [[] for _ in data.queries]
    subset: list[list[str]] | None = [[] for _ in data.queries] if data.name == "cirr" else None
    for group in data.galleries:
        rows = [i for i, q in enumerate(data.queries) if q.group == group]
        if not rows:
            continue
        index = index_gallery(ctx, backbone, _gallery(data, group)).artifact
        faiss_index, gal_feats, gal_ids = search.load(index.path)
        gal_row = {g: i for i, g in enumerate(gal_ids)}
        qs = [data.queries[i] for i in rows]
        rr = [ref_row[q.reference] for q in qs]
        v = np.asarray(ref_feats.image[rr], dtype=np.float32)
        t = np.asarray(ref_feats.tokens[rr], dtype=np.float32) if method.needs_tokens else None
        if data.name == "fashioniq":  # both caption orders, averaged
            a = method.encode(v, [f"{q.texts[0]} and {q.texts[1]}" for q in qs], t)
            b = method.encode(v, [f"{q.texts[1]} and {q.texts[0]}" for q in qs], t)
            feats = a + b
            feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        else:
            feats = method.encode(v, [q.texts[0] for q in qs], t)
        exclude = [[gal_row[q.reference]] if data.name == "cirr" and q.reference in gal_row else [] for q in qs]
        ranked, _ = search.rank(faiss_index, feats, DEPTH, exclude=exclude)
        for j, i in enumerate(rows):
            top[i] = [gal_ids[r] for r in ranked[j] if r >= 0]
            if subset is not None:
                members = [m for m in qs[j].subset if m != qs[j].reference and m in gal_row]
                if members:
                    sub = np.asarray(gal_feats[[gal_row[m] for m in members]], dtype=np.float32)
                    order, _ = search.rank(sub, feats[j:j + 1], len(members))
                    subset[i] = [members[r] for r in order[0] if r >= 0]
    return Rankings(top, subset)


# -- metrics ----------------------------------------------------------------------------------------

def _as_rows(lists: list[list[str]], positives: list[list[str]]) -> tuple[np.ndarray, list[set[int]]]:
    """Map id lists to integer rows so the shared metric functions apply."""
    vocab: dict[str, int] = {}
    width = max((len(x) for x in lists), default=0)
    ranked = np.full((len(lists), max(1, width)), -1, dtype=np.int64)
    for i, items in enumerate(lists):
        for j, item in enumerate(items):
            ranked[i, j] = vocab.setdefault(item, len(vocab))
    pos = [{vocab.setdefault(p, len(vocab)) for p in ps} for ps in positives]
    return ranked, pos


def metrics_for(data: PreparedSplit, rankings: Rankings) -> dict[str, float]:
    """The benchmark's metrics, in percent, with the score-file key names."""
    qs = data.queries
    if not data.has_ground_truth:
        raise UserError(f"{data.name} {data.split} has no ground truth to score against.",
                        f"Use a val split, or 'zscir submit {data.name}' for the test server.")
    out: dict[str, float] = {}
    if data.name == "fashioniq":
        for cat in FIQ_CATEGORIES:
            rows = [i for i, q in enumerate(qs) if q.group == cat]
            ranked, pos = _as_rows([rankings.top[i] for i in rows], [qs[i].targets for i in rows])
            for k in (10, 50):
                out[f"{cat}/recall@{k}"] = recall_at_k(ranked, pos, k)
        for k in (10, 50):
            out[f"average/recall@{k}"] = float(np.mean([out[f"{c}/recall@{k}"] for c in FIQ_CATEGORIES]))
    elif data.name == "cirr":
        ranked, pos = _as_rows(rankings.top, [q.targets for q in qs])
        for k in (1, 5, 10, 50):
            out[f"recall@{k}"] = recall_at_k(ranked, pos, k)
        if rankings.subset is not None:
            ranked, pos = _as_rows(rankings.subset, [q.targets for q in qs])
            for k in (1, 2, 3):
                out[f"recall_subset@{k}"] = recall_at_k(ranked, pos, k)
    else:
        ranked, pos = _as_rows(rankings.top, [q.targets for q in qs])
        for k in (5, 10, 25, 50):
            out[f"map@{k}"] = map_at_k(ranked, pos, k)
        ranked, pos = _as_rows(rankings.top, [[q.target] if q.target else [] for q in qs])
        for k in (5, 10, 25, 50):
            out[f"recall@{k}"] = recall_at_k(ranked, pos, k)
    return out


def aspect_map10(data: PreparedSplit, rankings: Rankings) -> dict[str, float]:
    """CIRCO: mAP@10 per semantic aspect, as its test server reports (a query counts once for
    each of its aspects)."""
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(data.queries):
        for a in q.aspects:
            groups.setdefault(a, []).append(i)
    out = {}
    for aspect, rows in sorted(groups.items()):
        ranked, pos = _as_rows([rankings.top[i] for i in rows], [data.queries[i].targets for i in rows])
        out[aspect] = map_at_k(ranked, pos, 10)
    return out


def evaluate_benchmark(ctx: Context, backbone: Backbone, name: str, split: str, methods: list[str],
                       runs: dict[str, str] | None = None) -> dict[str, Any]:
    data = open_split(ctx, name, split)
    results = {}
    per_aspect: dict[str, dict[str, float]] = {}
    run_ids = {}
    scored: list[Scored] = []
    for m in methods:
        method = load_method(ctx, m, backbone, (runs or {}).get(m))
        if method.run is not None:
            run_ids[m] = method.run.key
        rankings = rank_split(ctx, backbone, method, data)
        results[m] = metrics_for(data, rankings)
        if name == "circo" and any(q.aspects for q in data.queries):
            per_aspect[m] = aspect_map10(data, rankings)
        if not scored:  # the first method's outcome per query, for the worst-queries page
            scored = [Scored(q.qid, q.reference, " / ".join(q.texts), rankings.top[i], set(q.targets))
                      for i, q in enumerate(data.queries)]
    return {"dataset": name, "split": split, "protocol": PROTOCOLS[name],
            "prompt": "a photo of $ that {caption} (pseudo-word methods); the caption alone (text, sum)",
            "model": backbone.spec.label(), "runs": run_ids, "queries": len(data.queries),
            "excluded_queries": data.excluded, "dataset_key": data.artifact.key, "results": results,
            "map@10_by_aspect": per_aspect,
            "scored": scored, "image": lambda item: load_rgb(data.images[item])}


# -- submission files and their scoring --------------------------------------------------------------

def submission(data: PreparedSplit, rankings: Rankings) -> dict[str, dict]:
    """The official files: CIRR 'recall' (top 50) and 'recall_subset' (top 3); CIRCO one file
    (top 50 integer ids); FashionIQ ours ({category: [[top 50 ASINs] per query in file order]})."""
    if data.name == "cirr":
        return {"recall": {"version": "rc2", "metric": "recall",
                           **{q.qid: rankings.top[i][:50] for i, q in enumerate(data.queries)}},
                "recall_subset": {"version": "rc2", "metric": "recall_subset",
                                  **{q.qid: (rankings.subset or [[]])[i][:3] for i, q in enumerate(data.queries)}}}
    if data.name == "circo":
        return {"circo": {q.qid: [int(x) for x in rankings.top[i][:50]] for i, q in enumerate(data.queries)}}
    return {"fashioniq": {cat: [rankings.top[i][:50] for i, q in enumerate(data.queries) if q.group == cat]
                          for cat in FIQ_CATEGORIES}}


class InvalidPredictions(UserError):
    pass


def _problems_text(path: str, problems: list[str]) -> InvalidPredictions:
    return InvalidPredictions(f"{path} is not a valid prediction file: " + "; ".join(problems[:5])
                              + (f" (and {len(problems) - 5} more problems)" if len(problems) > 5 else "") + ".",
                              "Fix the file; 'zscir submit' writes valid ones.")


def read_predictions(data: PreparedSplit, files: list[Path]) -> Rankings:
    """Validate prediction files against the split and turn them into rankings."""
    top: list[list[str]] | None = None
    subset: list[list[str]] | None = None
    gallery = {i for ids in data.galleries.values() for i in ids}
    for path in files:
        path = Path(path)
        try:
            obj = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise UserError(f"Prediction file not found: {path}.", "Check the path.") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InvalidPredictions(f"{path} is not JSON ({e}).", "Write the predictions as one JSON object.") from e
        if not isinstance(obj, dict):
            raise _problems_text(str(path), ["the top level must be a JSON object"])
        problems: list[str] = []
        if data.name == "fashioniq":
            got = []
            for cat in FIQ_CATEGORIES:
                rows = [q for q in data.queries if q.group == cat]
                lists = obj.get(cat)
                if not isinstance(lists, list) or len(lists) != len(rows):
                    problems.append(f"'{cat}' must be a list of {len(rows)} lists (one per query, in file order)")
                    continue
                for q, items in zip(rows, lists):
                    problems += _check_list(q.qid, items, str, 50, set(data.galleries[cat]))
                    got.append((q.qid, items))
            by_id = dict(got)
            top = [by_id.get(q.qid, []) for q in data.queries]
        else:
            metric = obj.get("metric", "recall") if data.name == "cirr" else "circo"
            if data.name == "cirr" and (obj.get("version") != "rc2" or metric not in ("recall", "recall_subset")):
                problems.append('CIRR files need "version": "rc2" and "metric": "recall" or "recall_subset"')
            entries = {k: v for k, v in obj.items() if k not in ("version", "metric")}
            want = {q.qid for q in data.queries}
            lacking = sorted(want - set(entries), key=lambda x: int(x) if x.isdigit() else 0)
            if lacking:
                problems.append(f"{len(lacking)} query id(s) missing, e.g. {lacking[0]}")
            extra = sorted(set(entries) - want)
            if extra:
                problems.append(f"{len(extra)} unknown query id(s), e.g. {extra[0]}")
            limit = 3 if metric == "recall_subset" else 50
            kind = int if data.name == "circo" else str
            lists = []
            for q in data.queries:
                items = entries.get(q.qid, [])
                allowed = set(q.subset) - {q.reference} if metric == "recall_subset" else gallery
                problems += _check_list(q.qid, items, kind, limit,
                                        {int(x) for x in allowed} if kind is int else allowed)
                lists.append([str(x) for x in items] if isinstance(items, list) else [])
            if metric == "recall_subset":
                subset = lists
            else:
                top = lists
        if problems:
            raise _problems_text(str(path), problems)
    return Rankings(top or [[] for _ in data.queries], subset)


def _check_list(qid: str, items: Any, kind: type, limit: int, allowed: set) -> list[str]:
    if not isinstance(items, list):
        return [f"query {qid}: expected a list"]
    problems = []
    bad_type = [x for x in items if not isinstance(x, kind) or isinstance(x, bool)]
    if bad_type:
        problems.append(f"query {qid}: {bad_type[0]!r} is not {'an integer id' if kind is int else 'an image name (string)'}")
        return problems
    if len(items) > limit:
        problems.append(f"query {qid}: {len(items)} ids, at most {limit}")
    if len(set(items)) != len(items):
        dup = next(x for x in items if items.count(x) > 1)
        problems.append(f"query {qid}: duplicate id {dup!r}")
    unknown = [x for x in items if x not in allowed]
    if unknown:
        problems.append(f"query {qid}: {unknown[0]!r} is not in the gallery")
    return problems


def score_files(data: PreparedSplit, files: list[Path]) -> dict[str, float]:
    name = data.name
    rankings = read_predictions(data, files)
    out = metrics_for(data, rankings)
    if name == "cirr":  # only what the given files allow
        has_top = any(rankings.top)
        out = {k: v for k, v in out.items() if (k.startswith("recall_subset") and rankings.subset is not None)
               or (k.startswith("recall@") and has_top)}
    return out
