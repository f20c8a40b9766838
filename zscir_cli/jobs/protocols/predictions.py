"""Benchmark metrics over rankings, and the prediction files: writing the test-server formats,
validating them and scoring them offline. Every number comes from `eval.metrics`, whether
`zscir eval` prints it or `zscir score` reads it back from a file; nothing here imports torch."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zscir_cli.core.errors import UserError
from zscir_cli.core.text import read_text
from zscir_cli.data.public_trees import FIQ_CATEGORIES, SPLITS
from zscir_cli.eval.metrics import map_at_k, recall_at_k
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.protocols.config import ScoreRequest
from zscir_cli.jobs.protocols.trees import PreparedSplit, open_split, split_from_root


@dataclass
class Rankings:
    """Per query: the top gallery ids (and, for CIRR, the ranked img_set members)."""

    top: list[list[str]]
    subset: list[list[str]] | None = None
    index: list[str] = field(default_factory=list)  # keys of the indexes ranked against


def check_scorable(data: PreparedSplit) -> None:
    """A split without ground truth can only be submitted: say so before any work."""
    if not data.has_ground_truth:
        raise UserError(f"{data.name} {data.split} has no ground truth to score against.",
                        f"Use --split val, or 'zscir submit {data.name} --split {data.split}' for the test server.")


def as_rows(lists: list[list[str]], positives: list[list[str]]) -> tuple[np.ndarray, list[set[int]]]:
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
    check_scorable(data)
    out: dict[str, float] = {}
    if data.name == "fashioniq":
        for cat in FIQ_CATEGORIES:
            rows = [i for i, q in enumerate(qs) if q.group == cat]
            ranked, pos = as_rows([rankings.top[i] for i in rows], [qs[i].targets for i in rows])
            for k in (10, 50):
                out[f"{cat}/recall@{k}"] = recall_at_k(ranked, pos, k)
        for k in (10, 50):
            out[f"average/recall@{k}"] = float(np.mean([out[f"{c}/recall@{k}"] for c in FIQ_CATEGORIES]))
    elif data.name == "cirr":
        ranked, pos = as_rows(rankings.top, [q.targets for q in qs])
        for k in (1, 5, 10, 50):
            out[f"recall@{k}"] = recall_at_k(ranked, pos, k)
        if rankings.subset is not None:
            ranked, pos = as_rows(rankings.subset, [q.targets for q in qs])
            for k in (1, 2, 3):
                out[f"recall_subset@{k}"] = recall_at_k(ranked, pos, k)
    else:
        ranked, pos = as_rows(rankings.top, [q.targets for q in qs])
        for k in (5, 10, 25, 50):
            out[f"map@{k}"] = map_at_k(ranked, pos, k)
        ranked, pos = as_rows(rankings.top, [[q.target] if q.target else [] for q in qs])
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
        ranked, pos = as_rows([rankings.top[i] for i in rows], [data.queries[i].targets for i in rows])
        out[aspect] = map_at_k(ranked, pos, 10)
    return out


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
            obj = json.loads(read_text(path))
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


def score(ctx: Context, req: ScoreRequest) -> dict[str, float]:
    """`zscir score`: prediction files scored as the server would, against a split with ground
    truth, read from the prepared data set or straight from its annotation files."""
    if req.dataset not in SPLITS:
        raise UserError(f"Unknown benchmark '{req.dataset}'.", "Choose fashioniq, cirr or circo.")
    data = split_from_root(req.dataset, Path(req.root), req.split) if req.root else \
        open_split(ctx, req.dataset, req.split)
    return score_files(data, [Path(p) for p in req.predictions])
