"""Scores: every method's rankings of a suite turned into the protocol's metrics and the
breakdowns, returned as typed results (the commands only format them)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from zscir_cli.eval.metrics import map_at_k, recall_at_k
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.protocols.predictions import Rankings, as_rows, aspect_map10, check_scorable, metrics_for
from zscir_cli.jobs.protocols.ranking import rank_split
from zscir_cli.jobs.protocols.suites import SHAPES_PROTOCOL, Suite
from zscir_cli.jobs.protocols.trees import PROTOCOLS
from zscir_cli.jobs.protocols.worst import Scored, WorstQueries
from zscir_cli.jobs.retrieval.methods import MethodChoice, describe, load_method
from zscir_cli.model.backbone import Backbone

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
@dataclass
class MethodResult:
    method: str  # the row's name: the method, or a label naming its recipe too
    metrics: dict[str, float]  # percent, under each protocol's names
    groups: dict[str, dict[str, float]] = field(default_factory=dict)  # breakdowns: by edit type, by aspect
    run: str | None = None  # the trained run behind the method
    name: str = ""  # the query method (image, text, sum, pic2word, stage1, tscir)
    recipe: str = ""  # how the method was made (`methods.describe`)

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
    rankings = rank_split(ctx, load_method(ctx, "text", backbone), asked, kind)
    metrics, groups = score_rankings(asked, rankings)
    return MethodResult(TARGET_CAPTION, metrics, groups, name=TARGET_CAPTION, recipe="no training"), rankings


def evaluate(ctx: Context, backbone: Backbone, suite: Suite, methods: list[str | MethodChoice],
             kind: str = "flat", target_caption: bool = True) -> tuple[Evaluation, WorstQueries | None]:
    """Every method on one suite (a name, or a `MethodChoice` pinning a run and naming the row);
    `kind`: the galleries' index kind; `target_caption`: add that reference row where the suite
    has target captions (shapes). Also returns the first method's per-query outcome, for the
    worst-queries page."""
    check_scorable(suite)  # type: ignore[arg-type]
    results, worst, index, prompts = [], None, [], []
    for choice in methods:
        choice = choice if isinstance(choice, MethodChoice) else MethodChoice(choice)
        method = load_method(ctx, choice.name, backbone, choice.run, choice.weights)
        if method.released is not None:
            prompts.append(f"{method.released.release.prompt} ({choice.name}, released)")
        rankings = rank_split(ctx, method, suite, kind)
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
    prompt = "; ".join([PROMPTS["shapes" if suite.name == "shapes" else "benchmark"], *prompts])
    counts = {name: {g: len(rows) for g, rows in by.items()} for name, by in query_groups(suite).items()} \
        if suite.name == "shapes" else {}
    return Evaluation(suite.name, suite.dataset_key, suite.split, protocol,
                      prompt, backbone.spec.label(), len(suite.queries), suite.excluded,
                      sum(len(g) for g in suite.galleries.values()), index, results, reference, counts,
                      suite.wording), worst
