"""Suites: one split to evaluate, of the shapes world or a public benchmark: its queries, its
galleries (FashionIQ has one per category) and its protocol's rules. `ranking.rank_split` ranks
a suite with a query method, `results.evaluate` scores every method on it.

Shapes protocol (ours, docs/lab.md): the whole split gallery ranked with the reference removed
(as CIRR); every gallery scene equal to the target up to position is a ground truth (as CIRCO).
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zscir_cli.core.errors import UserError
from zscir_cli.core.text import read_text
from zscir_cli.data import shapes
from zscir_cli.data.galleries import Gallery
from zscir_cli.data.images import load_rgb
from zscir_cli.data.public_trees import BenchQuery
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.datasets.store import find_dataset, load_split, resolve_gallery
from zscir_cli.jobs.protocols.predictions import (
    check_scorable,
)
from zscir_cli.jobs.protocols.trees import PROTOCOLS, PreparedSplit, open_split

SHAPES_PROTOCOL = ("shapes-cir-v1: reference removed from the ranking; ground truth = gallery scenes "
                   "equal to the target up to position; R@K = any ground truth in the top K; "
                   "mAP@K as CIRCO")


class PathGallery(Gallery):
    """Images of a prepared benchmark, by id; identified by the prepared artifact, part and split
    (and the ids, when it is a subset)."""

    def __init__(self, ids: list[str], paths: dict[str, str], source: dict[str, Any]):
        self.ids, self.paths, self.source = ids, paths, source

    def image(self, i: int):
        return load_rgb(self.paths[self.ids[i]])

    def raw(self, i: int) -> bytes:
        return Path(self.paths[self.ids[i]]).read_bytes()

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

    def _place(self, item: str) -> tuple[str, int] | None:
        if self._where is None:
            self._where = {x: (g, i) for g, gal in self.galleries.items() for i, x in enumerate(gal.ids)}
        return self._where.get(item)

    def image(self, item: str):
        """An image by id (a gallery's, or a reference outside every gallery)."""
        place = self._place(item)
        return self.galleries[place[0]].image(place[1]) if place else load_rgb(self.references[item])

    def raw(self, item: str) -> bytes:
        """An image's bytes by id."""
        place = self._place(item)
        return self.galleries[place[0]].raw(place[1]) if place else Path(self.references[item]).read_bytes()


class SuiteImages(Gallery):
    """Images of a suite by id, wherever they lie (the references of its queries)."""

    def __init__(self, suite: Suite, ids: list[str]):
        self.suite, self.ids = suite, ids
        self.source = {"kind": "dataset", "dataset": suite.dataset_key, "split": suite.split, "part": "references"}

    def image(self, i: int):
        return self.suite.image(self.ids[i])

    def raw(self, i: int) -> bytes:
        return self.suite.raw(self.ids[i])

    def identity(self) -> dict[str, Any]:
        return {**self.source, "ids": hashlib.sha256("\n".join(self.ids).encode()).hexdigest()[:16]}


def shapes_suite(ctx: Context, dataset: str, split: str, wording: str | None = None,
                 texts: dict[str, str] | None = None) -> Suite:
    """A shapes world's CIR split. Its queries are asked in the split's own phrasing family, or
    in `wording` (another family of `shapes.PHRASINGS`), or with `texts` (query id -> text:
    any wording at all); references, targets, gallery and ground truth stay the same."""
    art = find_dataset(ctx, dataset)
    rows = load_split(art, "cir", split)
    asked = list(rows["modification"])
    if wording is not None:
        asked = [reword(qid, edit, json.loads(slots), wording) for qid, edit, slots in
                 zip(rows["query_id"], rows["edit_type"], rows["slots"])]
    if texts is not None:
        lacking = [qid for qid in rows["query_id"] if qid not in texts]
        if lacking:
            raise UserError(f"The texts name no modification for {len(lacking)} of the {len(asked)} queries of "
                            f"{split}, e.g. {lacking[0]}.", "Give one line per query of the split.")
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
                 wording=wording or ("texts from a file" if texts is not None else split))


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


def open_suite(ctx: Context, dataset: str, split: str) -> Suite:
    """The split to evaluate, checked (it exists, it has ground truth) before any model loads."""
    if dataset in PROTOCOLS:
        data = open_split(ctx, dataset, split)
        check_scorable(data)
        return benchmark_suite(data)
    return shapes_suite(ctx, dataset, split)


def read_texts(path: Path) -> dict[str, str]:
    """query id -> modification text, from a JSONL file of {"query_id", "modification"} objects."""
    texts: dict[str, str] = {}
    try:
        lines = read_text(path).splitlines()
    except OSError as e:
        raise UserError(f"Cannot read {path} ({e.strerror or e}).", "Check the path.") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{n}: not JSON ({e.msg}).", "One JSON object a line.") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("query_id"), str) or \
                not isinstance(obj.get("modification"), str) or not obj["modification"].strip():
            raise UserError(f"{path}:{n}: expected {{\"query_id\": ..., \"modification\": ...}} with a "
                            "non-empty text.", "Fix that line.")
        if obj["query_id"] in texts:
            raise UserError(f"{path}:{n}: query {obj['query_id']} repeats.", "Give each query one text.")
        texts[obj["query_id"]] = obj["modification"]
    return texts
