"""The world's splits: what each split may show, and the records every split is made of.

Held out by construction, so that a lab number says what a model does on scenes, colour-shape
pairs and wording that no training source holds:

- scenes: every scene falls in one bucket, train, val or test, by its signature (the scene up to
  position) and the seed, or in the bucket held-out when it shows a held-out pair. Pretraining,
  the image-caption pairs (Stage I, `synth`) and so every triplet show train scenes only; the CIR
  val split's gallery holds val scenes, the test split's test and held-out scenes. No test image
  shows a scene any training image shows.
- colour-shape pairs: `HELD_OUT` (one per shape) are in test scenes only, never in training
  data nor in val. In every `HELD_OUT_EVERY`-th round of the edit types, the test queries have
  targets that hold one (the others neither reference nor target); they are reported apart.
- wording: val and test queries are phrased in their own families (`wording`).

Everything is a pure function of (seed, indices): the same seed gives the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from zscir_cli.data.shapes.edits import EDIT_TYPES, Edit, apply_edit, possible_edits
from zscir_cli.data.shapes.scene import (
    COLOURS,
    SHAPES,
    Scene,
    pick,
    random_scene,
    relayout,
    render,
    rng_for,
)
from zscir_cli.data.shapes.wording import CAPTIONS, absent_phrases, caption, phrase, web_caption

# Bump when a change to this package changes what a seed generates: it is part of every
# prepared data set's cache key, so stale worlds are never reused.
GENERATOR_VERSION = 3
# colour-shape pairs no training source and no val image shows: one per shape, each colour once
HELD_OUT: frozenset[tuple[str, str]] = frozenset({
    ("purple", "circle"), ("orange", "square"), ("blue", "triangle"), ("green", "star"), ("yellow", "cross")})
SEEN = frozenset((c, s) for c in COLOURS for s in SHAPES) - HELD_OUT
BUCKETS = (("train", 70), ("val", 15), ("test", 15))  # percent of the scenes without a held-out pair
SPLIT_BUCKETS = {"train": {"train"}, "val": {"val"}, "test": {"test", "held-out"}}  # what a split may show
HELD_OUT_EVERY = 4  # every 4th round of the edit types, the test queries' targets hold a held-out pair
SPLIT_STREAMS = {"train": 1, "val": 2, "test": 3}
PRETRAIN_STREAM = 4
PAIR_BUCKET = {"train": "train", "val": "val"}  # image-caption pairs: train ones train, val ones validate
# the one-attribute edits that make pretraining's same-layout hard negatives (drawn uniformly):
# shape twice, as shape is what a small tower learns last
HARD_EDITS = ("shape", "shape", "colour", "size", "background")
TRIES = 50  # draws before a sampler gives up on one reference (then draws another)


@dataclass
class WorldConfig:
    seed: int = 0  # everything below is a function of this
    image_size: int = 64  # pixels per side
    train_pairs: int = 10000  # image-caption pairs for Stage I
    val_pairs: int = 1000  # image-caption pairs for backbone validation
    cir_queries: int = 400  # composed-retrieval queries per split (val and test)
    near_misses: int = 2  # same-layout variants of the reference per query, in the gallery


def bucket(scene: Scene, seed: int) -> str:
    """train, val, test or held-out: which split may show `scene` (see the module's doc)."""
    if scene.combos() & HELD_OUT:
        return "held-out"
    h = int(hashlib.sha256(f"{seed}|{scene.signature()}".encode()).hexdigest()[:8], 16) % 100
    for name, share in BUCKETS:
        if h < share:
            return name
        h -= share
    raise AssertionError("BUCKETS add up to 100")


def scene_in(rng: np.random.Generator, seed: int, where: set[str], n_objects: int | None = None) -> Scene:
    """A random scene of one of the buckets `where`."""
    while True:
        scene = random_scene(rng, n_objects)
        if bucket(scene, seed) in where:
            return scene


def edit_in(rng: np.random.Generator, seed: int, where: set[str], scene: Scene, edit_type: str) -> Edit | None:
    """An edit of `edit_type` whose result lies in one of the buckets `where`, or None after
    TRIES draws."""
    for _ in range(TRIES):
        edit = apply_edit(rng, scene, edit_type)
        if bucket(edit.target, seed) in where:
            return edit
    return None


def pair_record(cfg: WorldConfig, split: str, index: int) -> dict[str, Any]:
    rng = rng_for(cfg.seed, SPLIT_STREAMS[split], 0, index)
    scene = scene_in(rng, cfg.seed, {PAIR_BUCKET[split]})
    return {"id": f"{split}-{index:06d}", "scene": scene,
            "caption": caption(scene, int(rng.integers(len(CAPTIONS)))),
            "jitter": int(rng.integers(2**31))}


def render_record(cfg: WorldConfig, record: dict) -> Image.Image:
    return render(record["scene"], cfg.image_size, rng_for(record["jitter"]))


def pretrain_batch(seed: int, stream_seed: int, step: int, size: int, hard_share: float,
                   absence_share: float = 0.0) -> tuple[list[Scene], list[int], list[str]]:
    """Step `step` of the base CLIP's pretraining stream: (scenes, jitter seeds, captions), all
    train scenes. The first part are fresh scenes; the last `hard_share` of them are same-layout
    copies of those with one attribute changed (`HARD_EDITS`), hard negatives that make the
    towers bind colour, shape and size rather than layout. Of those, `absence_share` add an
    object instead, and the fresh scene's caption says that object is not there ("no blue
    star"): what absence means is learnt against the picture that has it."""
    rng = rng_for(seed, PRETRAIN_STREAM, stream_seed, step)
    n_hard = int(size * hard_share)
    n_base = size - n_hard
    train = SPLIT_BUCKETS["train"]
    scenes = [scene_in(rng, seed, train) for _ in range(n_base)]
    jitters = [int(rng.integers(2**31)) for _ in range(n_base)]
    named: dict[int, str] = {}  # fresh scene -> the object its caption says is absent
    for j in range(n_hard):
        base = scenes[j % n_base]
        absent = absence_share > 0 and rng.random() < absence_share and "add" in possible_edits(base)
        edit = edit_in(rng, seed, train, base, "add" if absent else pick(rng, HARD_EDITS))
        if absent and edit is not None:
            added = next(o for o in edit.target.objects if o not in base.objects)
            named[j % n_base] = f"{added.colour} {added.shape}"
        scenes.append(edit.target if edit is not None else scene_in(rng, seed, train))
        jitters.append(jitters[j % n_base])
    captions = [web_caption(s, rng, absent_phrases(s, set(SEEN)), named.get(i)) for i, s in enumerate(scenes)]
    return scenes, jitters, captions


def cir_split(cfg: WorldConfig, split: str) -> tuple[list[dict], list[dict]]:
    """(queries, gallery) of one CIR split (val or test), its scenes from its own bucket and its
    texts from its own family. Gallery items carry their Scene; ids are unique. A query keeps
    its edit's type, values and slots, so that any wording can ask it again."""
    gallery: list[dict] = []
    queries: list[dict] = []

    def add(scene: Scene, rng: np.random.Generator, role: str) -> str:
        gid = f"{split}-g{len(gallery):06d}"
        gallery.append({"id": gid, "scene": scene, "caption": caption(scene), "role": role,
                        "jitter": int(rng.integers(2**31))})
        return gid

    for q in range(cfg.cir_queries):
        rng = rng_for(cfg.seed, SPLIT_STREAMS[split], 1, q)
        # balance edit types: cycle through them, skipping references that do not allow one
        wanted = EDIT_TYPES[q % len(EDIT_TYPES)]
        held_out = split == "test" and (q // len(EDIT_TYPES)) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
        scene, edit = _query_edit(rng, cfg.seed, SPLIT_BUCKETS[split], {"held-out"} if held_out else {split}, wanted)
        ref_id = add(scene, rng, "reference")
        target = relayout(rng, edit.target, avoid=scene)
        tgt_id = add(target, rng, "target")
        for _ in range(cfg.near_misses):  # same layout as the reference, one thing changed
            near = _near_miss(rng, cfg.seed, SPLIT_BUCKETS[split], scene)
            if near is not None:
                add(near, rng, "near-miss")
        wrong = [s for s in edit.wrong if bucket(s, cfg.seed) in SPLIT_BUCKETS[split]]
        if wrong:  # the right kind of edit with the wrong value, fresh layout
            add(relayout(rng, pick(rng, wrong)), rng, "wrong-value")
        queries.append({"query_id": f"{split}-q{q:05d}", "reference_id": ref_id, "target_id": tgt_id,
                        "modification": phrase(edit.edit_type, edit.slots, split, rng),
                        "edit_type": edit.edit_type, "old": edit.old, "new": edit.new,
                        "slots": json.dumps(edit.slots, sort_keys=True), "family": split,
                        "held_out_pair": bool(target.combos() & HELD_OUT),
                        "target_signature": target.signature()})
    by_sig: dict[str, list[str]] = {}
    for g in gallery:
        by_sig.setdefault(g["scene"].signature(), []).append(g["id"])
    for q in queries:
        q["ground_truth"] = [g for g in by_sig[q.pop("target_signature")] if g != q["reference_id"]]
    return queries, gallery


def _near_miss(rng: np.random.Generator, seed: int, where: set[str], scene: Scene) -> Scene | None:
    """`scene` with one attribute changed (any attribute), in one of the buckets `where`."""
    kinds = [e for e in possible_edits(scene) if e not in ("add", "remove")]
    for _ in range(TRIES):
        target = apply_edit(rng, scene, pick(rng, kinds)).target
        if bucket(target, seed) in where:
            return target
    return None


def _query_edit(rng: np.random.Generator, seed: int, references: set[str], targets: set[str],
                wanted: str) -> tuple[Scene, Edit]:
    """A reference of the buckets `references` (the split's; those of `targets` too, when the
    target is to hold a held-out pair) that allows `wanted`, and an edit of it into `targets`."""
    while True:
        scene = scene_in(rng, seed, references if targets == {"held-out"} else targets)
        if wanted not in possible_edits(scene):
            continue
        edit = edit_in(rng, seed, targets, scene, wanted)
        if edit is not None:
            return scene, edit
