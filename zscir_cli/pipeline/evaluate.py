"""Evaluation on the shapes composed-retrieval benchmark.

Protocol (ours, documented in the README): rank the whole split gallery with the reference
image removed (as CIRR); a gallery image is a ground truth when its scene equals the target
scene up to position, so a query may have several (as CIRCO). R@K counts a query as solved
when any ground truth is in the top K; mAP@K is CIRCO's AP@K averaged over queries.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zscir_cli.eval.metrics import map_at_k, recall_at_k
from zscir_cli.index import search
from zscir_cli.model.backbone import Backbone
from zscir_cli.pipeline.context import Context
from zscir_cli.pipeline.datasets import find_dataset, load_split, resolve_gallery
from zscir_cli.pipeline.features import cached_features
from zscir_cli.pipeline.indexing import index_gallery
from zscir_cli.pipeline.methods import load_method
from zscir_cli.pipeline.report import Scored

RANK_DEPTH = 50
PROTOCOL = ("shapes-cir-v1: reference removed from the ranking; ground truth = gallery scenes "
            "equal to the target up to position; R@K = any ground truth in the top K; "
            "mAP@K as CIRCO")


@dataclass
class MethodResult:
    method: str
    metrics: dict[str, float]
    by_edit: dict[str, float] = field(default_factory=dict)  # R@1 per edit type


def evaluate_shapes(ctx: Context, backbone: Backbone, methods: list[str], split: str = "test",
                    dataset: str = "shapes", runs: dict[str, str] | None = None) -> dict[str, Any]:
    """Every method on one split of the shapes CIR benchmark; `runs` pins a trained method's run."""
    art = find_dataset(ctx, dataset)
    queries = load_split(art, "cir", split)
    gallery = resolve_gallery(ctx, f"{dataset}:{split}")
    index = index_gallery(ctx, backbone, gallery).artifact  # features computed once, then cached
    faiss_index, features, ids = search.load(index.path)
    row_of = {g: i for i, g in enumerate(ids)}
    ref_rows = [row_of[r] for r in queries["reference_id"]]
    positives = [{row_of[g] for g in gt} for gt in queries["ground_truth"]]
    texts = list(queries["modification"])
    edits = list(queries["edit_type"])
    ref_feats = np.asarray(features, dtype=np.float32)[ref_rows]
    results = []
    scored: list[Scored] = []
    run_ids: dict[str, str] = {}
    ref_tokens = None
    for name in methods:
        method = load_method(ctx, name, backbone, (runs or {}).get(name))
        if method.run is not None:
            run_ids[name] = method.run.key
        tokens = None
        if method.needs_tokens:
            if ref_tokens is None or ref_tokens[0] != method.grid:
                fs = cached_features(ctx, backbone, gallery, grid=method.grid)
                frow = {g: i for i, g in enumerate(fs.ids)}
                ref_tokens = (method.grid, np.asarray(fs.tokens[[frow[r] for r in queries["reference_id"]]],
                                                      dtype=np.float32))
            tokens = ref_tokens[1]
        q = method.encode(ref_feats, texts, tokens)
        ranked, _ = search.rank(faiss_index, q, RANK_DEPTH, exclude=[[r] for r in ref_rows])
        metrics = {"R@1": recall_at_k(ranked, positives, 1), "R@10": recall_at_k(ranked, positives, 10),
                   "R@50": recall_at_k(ranked, positives, 50), "mAP@10": map_at_k(ranked, positives, 10)}
        groups: dict[str, list[int]] = defaultdict(list)
        for i, e in enumerate(edits):
            groups[e].append(i)
        by_edit = {e: recall_at_k(ranked[rows], [positives[i] for i in rows], 1)
                   for e, rows in sorted(groups.items())}
        results.append(MethodResult(name, metrics, by_edit))
        if len(results) == 1:  # the first method's outcome per query, for the worst-queries page
            scored = [Scored(qid, queries["reference_id"][i], texts[i], [ids[r] for r in ranked[i] if r >= 0],
                             set(queries["ground_truth"][i])) for i, qid in enumerate(queries["query_id"])]
    return {"dataset": dataset, "dataset_key": art.key, "split": split, "protocol": PROTOCOL,
            "queries": len(texts), "gallery": len(ids), "model": backbone.spec.label(),
            "index": index.key, "runs": run_ids,
            "prompt": "a photo of $ that {modification} (pic2word, stage1); the text alone (text, sum)",
            "results": results, "scored": scored,
            "image": lambda item: gallery.image(row_of[item])}
