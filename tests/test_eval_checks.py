"""What `eval`, `submit`, `prepare` and `score` check before any work, and what they never load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import benchfixtures
import pytest

TINY = ["--model", "zscir-tiny-vit", "--pretrained", "none"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """CIRR and CIRCO fixture trees, prepared once for the module."""
    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.jobs.context import Context
    from zscir_cli.jobs.protocols.config import BenchmarkRequest
    from zscir_cli.jobs.protocols.trees import prepare_benchmark

    base = tmp_path_factory.mktemp("bench")
    trees = {"cirr": benchfixtures.cirr(base / "cirr"), "circo": benchfixtures.circo(base / "circo")}
    ctx = Context(store=ArtifactStore(base / "cache"))
    for name, root in trees.items():
        prepare_benchmark(ctx, BenchmarkRequest(name, str(root)))
    return base / "cache", trees


def _artifacts(cache: Path) -> list[str]:
    return sorted(str(p.parent.relative_to(cache)) for p in cache.glob("*/*/manifest.json"))


@pytest.mark.parametrize("name,split", [("cirr", "test1"), ("circo", "test")])
def test_eval_of_a_split_without_ground_truth_stops_before_encoding(cli, prepared, name, split):
    cache, _ = prepared
    before = _artifacts(cache)
    code, _, err = cli("eval", name, "--split", split, "--method", "image", *TINY, "--cache-dir", cache)
    assert code == 2 and "has no ground truth" in err and f"zscir submit {name} --split {split}" in err
    assert _artifacts(cache) == before  # no index, no features


def test_eval_html_parent_is_created_and_a_blocked_one_fails_first(cli, prepared, tmp_path):
    cache, _ = prepared
    page = tmp_path / "new" / "deeper" / "worst.html"
    code, _, err = cli("eval", "cirr", "--method", "image", *TINY, "--html", page, "--cache-dir", cache)
    assert code == 0, err
    assert page.is_file() and "<section>" in page.read_text()
    blocker = tmp_path / "file"
    blocker.write_text("")
    before = _artifacts(cache)
    code, _, err = cli("eval", "circo", "--method", "sum", *TINY, "--html", blocker / "w.html", "--cache-dir", cache)
    assert code == 2 and f"Cannot write to {blocker}" in err
    assert _artifacts(cache) == before  # refused before encoding the CIRCO gallery


def test_submit_refuses_a_blocked_out_folder_before_encoding(cli, prepared, tmp_path):
    cache, _ = prepared
    blocker = tmp_path / "file"
    blocker.write_text("")
    before = _artifacts(cache)
    code, _, err = cli("submit", "circo", "--method", "sum", *TINY, "--out", blocker / "sub", "--cache-dir", cache)
    assert code == 2 and "Cannot write to" in err
    assert _artifacts(cache) == before


@pytest.mark.parametrize("rel,content,message", [
    ("cirr/captions/cap.rc2.val.json", "{not json", "is not valid JSON"),
    ("cirr/captions/cap.rc2.val.json", [{"pairid": 1, "reference": "dev-0-0-img0"}],
     "cap.rc2.val.json entry 0 has no 'caption' key"),
    ("cirr/captions/cap.rc2.val.json", {"pairid": 1}, "holds a JSON dict, not the expected list"),
    ("cirr/image_splits/split.rc2.val.json", ["dev-0-0-img0"], "holds a JSON list, not the expected object"),
])
def test_malformed_cirr_annotations_name_the_file_and_key(cli, tmp_path, rel, content, message):
    root = benchfixtures.cirr(tmp_path / "cirr")
    (root / rel).write_text(content if isinstance(content, str) else json.dumps(content))
    code, _, err = cli("prepare", "cirr", root, "--cache-dir", tmp_path / "c")
    assert code == 2 and message in err and "Traceback" not in err


def test_malformed_circo_and_fashioniq_annotations(cli, tmp_path):
    root = benchfixtures.circo(tmp_path / "circo")
    (root / "COCO2017_unlabeled/annotations/image_info_unlabeled2017.json").write_text(json.dumps({"imgs": []}))
    code, _, err = cli("prepare", "circo", root, "--cache-dir", tmp_path / "c")
    assert code == 2 and "image_info_unlabeled2017.json has no 'images' key" in err
    fiq = benchfixtures.fashioniq(tmp_path / "fiq")
    (fiq / "captions/cap.shirt.val.json").write_text(json.dumps([{"target": "x", "captions": ["a", "b"]}]))
    code, _, err = cli("prepare", "fashioniq", fiq, "--cache-dir", tmp_path / "c")
    assert code == 2 and "cap.shirt.val.json entry 0 has no 'candidate' key" in err


def _modules_after(args: list[str]) -> tuple[int, set[str], str]:
    code = ("import sys; from zscir_cli.cli.app import run; rc = run(sys.argv[1:]); "
            "print('MODULES', ' '.join(sorted(sys.modules)), file=sys.stderr); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, *args], check=False, capture_output=True, text=True, timeout=120)
    line = next(x for x in p.stderr.splitlines() if x.startswith("MODULES "))
    return p.returncode, set(line.split()[1:]), p.stderr


def test_prepare_and_score_never_import_torch(prepared, tmp_path):
    _cache, trees = prepared
    code, mods, err = _modules_after(["prepare", "cirr", str(trees["cirr"]), "--cache-dir", str(tmp_path / "c")])
    assert code == 0, err
    assert "torch" not in mods and "faiss" not in mods and "open_clip" not in mods
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps({"version": "rc2", "metric": "recall", "12060": ["dev-1-0-img1"], "12061": []}))
    code, mods, err = _modules_after(["score", "cirr", str(pred), "--root", str(trees["cirr"])])
    assert code == 0, err
    assert "torch" not in mods and "faiss" not in mods
