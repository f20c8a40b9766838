"""FashionIQ, CIRR and CIRCO on fixture trees in the public layouts: prepare, metrics against
hand-computed cases, eval -> submit -> score agreement, and invalid prediction files."""

from __future__ import annotations

import json
from pathlib import Path

import benchfixtures
import pytest

from zscir_cli.core.cache import ArtifactStore
from zscir_cli.data.public_trees import BenchQuery
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.protocols.predictions import Rankings, metrics_for
from zscir_cli.jobs.protocols.trees import PreparedSplit, open_split

TINY = ["--model", "zscir-tiny-vit", "--pretrained", "none"]


@pytest.fixture
def trees(tmp_path) -> dict[str, Path]:
    return {"fashioniq": benchfixtures.fashioniq(tmp_path / "fiq"), "cirr": benchfixtures.cirr(tmp_path / "cirr"),
            "circo": benchfixtures.circo(tmp_path / "circo")}


@pytest.mark.parametrize("name", ["fashioniq", "cirr", "circo"])
def test_prepare_accepts_the_public_layouts(cli, trees, tmp_path, name):
    code, out, err = cli("prepare", name, trees[name], "--cache-dir", tmp_path / "c", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["missing_images"] == 0
    splits = {"fashioniq": ("val", "test"), "cirr": ("val", "test1"), "circo": ("val", "test")}[name]
    assert all(info[s]["queries"] > 0 and info[s]["excluded_queries"] == 0 for s in splits)
    assert info[splits[0]]["ground_truth"] is True and info[splits[1]]["ground_truth"] is False


def test_prepare_names_a_missing_annotation_file(cli, trees, tmp_path):
    (trees["cirr"] / "cirr/captions/cap.rc2.val.json").unlink()
    code, _, err = cli("prepare", "cirr", trees["cirr"], "--cache-dir", tmp_path / "c")
    assert code == 2 and "lacks 1 annotation file(s): cirr/captions/cap.rc2.val.json" in err
    code, _, err = cli("prepare", "circo", tmp_path / "nowhere", "--cache-dir", tmp_path / "c")
    assert code == 2 and "circo not found at" in err and "annotations/{val,test}.json" in err


def test_missing_images_fail_or_are_excluded_and_counted(cli, trees, tmp_path):
    root = trees["fashioniq"]
    (root / "images" / "BDR000000.jpg").unlink()  # the reference of the first dress query
    code, _, err = cli("prepare", "fashioniq", root, "--cache-dir", tmp_path / "c")
    assert code == 2 and "1 image(s) of fashioniq are missing" in err and "BDR000000" in err
    assert "--skip-missing" in err
    code, out, err = cli("prepare", "fashioniq", root, "--skip-missing", "--cache-dir", tmp_path / "c", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["val"]["excluded_queries"] == 1 and info["val"]["queries"] == 5
    assert info["val"]["gallery"]["dress"] == 5


def test_png_mirror_images_are_found(trees):
    from zscir_cli.data.public_trees import load_fashioniq

    b = load_fashioniq(trees["fashioniq"], "val")
    assert b.missing == [] and b.images["BDR000001"].suffix == ".png" and b.images["BDR000000"].suffix == ".jpg"
    assert b.queries[0].texts == ["is shiny and silver", "fit and flare"]  # '.?, ' stripped from both ends


def _split(name: str, queries: list[BenchQuery], gallery: list[str]) -> PreparedSplit:
    return PreparedSplit(None, name, "val", queries, {"": gallery} if name != "fashioniq" else {}, {})


def test_circo_map_with_several_ground_truths():
    q = [BenchQuery("0", "r", ["t"], ["a", "b", "c"], "a"), BenchQuery("1", "r2", ["t"], ["z"], "z")]
    ranks = Rankings([["a", "x", "b", "y", "z", "c"], ["y", "z"]])
    m = metrics_for(_split("circo", q, list("abcxyz")), ranks)
    ap5_q0 = (1 / 1 + 2 / 3) / 3  # a at 1, b at 3; c at 6 is past K=5
    ap5_q1 = (1 / 2) / 1
    assert m["map@5"] == pytest.approx(100 * (ap5_q0 + ap5_q1) / 2)
    ap10_q0 = (1 + 2 / 3 + 3 / 6) / 3
    assert m["map@10"] == pytest.approx(100 * (ap10_q0 + ap5_q1) / 2)
    assert m["recall@5"] == 100.0 and m["recall@50"] == 100.0  # target_img_id only


def test_cirr_recall_and_subset_recall():
    q = [BenchQuery("1", "r", ["t"], ["a"], "a", subset=["r", "a", "b", "c"]),
         BenchQuery("2", "s", ["t"], ["b"], "b", subset=["s", "a", "b", "c"])]
    ranks = Rankings([["x", "a"] + [f"g{i}" for i in range(60)], [f"g{i}" for i in range(60)] + ["b"]],
                     subset=[["a", "b", "c"], ["c", "a", "b"]])
    m = metrics_for(_split("cirr", q, []), ranks)
    assert m["recall@1"] == 0 and m["recall@5"] == 50 and m["recall@50"] == 50
    assert m["recall_subset@1"] == 50 and m["recall_subset@2"] == 50 and m["recall_subset@3"] == 100


def test_fashioniq_per_category_then_mean():
    qs = [BenchQuery("dress-0", "r", ["a", "b"], ["t1"], "t1", "dress"),
          BenchQuery("dress-1", "r", ["a", "b"], ["t2"], "t2", "dress"),
          BenchQuery("shirt-0", "r", ["a", "b"], ["t3"], "t3", "shirt"),
          BenchQuery("toptee-0", "r", ["a", "b"], ["t4"], "t4", "toptee")]
    top = [["t1"], [f"x{i}" for i in range(10)] + ["t2"], ["t3"], [f"x{i}" for i in range(60)]]
    m = metrics_for(PreparedSplit(None, "fashioniq", "val", qs, {}, {}), Rankings(top))
    assert m["dress/recall@10"] == 50 and m["dress/recall@50"] == 100
    assert m["shirt/recall@10"] == 100 and m["toptee/recall@50"] == 0
    assert m["average/recall@10"] == pytest.approx((50 + 100 + 0) / 3)


@pytest.fixture
def prepared(cli, trees, tmp_path):
    cache = tmp_path / "c"
    for name, root in trees.items():
        assert cli("prepare", name, root, "--cache-dir", cache)[0] == 0
    return cache


def test_cirr_removes_the_reference_and_fashioniq_keeps_it(prepared):
    from zscir_cli.jobs.protocols.ranking import rank_split
    from zscir_cli.jobs.retrieval.methods import QueryMethod
    from zscir_cli.model.backbone import ModelSpec, load_backbone

    ctx = Context(store=ArtifactStore(prepared), workers=0)
    bb = load_backbone(ModelSpec("zscir-tiny-vit", "none"))
    image = QueryMethod("image", bb)  # the reference's own feature: it would come first if not removed
    cirr = open_split(ctx, "cirr", "val")
    r = rank_split(ctx, image, cirr)
    for q, top, sub in zip(cirr.queries, r.top, r.subset):
        assert q.reference not in top and len(top) == 7 and q.reference not in sub and len(sub) == 5
    fiq = open_split(ctx, "fashioniq", "val")
    r = rank_split(ctx, image, fiq)
    assert all(top[0] == q.reference for q, top in zip(fiq.queries, r.top))
    assert all(set(top) <= set(fiq.galleries[q.group]) for q, top in zip(fiq.queries, r.top))


def test_fashioniq_encodes_both_caption_orders(prepared, monkeypatch):
    from zscir_cli.jobs.protocols.ranking import rank_split
    from zscir_cli.jobs.retrieval.methods import QueryMethod
    from zscir_cli.model.backbone import ModelSpec, load_backbone

    seen = []
    real = QueryMethod.encode

    def spy(self, v, texts, tokens=None, batch_size=256):
        seen.append(list(texts))
        return real(self, v, texts, tokens, batch_size)

    monkeypatch.setattr(QueryMethod, "encode", spy)
    ctx = Context(store=ArtifactStore(prepared), workers=0)
    bb = load_backbone(ModelSpec("zscir-tiny-vit", "none"))
    rank_split(ctx, QueryMethod("text", bb), open_split(ctx, "fashioniq", "val"))
    assert ["is shiny and silver and fit and flare", "is red and has longer sleeves"] in seen
    assert ["fit and flare and is shiny and silver", "has longer sleeves and is red"] in seen


@pytest.mark.parametrize("name,files", [("cirr", 2), ("circo", 1), ("fashioniq", 1)])
def test_submit_files_scored_offline_equal_eval(cli, prepared, trees, tmp_path, name, files):
    code, out, err = cli("eval", name, "--split", "val", "--method", "sum", *TINY, "--cache-dir", prepared, "--json")
    assert code == 0, err
    row = json.loads(out)["results"]["sum"]
    assert row["method"] == "sum" and row["recipe"] and row["run"] is None  # every row names how it was made
    evaluated = {k: v for k, v in row.items() if k not in ("method", "recipe", "run")}
    assert json.loads(out)["split"] == "val" and "protocol" in json.loads(out)
    code, out, err = cli("submit", name, "--split", "val", "--method", "sum", *TINY, "--out", tmp_path / "sub",
                         "--cache-dir", prepared)
    assert code == 0, err
    written = out.split()
    assert len(written) == files and all(Path(p).is_file() for p in written)
    code, out, err = cli("score", name, *written, "--root", trees[name], "--split", "val", "--json")
    assert code == 0, err
    scored = json.loads(out)
    assert set(scored) == set(evaluated)
    for k in scored:
        assert scored[k] == pytest.approx(evaluated[k], abs=1e-3)


def test_submit_test_split_formats(cli, prepared, tmp_path):
    code, out, err = cli("submit", "cirr", "--method", "sum", *TINY, "--out", tmp_path / "s", "--cache-dir", prepared)
    assert code == 0, err
    recall, subset = sorted(out.split())
    r = json.loads(Path(recall).read_text())
    assert r["version"] == "rc2" and r["metric"] == "recall" and set(r) == {"version", "metric", "12063", "12064"}
    assert all(isinstance(x, str) for x in r["12063"]) and len(r["12063"]) == 5  # the gallery minus the reference
    s = json.loads(Path(subset).read_text())
    assert s["metric"] == "recall_subset" and len(s["12063"]) == 3
    code, out, err = cli("submit", "circo", "--method", "sum", *TINY, "--out", tmp_path / "s", "--cache-dir", prepared)
    assert code == 0, err
    c = json.loads(Path(out.strip()).read_text())
    assert set(c) == {"0", "1"} and all(isinstance(x, int) for x in c["0"]) and len(set(c["0"])) == len(c["0"]) == 10


@pytest.mark.parametrize("content,message", [
    ("not json", "is not JSON"),
    ({"version": "rc2", "metric": "recall", "12060": ["dev-1-0-img1"]}, "1 query id(s) missing, e.g. 12061"),
    ({"version": "rc2", "metric": "recall", "12060": ["dev-1-0-img1", "dev-1-0-img1"], "12061": []},
     "query 12060: duplicate id 'dev-1-0-img1'"),
    ({"version": "rc2", "metric": "recall", "12060": [f"dev-{i}-0-img{i % 2}" for i in range(8)] * 7, "12061": []},
     "query 12060: 56 ids, at most 50"),
    ({"version": "rc2", "metric": "recall", "12060": ["nope"], "12061": []}, "'nope' is not in the gallery"),
    ({"version": "rc2", "metric": "recall", "12060": [1, 2], "12061": []}, "1 is not an image name (string)"),
    ({"metric": "recall", "12060": [], "12061": []}, '"version": "rc2"'),
    ({"version": "rc2", "metric": "recall_subset", "12060": ["dev-1-0-img1", "dev-2-0-img0", "dev-3-0-img1",
                                                             "dev-4-0-img0"], "12061": []}, "4 ids, at most 3"),
])
def test_invalid_cirr_files_are_refused(cli, trees, tmp_path, content, message):
    f = tmp_path / "pred.json"
    f.write_text(content if isinstance(content, str) else json.dumps(content))
    code, _, err = cli("score", "cirr", f, "--root", trees["cirr"])
    assert code == 2 and message in err


def test_invalid_circo_files_are_refused(cli, trees, tmp_path):
    f = tmp_path / "pred.json"
    f.write_text(json.dumps({"0": ["355099"], "1": []}))
    code, _, err = cli("score", "circo", f, "--root", trees["circo"])
    assert code == 2 and "'355099' is not an integer id" in err
    f.write_text(json.dumps({"0": [355099, 355099], "1": [], "7": []}))
    code, _, err = cli("score", "circo", f, "--root", trees["circo"])
    assert code == 2 and "duplicate id 355099" in err and "1 unknown query id(s), e.g. 7" in err


def test_score_a_test_split_is_refused(cli, trees, tmp_path):
    f = tmp_path / "pred.json"
    f.write_text(json.dumps({"0": [], "1": []}))
    code, _, err = cli("score", "circo", f, "--root", trees["circo"], "--split", "test")
    assert code == 2 and "has no ground truth" in err


def test_eval_html_shows_the_worst_queries(cli, prepared, tmp_path):
    page = tmp_path / "worst.html"
    code, out, err = cli("eval", "cirr", "--method", "image", "--method", "sum", *TINY, "--html", page,
                         "--cache-dir", prepared)
    assert code == 0, err
    assert "│ image" in out and "│ sum" in out and "recall_subset@1" in out
    html = page.read_text()
    assert html.count("<section>") == 2 and "worst queries of image" in html
    assert "show three bottles of soft drink" in html and html.count("data:image/png;base64,") == 2 * (1 + 5 + 1)


def test_circo_map10_by_semantic_aspect():
    from zscir_cli.jobs.protocols.predictions import aspect_map10

    q = [BenchQuery("0", "r", ["t"], ["a", "b"], "a", aspects=["cardinality", "viewpoint"]),
         BenchQuery("1", "r", ["t"], ["c"], "c", aspects=["cardinality"])]
    ranks = Rankings([["a", "x", "b"], ["x", "y", "z"]])
    m = aspect_map10(_split("circo", q, list("abcxyz")), ranks)
    ap0 = (1 + 2 / 3) / 2
    assert m == {"cardinality": pytest.approx(100 * ap0 / 2), "viewpoint": pytest.approx(100 * ap0)}


def test_circo_eval_reports_aspects(cli, prepared):
    code, out, err = cli("eval", "circo", "--method", "image", *TINY, "--cache-dir", prepared, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert set(res["map@10_by_aspect"]["image"]) == {"cardinality", "statement_with_conjunction", "viewpoint"}
    assert res["excluded_queries"] == 0 and res["split"] == "val" and "a photo of $ that" in res["prompt"]


def test_eval_without_a_model_takes_the_model_of_an_index_of_the_split_or_says_how(cli, prepared, tmp_path):
    import shutil

    fresh = tmp_path / "fresh"
    shutil.copytree(prepared, fresh, ignore=shutil.ignore_patterns("index", "features", ".memo"))
    code, _, err = cli("eval", "cirr", "--method", "sum", "--cache-dir", fresh)
    assert code == 2 and "was built on a gallery of cirr" in " ".join(err.split()) and "--model" in err
    code, out, err = cli("eval", "cirr", "--method", "sum", *TINY, "--cache-dir", fresh, "--json")  # builds its index
    assert code == 0, err
    code, again, err = cli("eval", "cirr", "--method", "sum", "--cache-dir", fresh, "--json")
    assert code == 0 and "using the model of index" in err
    assert json.loads(again)["results"] == json.loads(out)["results"] and "zscir-tiny-vit" in json.loads(again)["model"]
    code, out, _ = cli("eval", "--help")
    assert "--index" not in out and "the newest index built on the split's gallery" in " ".join(out.split())
