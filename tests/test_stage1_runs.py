"""Stage I runs: resume equals uninterrupted, Ctrl-C, DDP with 2 processes, the CLI end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from runs import losses, one_and_two_processes, prepared_world
from safetensors.torch import load_file

from zscir_cli.core.cache import ArtifactStore
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.training.config import Stage1Config
from zscir_cli.jobs.training.stage1 import map_train
from zscir_cli.model.backbone import ModelSpec

TINY = ["--model", "zscir-tiny-vit", "--pretrained", "none"]
SPEC = ModelSpec("zscir-tiny-vit", "none")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A small prepared shapes world, copied into each test's cache."""
    return prepared_world(tmp_path_factory.mktemp("world"), train_pairs=64, val_pairs=16, cir_queries=6)


@pytest.fixture
def cache(world, tmp_path) -> Path:
    dst = tmp_path / "cache"
    shutil.copytree(world, dst)
    return dst


def _ctx(cache: Path) -> Context:
    return Context(store=ArtifactStore(cache), device="cpu", workers=0)


CFG = {"epochs": 3, "batch_size": 16, "lr": 1e-3, "seed": 3, "vsi_layers": [2, 4]}


def test_resume_after_ctrl_c_reaches_the_same_weights(cache, tmp_path, monkeypatch):
    full = map_train(_ctx(cache), SPEC, Stage1Config(**CFG))
    other = tmp_path / "other"
    shutil.copytree(cache, other, ignore=shutil.ignore_patterns("stage1"))
    from zscir_cli.jobs.training import stage1

    calls = {"n": 0}
    real = stage1.info_nce

    def interrupting(*a, **k):  # Ctrl-C in the middle of the second epoch (4 steps per epoch)
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(stage1, "info_nce", interrupting)
    with pytest.raises(KeyboardInterrupt):
        map_train(_ctx(other), SPEC, Stage1Config(**CFG))
    monkeypatch.setattr(stage1, "info_nce", real)
    store = ArtifactStore(other)
    assert store.list("stage1") == []  # no finished run, only the partial one
    partial = list((other / ".partial").iterdir())
    assert len(partial) == 1 and (partial[0] / "checkpoint.pt").is_file()
    resumed = map_train(_ctx(other), SPEC, Stage1Config(**CFG), resume=True)
    a, b = load_file(str(full.path / "weights.safetensors")), load_file(str(resumed.path / "weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] == b[k]).all(), k
    la = [json.loads(x)["loss"] for x in (full.path / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (resumed.path / "metrics.jsonl").read_text().splitlines()]
    assert la == lb and len(la) == 3
    assert not (other / ".partial" / partial[0].name).exists()


def test_resume_without_an_interrupted_run(cache):
    from zscir_cli.core.errors import UserError

    with pytest.raises(UserError, match="No interrupted stage1 run with these settings"):
        map_train(_ctx(cache), SPEC, Stage1Config(**CFG), resume=True)


def test_ddp_two_processes_match_one_process(cache, tmp_path):
    single = tmp_path / "single"
    shutil.copytree(cache, single)
    args = ["map-train", *TINY, "--epochs", "2", "--batch-size", "16", "--lr", "1e-3", "--dropout", "0",
            "--seed", "1", "--device", "cpu", "--workers", "0", "--json"]
    r1, r2 = one_and_two_processes(args, single, cache)
    run1, run2 = single / "stage1" / r1["run"], cache / "stage1" / r2["run"]
    assert r1["run"] != r2["run"]  # the number of processes is part of a run's identity
    assert losses(run2) == pytest.approx(losses(run1), rel=1e-4)
    assert json.loads((run2 / "manifest.json").read_text())["world_size"] == 2
    w1, w2 = load_file(str(run1 / "weights.safetensors")), load_file(str(run2 / "weights.safetensors"))
    for k in w1:
        assert (w1[k] - w2[k]).abs().max() < 1e-4, k


def test_map_train_cli_then_query_with_stage1(cli, cache):
    code, out, err = cli("map-train", *TINY, "--epochs", "1", "--batch-size", "16", "--cache-dir", cache,
                         "--workers", "0", "--json")
    assert code == 0, err
    run = json.loads(out)
    assert run["method"] == "stage1" and 0 <= run["val_self_r1"] <= 100 and run["epoch"] == 1
    files = {p.name for p in (cache / "stage1" / run["run"]).iterdir()}
    assert {"weights.safetensors", "config.json", "metrics.jsonl", "manifest.json"} <= files
    manifest = json.loads((cache / "stage1" / run["run"] / "manifest.json").read_text())
    assert manifest["placeholder_id"] == 259 and manifest["config"]["vsi_layers"] == [1, 2, 3, 4]
    assert run["built"] is True
    again = ("map-train", *TINY, "--epochs", "1", "--batch-size", "16", "--cache-dir", cache, "--workers", "0",
             "--json")
    code, out, err = cli(*again)  # a rerun says it found the run, and trains nothing
    assert code == 0 and json.loads(out)["built"] is False and json.loads(out)["run"] == run["run"]
    assert f"already trained: stage1 run {run['run']}" in err and "--force" in err
    code, out, err = cli(*again, "--force")
    assert code == 0 and json.loads(out)["built"] is True and json.loads(out)["run"] == run["run"]
    assert "already trained" not in err
    code, out, err = cli("index", "shapes", *TINY, "--cache-dir", cache, "--workers", "0")
    assert code == 0, err
    index = out.strip()
    ids = json.loads((cache / "index" / index / "ids.json").read_text())
    code, out, err = cli("query", ids[0], "make the circle red", "--method", "stage1", "--index", index,
                         "--json", "-k", "5", "--cache-dir", cache)
    assert code == 0, err
    res = json.loads(out)
    assert res["run"] == run["run"] and len(res["results"]) == 5 and ids[0] not in [r["id"] for r in res["results"]]
    code, _, err = cli("query", ids[0], "make it red", "--method", "pic2word", "--index", index, "--cache-dir", cache)
    assert code == 2 and "No pic2word run" in err and "--no-vsi --no-sta" in err


def test_map_train_bad_input(cli, cache):
    code, _, err = cli("map-train", *TINY, "--vsi-layers", "2,9", "--batch-size", "16", "--cache-dir", cache)
    assert code == 2 and "outside the text encoder's depth (blocks 1..4)" in err
    assert "Choose --vsi-layers between 1 and 4" in err  # the job names the flag
    code, _, err = cli("map-train", *TINY, "--data", "nothing", "--cache-dir", cache)
    assert code == 2 and "No prepared data set 'nothing'" in err
    code, _, err = cli("map-train", *TINY, "--batch-size", "16", "--resume", "--cache-dir", cache)
    assert code == 2 and "No interrupted stage1 run" in err
    code, _, err = cli("map-train", *TINY, "--cache-dir", cache)  # 64 images < one batch of 256
    assert code == 2 and "fewer than one batch" in err
    code, _, err = cli("map-train", "--cache-dir", cache)  # the paper's default backbone, offline
    assert code == 2 and "ViT-L-14" in err and "zscir demo" in err


def test_imagefolder_with_and_without_captions(cli, tmp_path, image_folder):
    cache = tmp_path / "c"
    rows = [{"file_name": p.relative_to(image_folder).as_posix(), "text": f"picture number {i}"}
            for i, p in enumerate(sorted(image_folder.rglob("*.*")))]
    (image_folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code, out, err = cli("prepare", "imagefolder", image_folder, "--name", "mine", "--cache-dir", cache, "--json")
    assert code == 0, err
    assert json.loads(out)["images"] == 10 and json.loads(out)["captioned"] == 10
    code, out, err = cli("map-train", *TINY, "--data", "mine", "--epochs", "1", "--batch-size", "4",
                         "--cache-dir", cache, "--workers", "0", "--json")
    assert code == 0, err
    assert "sta" in json.loads(out)
    (image_folder / "metadata.jsonl").unlink()
    code, out, err = cli("prepare", "imagefolder", image_folder, "--name", "bare", "--cache-dir", cache, "--json")
    assert code == 0 and json.loads(out)["captioned"] == 0 and "without soft text alignment" not in out
    code, out, err = cli("map-train", *TINY, "--data", "bare", "--epochs", "1", "--batch-size", "4",
                         "--cache-dir", cache, "--workers", "0", "--json")
    assert code == 0, err
    assert "soft text alignment is off" in err and "sta" not in json.loads(out)


def test_imagefolder_bad_metadata(cli, tmp_path, image_folder):
    (image_folder / "metadata.jsonl").write_text('{"file_name": "a/img1.png", "text": "ok"}\n{"file_name": \n')
    code, _, err = cli("prepare", "imagefolder", image_folder, "--cache-dir", tmp_path / "c")
    assert code == 2 and "metadata.jsonl:2: not valid JSON" in err
    (image_folder / "metadata.jsonl").write_text('{"file_name": "nope.png", "text": "x"}\n')
    code, _, err = cli("prepare", "imagefolder", image_folder, "--cache-dir", tmp_path / "c")
    assert code == 2 and "names 1 image(s) that do not exist: nope.png" in err
    (image_folder / "metadata.jsonl").unlink()
    (image_folder / "metadata.csv").write_text("name,text\na.png,x\n")
    code, _, err = cli("prepare", "imagefolder", image_folder, "--cache-dir", tmp_path / "c")
    assert code == 2 and "no 'file_name' column" in err
