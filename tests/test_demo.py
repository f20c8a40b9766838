"""The reduced demo end to end through the CLI, and the cache reuse of a second run."""

from __future__ import annotations

import json
import re


def test_quick_demo_end_to_end_then_reuses_the_cache(cli, tmp_path, quick_demo):
    out, page = quick_demo.out, quick_demo.page
    cache = quick_demo.copy(tmp_path / "cache")  # the demo's cache, moved: reused from where it is
    for method in ("image", "text", "sum", "pic2word", "stage1", "tscir"):
        assert f"│ {method}" in out
    assert "R@1" in out and "mAP@10" in out and "not of any public benchmark" in out
    assert "┃ recipe" in out and "│ Stage I: token learner + VSI + STA, 1 epoch " in out
    assert re.search(r"│ Stage II: \d+ template/content triplets", out)
    assert "2 hard negatives, 1 epoch " in out and "1 epochs" not in out  # the quick demo trains one epoch
    assert "base CLIP (24 val images): caption R@1" in out
    assert page.is_file() and page.read_text().count("<section>") == 2
    kinds = sorted(p.parent.parent.name for p in cache.glob("*/*/manifest.json"))
    # features: train and val pairs, test gallery (each encoded once); captions of train; the
    # default recipe's triplets, made from captions (a small world has too few for scene ones)
    assert kinds == ["backbone", "dataset", "features", "features", "features", "index", "stage1", "stage1",
                     "stage2", "text-features", "triplets"]
    triplets = next((cache / "triplets").iterdir())
    rows = [json.loads(x) for x in (triplets / "triplets.jsonl").read_text().splitlines()]
    assert rows and {r["recipe"] for r in rows} == {"template/content"}
    stage2 = json.loads(next((cache / "stage2").glob("*/manifest.json")).read_text())
    assert stage2["triplets_file"]["artifact"] == f"triplets/{triplets.name}"  # by key, not by a path

    code, out, err = cli("demo", "--quick", "--cache-dir", cache, "--html", tmp_path / "again.html", "--json")
    assert code == 0, err
    res = json.loads(out)
    assert sorted(p.parent.parent.name for p in cache.glob("*/*/manifest.json")) == kinds  # nothing rebuilt
    assert set(res["evaluation"]["results"]) == {"image", "text", "sum", "pic2word", "stage1", "tscir"}
    assert set(res["evaluation"]["runs"]) == {"pic2word", "stage1", "tscir"}
    for name, metrics in res["evaluation"]["results"].items():
        assert 0 <= metrics["R@1"] <= metrics["R@10"] <= metrics["R@50"] <= 100
        assert metrics["method"] == name and metrics["recipe"]  # every row says how it was made
    assert f"{len(rows)} template/content triplets" in res["evaluation"]["results"]["tscir"]["recipe"]
    ev = res["evaluation"]
    assert "scored" not in ev and "image" not in ev  # per-query details stay out of the summary
    assert ev["split"] == "test" and ev["queries"] == 12 and "reference removed" in ev["protocol"]
    assert "map@10_by_aspect" not in ev  # no empty breakdowns that do not apply
    assert 0 <= res["backbone"]["caption_r1"] <= 100

    # the same gallery under the name it is asked by: eval finds the demo's index and tokens
    code, out, err = cli("eval", "shapes", "--split", "test", "--model", "zscir-shapes-rn", "--cache-dir", cache,
                         "--json")
    assert code == 0, err
    assert sorted(p.parent.parent.name for p in cache.glob("*/*/manifest.json")) == kinds  # nothing built
    again = json.loads(out)
    assert again["index"] == res["index"] and again["results"] == ev["results"] and again["runs"] == ev["runs"]
    index = json.loads((cache / "index" / res["index"] / "manifest.json").read_text())
    assert set(index["timings_s"]) == {"read_decode", "encode", "write"}

    # a newer Stage I run in the same cache: the demo still composes and scores the runs it trained
    code, out, err = cli("map-train", "--data", ev["dataset_key"], "--epochs", "1", "--batch-size", "8", "--seed", "7",
                         "--model", "zscir-shapes-rn", "--pretrained", "latest", "--cache-dir", cache, "--json")
    assert code == 0, err
    newer = json.loads(out)["run"]
    code, out, err = cli("demo", "--quick", "--cache-dir", cache, "--html", tmp_path / "third.html", "--json")
    assert code == 0, err
    assert json.loads(out)["evaluation"]["runs"] == ev["runs"] and newer not in ev["runs"].values()


def test_demo_checks_its_html_path_before_any_work(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = cli("demo", "--quick", "--cache-dir", tmp_path / "cache", "--html", blocker / "sub" / "d.html")
    assert code == 2 and "Cannot write to" in err
    assert not (tmp_path / "cache").exists()  # failed before preparing anything


def test_prepare_and_pretrain_commands(cli, tmp_path):
    cache = tmp_path / "cache"
    code, out, err = cli("prepare", "shapes", "--train-pairs", "8", "--val-pairs", "6", "--queries", "6",
                         "--cache-dir", cache, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["pairs/train"] == 8 and info["cir/test"] == 6 and info["built"] is True
    code, out, err = cli("pretrain", "--steps", "2", "--batch-size", "4", "--cache-dir", cache, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["trained"] and res["checkpoint"].endswith("open_clip_model.safetensors")
    metrics = (cache / "backbone" / res["key"] / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["step"] for m in metrics] == [0, 1]
    code, _, err = cli("pretrain", "--model", "zscir-shapes-nope", "--steps", "1", "--cache-dir", cache)
    assert code == 2 and "Unknown model 'zscir-shapes-nope'" in err and "zscir-shapes-rn" in err
    code, _, err = cli("pretrain", "--data", "fashion", "--cache-dir", cache)
    assert code == 2 and "No prepared data set 'fashion'" in err


def test_demo_seed_reaches_every_stage():
    from zscir_cli.jobs.demo.run import DemoConfig

    cfg = DemoConfig().with_seed(7)
    assert {cfg.world.seed, cfg.pretrain.seed, cfg.stage1.seed, cfg.stage2.seed} == {7}
    quick = DemoConfig.quick(3)
    assert {quick.world.seed, quick.pretrain.seed, quick.stage1.seed, quick.stage2.seed} == {3}


def test_demo_recipes(cli, tmp_path):
    from zscir_cli.jobs.demo.run import DemoConfig

    default, paper = DemoConfig(), DemoConfig().paper_recipe()
    assert (default.triplet_match, default.stage2.embedding_adapter, default.scene_reference) == \
        ("content", True, True)
    assert (paper.triplet_match, paper.stage2.embedding_adapter) == ("words", False)
    assert DemoConfig.quick().triplet_match == default.triplet_match  # the quick demo runs the default recipe
    assert paper.stage1 == default.stage1 and paper.stage2.lr == default.stage2.lr  # only Stage II's recipe differs
    code, _, err = cli("demo", "--recipe", "mine", "--cache-dir", tmp_path / "cache")
    assert code == 2 and "Unknown --recipe 'mine'" in err and not (tmp_path / "cache").exists()
    code, _, err = cli("demo", "--split", "train", "--cache-dir", tmp_path / "cache")
    assert code == 2 and "Unknown --split 'train'" in err and not (tmp_path / "cache").exists()
