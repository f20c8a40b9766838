"""benchmarks/triplet_quality.py: its checker on hand-made triplets (one right, one wrong per edit
type), on the scene-graph recipe (right by construction), and the script end to end."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from zscir_cli.data import shapes
from zscir_cli.data.shapes import Obj, Scene

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "triplet_quality.py"


@pytest.fixture(scope="module")
def tq():
    spec = importlib.util.spec_from_file_location("triplet_quality", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RED_CIRCLE, BLUE_STAR = Obj("red", "circle", "small", 0), Obj("blue", "star", "large", 3)
REF = Scene("white", (RED_CIRCLE, BLUE_STAR))


def scene(background: str, *objs: Obj) -> Scene:
    # cells differ from the reference's on purpose: a target is compared up to position
    return Scene(background, tuple(Obj(o.colour, o.shape, o.size, 3 - o.cell % 4) for o in objs))


# (edit type, old, new, a right target, a wrong target)
CASES = [
    ("replace", "red", "green", scene("white", Obj("green", "circle", "small", 0), BLUE_STAR),
     scene("white", Obj("green", "circle", "small", 0))),  # the star is gone
    ("replace", "circle", "square", scene("white", Obj("red", "square", "small", 0), BLUE_STAR),
     scene("white", Obj("red", "circle", "small", 0), Obj("blue", "square", "large", 3))),  # the other object
    ("replace", "large", "small", scene("white", RED_CIRCLE, Obj("blue", "star", "small", 3)),
     scene("gray", RED_CIRCLE, Obj("blue", "star", "small", 3))),  # the background changed too
    ("background", "white", "black", scene("black", RED_CIRCLE, BLUE_STAR),
     scene("gray", RED_CIRCLE, BLUE_STAR)),
    ("add", "", "yellow cross", scene("white", RED_CIRCLE, BLUE_STAR, Obj("yellow", "cross", "large", 1)),
     scene("white", RED_CIRCLE, Obj("yellow", "cross", "small", 1))),  # lost the reference's star
    ("remove", "small red circle", "", scene("white", BLUE_STAR), scene("white", RED_CIRCLE)),
    # the scene recipe's types
    ("colour", "blue", "purple", scene("white", RED_CIRCLE, Obj("purple", "star", "large", 3)),
     scene("white", RED_CIRCLE, Obj("orange", "star", "large", 3))),
    ("add", "", "small yellow cross", scene("white", RED_CIRCLE, BLUE_STAR, Obj("yellow", "cross", "small", 1)),
     scene("white", RED_CIRCLE, BLUE_STAR, Obj("yellow", "cross", "large", 1))),  # the wrong size
]


@pytest.mark.parametrize("edit_type,old,new,right,wrong", CASES)
def test_one_right_and_one_wrong_triplet_per_edit_type(tq, edit_type, old, new, right, wrong):
    assert tq.verdict(REF, right, edit_type, old, new) is None
    assert tq.verdict(REF, wrong, edit_type, old, new) == "wrong target"


def test_edits_no_scene_can_show_are_wrong_whatever_the_target(tq):
    # a template that swapped an object's colour for a background word ('white' is no object colour)
    white = scene("white", Obj("white", "circle", "small", 0), BLUE_STAR)
    assert tq.verdict(REF, white, "replace", "red", "white") == "impossible edit"
    assert tq.verdict(REF, REF, "background", "white", "red") == "impossible edit"  # no red background
    assert tq.verdict(REF, REF, "remove", "green square", "") == "impossible edit"  # nothing to remove
    # '... on white' edited as a value is a background change, and right when the target shows it
    assert tq.verdict(REF, scene("gray", RED_CIRCLE, BLUE_STAR), "replace", "white", "gray") is None


def test_scene_recipe_triplets_are_all_right_and_the_table_counts(tq):
    from zscir_cli.data.shapes.triplets import scene_triplets

    world = shapes.WorldConfig(seed=1, train_pairs=600)
    recs = [shapes.pair_record(world, "train", i) for i in range(world.train_pairs)]
    report = scene_triplets([r["id"] for r in recs], [r["scene"] for r in recs], [r["caption"] for r in recs],
                            max_triplets=300, seed=1)
    rows = [t.to_json() for t in report.triplets]
    scenes = {r["id"]: r["scene"] for r in recs}
    table = tq.check_triplets(rows, scenes)
    assert sum(c["triplets"] for c in table.values()) == len(rows) > 100
    assert all(c["impossible edit"] == c["wrong target"] == 0 for c in table.values())
    rows[0] = {**rows[0], "target": rows[0]["reference"]}  # a target that is the reference: wrong
    lines = tq.format_table(tq.check_triplets(rows, scenes))
    assert lines[-1] == f"wrong: {100 / len(rows):.1f}% of {len(rows)} triplets"


def test_the_script_end_to_end_with_exact_matching():
    done = subprocess.run([sys.executable, str(SCRIPT), "--seed", "2", "--max-triplets", "200", "--train-pairs",
                           "1500"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert "matching: exact caption matches only (no model)" in lines[0]
    assert re.fullmatch(r"wrong: \d+\.\d% of \d+ triplets", lines[-1])
    total = next(x for x in lines if x.startswith("total")).split()
    assert int(total[1]) == int(lines[-1].split()[-2]) > 0
