"""The one evaluator: shapes, FashionIQ, CIRR and CIRCO, ranked by one function, scored by one
set of metrics, returned as typed results (the CLI only formats them).

A `Suite` is one split to evaluate: its queries, its galleries (FashionIQ has one per category)
and its protocol's rules. `rank_split` ranks a suite with a query method; every benchmark's
metrics and submission files are built on its `Rankings`.

Shapes protocol (ours, in the README): the whole split gallery ranked with the reference removed
(as CIRR); every gallery scene equal to the target up to position is a ground truth (as CIRCO).
"""

from __future__ import annotations

import json
import zlib
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from zscir_cli.data import shapes
from zscir_cli.data.benchmarks import BenchQuery
from zscir_cli.data.images import Gallery, load_rgb
from zscir_cli.eval.metrics import map_at_k, recall_at_k
from zscir_cli.index import search
from zscir_cli.model.backbone import Backbone
from zscir_cli.pipeline.bench_files import (
    Rankings,
    as_rows,
    aspect_map10,
    check_scorable,
    metrics_for,
)
from zscir_cli.pipeline.benchmarks import PROTOCOLS, PreparedSplit, open_split
from zscir_cli.pipeline.context import Context
from zscir_cli.pipeline.features import FeatureSet, cached_features
from zscir_cli.pipeline.galleries import encode_once
from zscir_cli.pipeline.indexing import index_spec
from zscir_cli.pipeline.methods import MethodChoice, QueryMethod, describe, load_method
from zscir_cli.pipeline.report import Scored, WorstQueries

DEPTH = 50  # every protocol needs at most the top 50
# Above this many images, the visual tokens of the references alone are stored, not the whole
# gallery's (CIRCO: 123k images x 17 tokens would take gigabytes for a few hundred references).
MAX_TOKEN_GALLERY = 20_000
SHAPES_PROTOCOL = ("shapes-cir-v1: reference removed from the ranking; ground truth = gallery scenes "
                   "equal to the target up to position; R@K = any ground truth in the top K; "
                   "mAP@K as CIRCO")
PROMPTS = {"shapes": "a photo of $ that {modification} (pic2word, stage1, tscir); the text alone (text, sum)",
           "benchmark": "a photo of $ that {caption} (pseudo-word methods); the caption alone (text, sum)"}
# breakdowns shown inside each method's results (the rest: top level)
NESTED_GROUPS = ("by_edit_R@1", "by_objects_R@1", "by_pair_R@1")
# shapes: each query ranked by the text feature of its target's caption through the same base
# CLIP: how far a perfect description of the target gets with this CLIP. A reference point, not
# a ceiling: a composed query can find a target that its caption misses.
TARGET_CAPTION = "target_caption"
TARGET_CAPTION_LABEL = "target caption (a reference point, not a method)"
TARGET_CAPTION_DEFINITION = ("each query ranked by the base CLIP's text feature of its target's caption, the "
                             "reference removed; no query offers it, and it is no ceiling")


class PathGallery(Gallery):
    """Images of a prepared benchmark, by id; identified by the prepared artifact, part and split
    (and the ids, when it is a subset)."""

    def __init__(self, ids: list[str], paths: dict[str, str], source: dict[str, Any]):
        self.ids, self.paths, self.source = ids, paths, source

    def image(self, i: int):
        return load_rgb(self.paths[self.ids[i]])

    def identity(self) -> dict[str, Any]:
        return dict(self.source)


@dataclass
class Suite:
    name: str  # shapes | fashioniq | cirr | circo
    split: str
    dataset_key: str
    queries: list[BenchQuery]
    galleries: dict[str, Gallery]  # group -> gallery
    remove_reference: bool
    excluded: int = 0  # queries left out for missing images
    references: dict[str, str] = field(default_factory=dict)  # image id -> file, for images outside a gallery
    target_captions: list[str] = field(default_factory=list)  # shapes: each query's target caption
    wording: str = ""  # shapes: the phrasing family the queries are asked in
    facets: dict[str, list[str]] = field(default_factory=dict)  # breakdown name -> each query's group
    _where: dict[str, tuple[str, int]] | None = field(default=None, repr=False)

    @property
    def has_ground_truth(self) -> bool:
        return bool(self.queries) and all(q.targets for q in self.queries)

    def image(self, item: str):
        """An image by id, for the worst-queries page."""
        if self._where is None:
            self._where = {x: (g, i) for g, gal in self.galleries.items() for i, x in enumerate(gal.ids)}
        if item in self._where:
            group, row = self._where[item]
            return self.galleries[group].image(row)
        return load_rgb(self.references[item])


def shapes_suite(ctx: Context, dataset: str, split: str, wording: str | None = None,
                 texts: dict[str, str] | None = None) -> Suite:
    """A shapes world's CIR split. Its queries are asked in the split's own phrasing family, or
    in `wording` (another family of `shapes.PHRASINGS`), or with `texts` (query id -> text:
    any wording at all); references, targets, gallery and ground truth stay the same."""
    from zscir_cli.pipeline.datasets import find_dataset, load_split, resolve_gallery

    art = find_dataset(ctx, dataset)
    rows = load_split(art, "cir", split)
    asked = list(rows["modification"])
    if wording is not None:
        asked = [reword(qid, edit, json.loads(slots), wording) for qid, edit, slots in
                 zip(rows["query_id"], rows["edit_type"], rows["slots"])]
    if texts is not None:
        asked = [texts[qid] for qid in rows["query_id"]]
    queries = [BenchQuery(str(qid), ref, [text], list(gt), target=tgt, edit=edit)
               for qid, ref, text, gt, tgt, edit in
               zip(rows["query_id"], rows["reference_id"], asked, rows["ground_truth"],
                   rows["target_id"], rows["edit_type"])]
    items = load_split(art, "gallery", split).select_columns(["id", "scene"])
    scenes = dict(zip(items["id"], items["scene"]))
    # the caption the world writes for the target's scene (template 0, as every gallery caption)
    target_captions = [shapes.caption(shapes.Scene.from_json(scenes[q.target])) for q in queries]  # type: ignore[index]
    facets = {"by_objects_R@1": [str(len(shapes.Scene.from_json(scenes[q.reference]).objects)) for q in queries]}
    if any(rows["held_out_pair"]):  # test: the targets that hold a colour-shape pair no training source shows
        facets["by_pair_R@1"] = ["held-out pair" if h else "seen pairs" for h in rows["held_out_pair"]]
    return Suite("shapes", split, art.key, queries, {"": resolve_gallery(ctx, f"{art.key}:{split}")}, True,
                 target_captions=target_captions, facets=facets,
                 wording=wording or (f"texts from a file" if texts is not None else split))


def reword(qid: str, edit_type: str, slots: dict[str, str], family: str) -> str:
    """Query `qid` asked in phrasing family `family` (one phrasing per query and family)."""
    rng = np.random.default_rng([zlib.crc32(qid.encode()), shapes.FAMILIES.index(family)])
    return shapes.phrase(edit_type, slots, family, rng)


def benchmark_suite(data: PreparedSplit) -> Suite:
    key = data.artifact.key if data.artifact is not None else ""
    galleries: dict[str, Gallery] = {
        g: PathGallery(ids, data.images, {"kind": "dataset", "dataset": key, "part": f"gallery/{g}" if g else "gallery",
                                          "split": data.split, "name": data.name, "count": len(ids)})
        for g, ids in data.galleries.items()}
    return Suite(data.name, data.split, key, data.queries, galleries, data.name == "cirr", data.excluded,
                 data.images)


def _reference_features(ctx: Context, backbone: Backbone, suite: Suite, group: str, refs: list[str],
                        gal_row: dict[str, int], gal_feats: np.ndarray, tokens: FeatureSet | None,
                        grid: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(Q, D) global features of the references, taken from the gallery's index when they are in
    it, and their (Q, M, D) visual tokens when `grid` is given."""
    apart = sorted({r for r in refs if r not in gal_row or (grid is not None and tokens is None)})
    own = None
    if apart:  # references outside the gallery, or tokens of the references alone
        own = cached_features(ctx, backbone, PathGallery(apart, suite.references, {
            "kind": "dataset", "dataset": suite.dataset_key, "part": f"references/{group}", "split": suite.split,
            "ids": _digest(apart)}), grid=grid or 4)
    own_row = {r: i for i, r in enumerate(own.ids)} if own is not None else {}
    v = np.stack([np.asarray(gal_feats[gal_row[r]] if r in gal_row else own.image[own_row[r]],  # type: ignore[union-attr]
                             dtype=np.float32) for r in refs]) if refs else np.zeros((0, gal_feats.shape[1]), np.float32)
    if grid is None:
        return v, None
    if tokens is not None:
        row = {g: i for i, g in enumerate(tokens.ids)}
        return v, np.asarray(tokens.tokens[[row[r] for r in refs]], dtype=np.float32)
    return v, np.asarray(own.tokens[[own_row[r] for r in refs]], dtype=np.float32)  # type: ignore[union-attr]


def _digest(ids: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def rank_split(ctx: Context, backbone: Backbone, method: QueryMethod, suite: Suite | PreparedSplit,
               kind: str = "flat") -> Rankings:
    """Rank every query of the split with `method`, following the benchmark's protocol, against
    each gallery's index of `kind` (flat: exact, as the protocols are defined)."""
    if isinstance(suite, PreparedSplit):
        suite = benchmark_suite(suite)
    top: list[list[str]] = [[] for _ in suite.queries]
    index: list[str] = []
    subset: list[list[str]] | None = [[] for _ in suite.queries] if suite.name == "cirr" else None
    grid = method.grid if method.needs_tokens else None
    for group, gallery in suite.galleries.items():
        rows = [i for i, q in enumerate(suite.queries) if q.group == group]
        if not rows:
            continue
        whole = grid is not None and (suite.name == "shapes" or len(gallery) <= MAX_TOKEN_GALLERY)
        spec = index_spec(kind, len(gallery), backbone.embed_dim)
        enc = encode_once(ctx, backbone, gallery, index=True, grid=grid if whole else None, kind=spec)
        index.append(enc.index.key)  # type: ignore[union-attr]
        opened = search.open_index(enc.index.path)  # type: ignore[union-attr]
        gal_feats, gal_ids = opened.features, opened.ids
        gal_row = {g: i for i, g in enumerate(gal_ids)}
        qs = [suite.queries[i] for i in rows]
        tokens = FeatureSet.open(enc.features) if enc.features is not None else None
        v, t = _reference_features(ctx, backbone, suite, group, [q.reference for q in qs], gal_row, gal_feats,
                                   tokens, grid)
        if suite.name == "fashioniq":  # both caption orders, averaged
            feats = method.encode(v, [f"{q.texts[0]} and {q.texts[1]}" for q in qs], t) + \
                method.encode(v, [f"{q.texts[1]} and {q.texts[0]}" for q in qs], t)
            feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        else:
            feats = method.encode(v, [q.texts[0] for q in qs], t)
        exclude = [[gal_row[q.reference]] if suite.remove_reference and q.reference in gal_row else [] for q in qs]
        ranked, _ = search.rank(opened, feats, DEPTH, exclude=exclude)
        for j, i in enumerate(rows):
            top[i] = [gal_ids[r] for r in ranked[j] if r >= 0]
            if subset is not None:
                members = [m for m in qs[j].subset if m != qs[j].reference and m in gal_row]
                if members:
                    sub = np.asarray(gal_feats[[gal_row[m] for m in members]], dtype=np.float32)
                    order, _ = search.rank(sub, feats[j:j + 1], len(members))
                    subset[i] = [members[r] for r in order[0] if r >= 0]
    return Rankings(top, subset, index)


@dataclass
class MethodResult:
    method: str  # the row's name: the method, or a label naming its recipe too
    metrics: dict[str, float]  # percent, under each protocol's names
    groups: dict[str, dict[str, float]] = field(default_factory=dict)  # breakdowns: by edit type, by aspect
    run: str | None = None  # the trained run behind the method
    name: str = ""  # the query method (image, text, sum, pic2word, stage1, tscir)
    recipe: str = ""  # how the method was made (`methods.describe`)

    @property
    def by_edit(self) -> dict[str, float]:
        return self.groups.get("by_edit_R@1", {})

    def to_json(self) -> dict[str, Any]:
        return {"method": self.name or self.method, "recipe": self.recipe, "run": self.run, **self.metrics,
                **{g: v for g, v in self.groups.items() if g in NESTED_GROUPS}}


@dataclass
class Evaluation:
    dataset: str
    dataset_key: str
    split: str
    protocol: str
    prompt: str
    model: str
    queries: int
    excluded_queries: int
    gallery: int  # images ranked, all groups together
    index: list[str]  # the index keys ranked against
    results: list[MethodResult]
    target_caption: MethodResult | None = None  # shapes: a reference point, not a method
    group_queries: dict[str, dict[str, int]] = field(default_factory=dict)  # breakdown -> group -> queries
    wording: str = ""  # shapes: the phrasing family the queries were asked in

    @property
    def runs(self) -> dict[str, str]:
        """Every trained run used, by row."""
        return {r.method: r.run for r in self.results if r.run is not None}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "dataset": self.dataset, "dataset_key": self.dataset_key, "split": self.split,
            "protocol": self.protocol, "prompt": self.prompt, "model": self.model, "queries": self.queries,
            "excluded_queries": self.excluded_queries, "gallery": self.gallery,
            "index": self.index[0] if len(self.index) == 1 else self.index, "runs": self.runs,
            "results": {r.method: r.to_json() for r in self.results}}
        if self.wording:
            out["wording"] = self.wording
        for r in self.results:
            for g, v in r.groups.items():
                if g not in NESTED_GROUPS:
                    out.setdefault(g, {})[r.method] = v
        if self.target_caption is not None:
            out[TARGET_CAPTION] = {"label": TARGET_CAPTION_LABEL, "definition": TARGET_CAPTION_DEFINITION,
                                   **self.target_caption.metrics,
                                   **{g: v for g, v in self.target_caption.groups.items() if g in NESTED_GROUPS}}
        if self.group_queries:
            out["queries_per_group"] = self.group_queries
        return out


def score_rankings(suite: Suite, rankings: Rankings) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(metrics, breakdowns) of one method's rankings, per the suite's protocol."""
    if suite.name != "shapes":
        groups = {"map@10_by_aspect": aspect_map10(suite, rankings)} if any(q.aspects for q in suite.queries) else {}
        return metrics_for(suite, rankings), groups
    ranked, pos = as_rows(rankings.top, [q.targets for q in suite.queries])
    metrics = {"R@1": recall_at_k(ranked, pos, 1), "R@10": recall_at_k(ranked, pos, 10),
               "R@50": recall_at_k(ranked, pos, 50), "mAP@10": map_at_k(ranked, pos, 10)}
    return metrics, {name: {g: recall_at_k(ranked[rows], [pos[i] for i in rows], 1) for g, rows in by.items()}
                     for name, by in query_groups(suite).items()}


def query_groups(suite: Suite) -> dict[str, dict[str, list[int]]]:
    """Shapes breakdowns: name -> group -> query rows (by edit type; by the reference's objects)."""
    out = {}
    for name, labels in {"by_edit_R@1": [q.edit for q in suite.queries], **suite.facets}.items():
        rows: dict[str, list[int]] = defaultdict(list)
        for i, label in enumerate(labels):
            rows[label].append(i)
        out[name] = dict(sorted(rows.items()))
    return out


def target_caption_result(ctx: Context, backbone: Backbone, suite: Suite,
                          kind: str = "flat") -> tuple[MethodResult, Rankings]:
    """Each query ranked by its target caption's text feature (the base CLIP's, as the `text`
    method), on the same gallery with the reference removed: a reference point that no query
    offers, and no ceiling (a composed query can find targets it misses)."""
    asked = replace(suite, queries=[replace(q, texts=[t]) for q, t in zip(suite.queries, suite.target_captions)],
                    _where=None)
    rankings = rank_split(ctx, backbone, load_method(ctx, "text", backbone), asked, kind)
    metrics, groups = score_rankings(asked, rankings)
    return MethodResult(TARGET_CAPTION, metrics, groups, name=TARGET_CAPTION, recipe="no training"), rankings


def open_suite(ctx: Context, dataset: str, split: str) -> Suite:
    """The split to evaluate, checked (it exists, it has ground truth) before any model loads."""
    if dataset in PROTOCOLS:
        data = open_split(ctx, dataset, split)
        check_scorable(data)
        return benchmark_suite(data)
    return shapes_suite(ctx, dataset, split)


def evaluate(ctx: Context, backbone: Backbone, suite: Suite, methods: list[str | MethodChoice],
             kind: str = "flat", target_caption: bool = True) -> tuple[Evaluation, WorstQueries | None]:
    """Every method on one suite (a name, or a `MethodChoice` pinning a run and naming the row);
    `kind`: the galleries' index kind; `target_caption`: add that reference row where the suite
    has target captions (shapes). Also returns the first method's per-query outcome, for the
    worst-queries page."""
    check_scorable(suite)  # type: ignore[arg-type]
    results, worst, index = [], None, []
    for choice in methods:
        choice = choice if isinstance(choice, MethodChoice) else MethodChoice(choice)
        method = load_method(ctx, choice.name, backbone, choice.run)
        rankings = rank_split(ctx, backbone, method, suite, kind)
        index += [k for k in rankings.index if k not in index]
        metrics, groups = score_rankings(suite, rankings)
        results.append(MethodResult(choice.label or choice.name, metrics, groups,
                                    method.run.key if method.run is not None else None, choice.name,
                                    describe(method)))
        if worst is None:
            worst = WorstQueries(choice.name, [Scored(q.qid, q.reference, " / ".join(q.texts), rankings.top[i],
                                                      set(q.targets)) for i, q in enumerate(suite.queries)], suite)
    reference = None
    if target_caption and suite.target_captions:
        reference, rankings = target_caption_result(ctx, backbone, suite, kind)
        index += [k for k in rankings.index if k not in index]
    protocol = SHAPES_PROTOCOL if suite.name == "shapes" else PROTOCOLS[suite.name]
    prompt = PROMPTS["shapes" if suite.name == "shapes" else "benchmark"]
    counts = {name: {g: len(rows) for g, rows in by.items()} for name, by in query_groups(suite).items()} \
        if suite.name == "shapes" else {}
    return Evaluation(suite.name, suite.dataset_key, suite.split, protocol,
                      prompt, backbone.spec.label(), len(suite.queries), suite.excluded,
                      sum(len(g) for g in suite.galleries.values()), index, results, reference, counts,
                      suite.wording), worst
