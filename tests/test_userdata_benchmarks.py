"""A benchmark tree with only some of its splits, the names `prepare` prints, and the message of
a tree that is not there."""

from __future__ import annotations

import json
import shutil

import benchfixtures
import pytest

from zscir_cli.core.cache import ArtifactStore
from zscir_cli.core.errors import UserError
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.protocols.trees import open_split

TINY = ["--model", "zscir-tiny-vit", "--pretrained", "none"]


@pytest.fixture
def val_only(tmp_path):
    root = benchfixtures.cirr(tmp_path / "cirr")
    for rel in ("cirr/captions/cap.rc2.test1.json", "cirr/image_splits/split.rc2.test1.json"):
        (root / rel).unlink()
    shutil.rmtree(root / "test1")
    return root


def test_a_tree_with_only_the_val_files_prepares_val_and_says_test1_is_missing(cli, val_only, tmp_path):
    cache = tmp_path / "c"
    code, out, err = cli("prepare", "cirr", val_only, "--cache-dir", cache, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["missing_splits"] == ["test1"] and "test1" not in info
    assert info["val"]["queries"] == 2 and info["val"]["gallery"] == {"all": 8}  # the one gallery, named
    code, out, err = cli("prepare", "cirr", val_only, "--cache-dir", cache)
    assert code == 0 and "val\tqueries 2\texcluded 0\tall 8" in out
    assert ("no test1 split: cirr/captions/cap.rc2.test1.json, cirr/image_splits/split.rc2.test1.json "
            "not found; prepared val only") in err
    with pytest.raises(UserError, match=r"cirr was prepared from .* without its test1 split \(prepared: val\)"):
        open_split(Context(store=ArtifactStore(cache)), "cirr", "test1")
    code, _, err = cli("prepare", "cirr", val_only, "--split", "test1", "--cache-dir", cache)
    assert code == 2 and "lacks 2 annotation file(s): cirr/captions/cap.rc2.test1.json" in err


def test_split_chooses_among_present_splits(cli, tmp_path):
    root = benchfixtures.cirr(tmp_path / "cirr")
    cache = tmp_path / "c"
    code, out, err = cli("prepare", "cirr", root, "--split", "test1", "--cache-dir", cache, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert "val" not in info and info["test1"]["queries"] == 2 and info["missing_splits"] == []
    code, out, _ = cli("prepare", "cirr", root, "--cache-dir", cache, "--json")
    assert json.loads(out)["built"] and {"val", "test1"} <= set(json.loads(out))  # both: another artifact
    code, _, err = cli("prepare", "cirr", root, "--split", "test", "--cache-dir", cache)
    assert code == 2 and "cirr has no split 'test'. Choose one of: val, test1." in err


def test_a_missing_tree_ends_with_the_tree_on_lines_of_its_own(cli, tmp_path, monkeypatch):
    code, _, err = cli("prepare", "cirr", tmp_path / "nowhere", "--cache-dir", tmp_path / "c")
    lines = err.rstrip().splitlines()
    assert code == 2 and lines[0].startswith("error: cirr not found at ")
    assert lines[0].endswith("(or set ZSCIR_DATA to the folder holding it). The expected tree:")
    assert lines[1:] == ["ROOT/", "  dev/*.png   test1/*.png", "  cirr/captions/cap.rc2.{val,test1}.json",
                         "  cirr/image_splits/split.rc2.{val,test1}.json"]
    monkeypatch.delenv("ZSCIR_DATA", raising=False)
    code, _, err = cli("prepare", "circo", "--cache-dir", tmp_path / "c")
    lines = err.rstrip().splitlines()
    assert code == 2 and "ZSCIR_DATA is not set" in lines[0] and lines[0].endswith("The expected tree:")
    assert lines[-1] == "  COCO2017_unlabeled/unlabeled2017/<12-digit id>.jpg"
    (tmp_path / "half").mkdir()
    benchfixtures._write(tmp_path / "half" / "cirr/captions/cap.rc2.val.json", [])
    code, _, err = cli("prepare", "cirr", tmp_path / "half", "--cache-dir", tmp_path / "c")
    lines = err.rstrip().splitlines()
    assert code == 2 and "lacks 1 annotation file(s): cirr/image_splits/split.rc2.val.json." in lines[0]
    assert lines[-1] == "  cirr/image_splits/split.rc2.{val,test1}.json"


def test_cirr_eval_json_names_its_runs_and_has_no_aspect_table(cli, val_only, tmp_path):
    cache = tmp_path / "c"
    assert cli("prepare", "cirr", val_only, "--cache-dir", cache)[0] == 0
    code, out, err = cli("eval", "cirr", "--method", "image", "--method", "sum", *TINY, "--cache-dir", cache, "--json")
    assert code == 0, err
    res = json.loads(out)
    assert "map@10_by_aspect" not in res and res["runs"] == {}  # untrained methods use no run
    assert set(res["results"]) == {"image", "sum"}
