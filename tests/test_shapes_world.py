"""The shapes world: determinism, captions, edits and ground truth."""

from __future__ import annotations

import functools
import io
import re

import pytest

from zscir_cli.data import shapes


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_same_seed_same_bytes_other_seed_other_bytes():
    a, b = shapes.WorldConfig(seed=5, cir_queries=48), shapes.WorldConfig(seed=5, cir_queries=48)
    c = shapes.WorldConfig(seed=6, cir_queries=48)
    ra = [shapes.pair_record(a, "train", i) for i in range(20)]
    rb = [shapes.pair_record(b, "train", i) for i in range(20)]
    rc = [shapes.pair_record(c, "train", i) for i in range(20)]
    assert [_png(shapes.render_record(a, r)) for r in ra] == [_png(shapes.render_record(b, r)) for r in rb]
    assert [r["caption"] for r in ra] != [r["caption"] for r in rc]
    qa, ga = shapes.cir_split(a, "val")
    qb, gb = shapes.cir_split(b, "val")
    assert qa == qb and [g["scene"] for g in ga] == [g["scene"] for g in gb]


def test_caption_describes_the_scene():
    scene = shapes.Scene("gray", (shapes.Obj("red", "circle", "large", 0),
                                  shapes.Obj("orange", "star", "small", 3)))
    assert shapes.caption(scene) == "a large red circle and a small orange star on a gray background"
    assert shapes.Scene.from_json(scene.to_json()) == scene


def test_signature_ignores_position_only():
    a = shapes.Scene("white", (shapes.Obj("red", "circle", "large", 0), shapes.Obj("blue", "star", "small", 1)))
    b = shapes.Scene("white", (shapes.Obj("blue", "star", "small", 2), shapes.Obj("red", "circle", "large", 3)))
    c = shapes.Scene("black", a.objects)
    assert a.signature() == b.signature() != c.signature()


def test_edits_change_exactly_what_they_say():
    import numpy as np

    rng = np.random.default_rng(0)
    scene = shapes.Scene("white", (shapes.Obj("red", "circle", "large", 0),
                                   shapes.Obj("blue", "circle", "small", 1)))
    e = shapes.apply_edit(rng, scene, "colour")
    changed = [o for o in e.target.objects if o not in scene.objects]
    assert len(changed) == 1 and changed[0].colour == e.new and e.old in ("red", "blue")
    # two circles: the reference must name the colour
    assert e.slots["ref"] == f"{e.old} circle"
    assert f"{e.old} circle" in shapes.phrase("colour", e.slots, "test", rng)
    e = shapes.apply_edit(rng, scene, "remove")
    assert len(e.target.objects) == 1 and e.target.signature() not in {w.signature() for w in e.wrong}
    e = shapes.apply_edit(rng, scene, "add")
    assert len(e.target.objects) == 3 and e.new in shapes.phrase("add", e.slots, "val", rng)
    e = shapes.apply_edit(rng, scene, "background")
    assert e.target.background == e.new != "white" and e.target.objects == scene.objects


def test_cir_ground_truth_is_every_scene_equal_to_the_target_up_to_position():
    cfg = shapes.WorldConfig(seed=1, cir_queries=60)
    queries, gallery = shapes.cir_split(cfg, "test")
    by_id = {g["id"]: g for g in gallery}
    assert {q["edit_type"] for q in queries} == set(shapes.EDIT_TYPES)
    for q in queries:
        target = by_id[q["target_id"]]["scene"]
        ref = by_id[q["reference_id"]]["scene"]
        assert q["target_id"] in q["ground_truth"] and q["reference_id"] not in q["ground_truth"]
        expected = {g["id"] for g in gallery if g["scene"].signature() == target.signature()}
        assert set(q["ground_truth"]) == expected - {q["reference_id"]}
        assert ref.signature() != target.signature()
    roles = [g["role"] for g in gallery]
    assert 1.5 * len(queries) <= roles.count("near-miss") <= 2 * len(queries)


WORLD = shapes.WorldConfig(seed=4, train_pairs=3000, val_pairs=300, cir_queries=120)


@functools.cache
def world_split(split: str) -> tuple[list, list]:
    """WORLD's CIR split (queries, gallery), made once for the tests below, which only read it."""
    return shapes.cir_split(WORLD, split)


@pytest.fixture(scope="module")
def training_scenes() -> list[shapes.Scene]:
    """Every scene training sees: the image-caption pairs and a sample of the pretraining stream."""
    pairs = [shapes.pair_record(WORLD, "train", i)["scene"] for i in range(WORLD.train_pairs)]
    stream = [s for step in range(40) for s in shapes.pretrain_batch(WORLD.seed, 0, step, 64, 0.5)[0]]
    return pairs + stream


def test_no_val_or_test_image_shows_a_scene_that_training_shows(training_scenes):
    seen = {s.signature() for s in training_scenes}
    galleries = {split: world_split(split)[1] for split in ("val", "test")}
    val = {g["scene"].signature() for g in galleries["val"]}
    test = {g["scene"].signature() for g in galleries["test"]}
    assert not val & seen and not test & seen and not val & test
    assert {shapes.bucket(s, WORLD.seed) for s in training_scenes} == {"train"}
    val_pairs = {shapes.pair_record(WORLD, "val", i)["scene"].signature() for i in range(WORLD.val_pairs)}
    assert not val_pairs & seen and not val_pairs & test


def test_held_out_pairs_are_in_test_scenes_only(training_scenes):
    def pairs_of(scenes) -> set:
        return set().union(*(s.combos() for s in scenes))

    assert len({s for _, s in shapes.HELD_OUT}) == len(shapes.SHAPES)  # one per shape at least
    assert not pairs_of(training_scenes) & shapes.HELD_OUT
    assert pairs_of(training_scenes) == set(shapes.SEEN)  # every other pair is trained on
    queries, gallery = world_split("val")
    assert not pairs_of(g["scene"] for g in gallery) & shapes.HELD_OUT
    queries, gallery = world_split("test")
    scene = {g["id"]: g["scene"] for g in gallery}
    flagged = [q for q in queries if q["held_out_pair"]]
    assert [bool(scene[q["target_id"]].combos() & shapes.HELD_OUT) for q in queries] == \
        [q["held_out_pair"] for q in queries]
    assert len(flagged) == len(queries) // 4
    assert {q["edit_type"] for q in flagged} == set(shapes.EDIT_TYPES)
    for q in queries:  # the other queries hold none, in reference or target
        if not q["held_out_pair"]:
            assert not (scene[q["reference_id"]].combos() | scene[q["target_id"]].combos()) & shapes.HELD_OUT
    captions = [c for step in range(40) for c in shapes.pretrain_batch(WORLD.seed, 0, step, 64, 0.5)[2]]
    assert not [c for c in captions for col, shp in shapes.HELD_OUT if f"{col} {shp}" in c]


def test_queries_are_worded_in_their_split_family():
    for split in ("val", "test"):
        queries, _ = world_split(split)
        assert all(q["family"] == split for q in queries)
        for q in queries:
            patterns = [re.escape(t).replace(r"\{", "{").replace(r"\}", "}") for t in shapes.PHRASINGS[split][q["edit_type"]]]
            assert any(re.fullmatch(re.sub(r"\{[a-z_]+\}", ".+", p), q["modification"]) for p in patterns), q
