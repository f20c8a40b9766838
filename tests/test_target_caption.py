"""The target-caption row of `zscir eval shapes` (each query ranked by its target's caption: a
reference point, not a method and no ceiling) and the R@1 breakdowns by edit type and by
objects in the reference scene."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from zscir_cli.data import shapes

TINY = ["--model", "zscir-tiny-vit", "--pretrained", "none"]
WORLD = shapes.WorldConfig(seed=0, train_pairs=8, val_pairs=6, cir_queries=12)
LABEL = "target caption (a reference point, not a method)"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from zscir_cli.cli.app import run

    root = tmp_path_factory.mktemp("target-caption")
    assert run(["prepare", "shapes", "--train-pairs", "8", "--val-pairs", "6", "--queries", "12",
                "--cache-dir", str(root)]) == 0
    return root


def _truth(split: str = "val") -> tuple[list[dict], dict[str, shapes.Scene]]:
    queries, gallery = shapes.cir_split(WORLD, split)
    return queries, {g["id"]: g["scene"] for g in gallery}


def test_the_reference_row_ranks_each_query_by_its_target_caption(cli, world, monkeypatch):
    from zscir_cli.model.backbone import Backbone

    asked: list[str] = []
    encode = Backbone.encode_texts

    def recording(self, texts):
        asked.extend(texts)
        return encode(self, texts)

    monkeypatch.setattr(Backbone, "encode_texts", recording)
    code, out, err = cli("eval", "shapes", "--split", "val", "--method", "image", *TINY, "--cache-dir", world,
                         "--json")
    assert code == 0, err
    queries, scenes = _truth()
    # the image method encodes no text: every text encoded is the row's, one per query, in order
    assert asked == [shapes.caption(scenes[q["target_id"]]) for q in queries]
    assert asked[0].endswith("background") and asked != [q["modification"] for q in queries]
    res = json.loads(out)
    assert set(res["results"]) == {"image"} and res["target_caption"]["label"] == LABEL
    assert "no ceiling" in res["target_caption"]["definition"]

    # the same numbers by hand: the target captions' features against the index's vectors,
    # the reference removed, a query solved when its first result is a ground truth
    from zscir_cli.model.backbone import ModelSpec, load_backbone

    feats = np.load(world / "index" / res["index"] / "features.npy").astype(np.float32)
    ids = json.loads((world / "index" / res["index"] / "ids.json").read_text())
    text = encode(load_backbone(ModelSpec("zscir-tiny-vit", "none")), asked).numpy()
    scores = text @ feats.T
    first = []  # the rank of each query's first ground truth
    for i, q in enumerate(queries):
        scores[i, ids.index(q["reference_id"])] = -np.inf
        order = [ids[r] for r in np.argsort(-scores[i], kind="stable")]
        first.append(min(order.index(g) for g in q["ground_truth"]) + 1)
    for k in (1, 10, 50):
        assert res["target_caption"][f"R@{k}"] == pytest.approx(100 * np.mean([f <= k for f in first]))
    assert 0 < res["target_caption"]["R@10"] < 100  # neither all nor nothing: the ranks are compared

    for flag in ("--no-target-caption", "--no-oracle"):  # the old name stays, hidden
        asked.clear()
        code, out, err = cli("eval", "shapes", "--split", "val", "--method", "image", *TINY, "--cache-dir", world,
                             flag, "--json")
        assert code == 0, err
        assert asked == [] and "target_caption" not in json.loads(out)

    code, out, err = cli("eval", "shapes", "--split", "val", "--method", "image", *TINY, "--cache-dir", world,
                         )
    assert code == 0, err
    assert f"│ {LABEL}" in out and "by objects in the reference" in out


def test_no_query_offers_the_target_caption(cli, world):
    from zscir_cli.jobs.retrieval.methods import METHODS

    assert "target_caption" not in METHODS
    code, _, err = cli("query", "val-g000000", "make it red", "--method", "target_caption", "--cache-dir", world)
    assert code == 2 and "Unknown method 'target_caption'" in err


def test_breakdowns_are_consistent_with_the_overall_recall(cli, world):
    code, out, err = cli("eval", "shapes", "--split", "val", "--method", "image", "--method", "sum", *TINY,
                         "--cache-dir", world, "--json")
    assert code == 0, err
    res = json.loads(out)
    queries, scenes = _truth()
    counts = res["queries_per_group"]
    by_objects: dict[str, int] = {}
    for q in queries:
        n = str(len(scenes[q["reference_id"]].objects))
        by_objects[n] = by_objects.get(n, 0) + 1
    assert counts["by_objects_R@1"] == by_objects and len(by_objects) > 1
    assert sum(counts["by_edit_R@1"].values()) == len(queries) == res["queries"]
    rows = [*res["results"].values(), res["target_caption"]]
    for metrics in rows:
        for name in ("by_edit_R@1", "by_objects_R@1"):
            groups = metrics[name]
            assert set(groups) == set(counts[name])
            weighted = sum(groups[g] * counts[name][g] for g in groups) / len(queries)
            assert weighted == pytest.approx(metrics["R@1"])
    # a group's R@1 is a share of its queries: a multiple of 100 / its size
    for g, n in by_objects.items():
        assert round(res["results"]["image"]["by_objects_R@1"][g] * n / 100, 6).is_integer()


@pytest.mark.slow
def test_quick_demo_prints_the_reference_row_and_stage2_validates(cli, tmp_path, quick_demo):
    cache = quick_demo.copy(tmp_path / "cache")
    code, out, err = cli("demo", "--quick", "--cache-dir", cache, "--html", tmp_path / "d.html", "--json")
    assert code == 0, err
    ev = json.loads(out)["evaluation"]
    assert ev["target_caption"]["label"] == LABEL and "target_caption" not in ev["results"]
    assert 0 <= ev["target_caption"]["R@1"] <= ev["target_caption"]["R@10"] <= 100
    out = quick_demo.out
    table = out[out.index("│ image"):]
    assert table.index("│ tscir") < table.index(f"│ {LABEL}")  # below every method
    run = next((cache / "stage2").iterdir())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert records and all(0 <= r["val_R@1"] <= 100 and 0 <= r["val_mAP@10"] <= 100 for r in records)
