"""The shapes world: determinism, captions, edits and ground truth."""

from __future__ import annotations

import io

from zscir_cli.data import shapes


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_same_seed_same_bytes_other_seed_other_bytes():
    a, b, c = shapes.WorldConfig(seed=5), shapes.WorldConfig(seed=5), shapes.WorldConfig(seed=6)
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
    assert f"{e.old} circle" in e.text or e.text.startswith(e.new)
    e = shapes.apply_edit(rng, scene, "remove")
    assert len(e.target.objects) == 1 and e.target.signature() not in {w.signature() for w in e.wrong}
    e = shapes.apply_edit(rng, scene, "add")
    assert len(e.target.objects) == 3 and e.new in e.text
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
    assert roles.count("near-miss") == 2 * len(queries)
