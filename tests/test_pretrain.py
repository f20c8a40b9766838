"""`zscir pretrain` on the one training loop: resume, torchrun, --force, evaluation apart, --data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from runs import one_and_two_processes, prepared_world
from safetensors.torch import load_file, save_file

from zscir_cli.core.cache import ArtifactStore
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.training.ahead import StepBatches
from zscir_cli.jobs.training.loop import interrupted_runs, read_metrics

CFG = {"steps": 6, "batch_size": 8, "steps_per_epoch": 2, "seed": 0}  # 3 epochs of 2 steps


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return prepared_world(tmp_path_factory.mktemp("world"), train_pairs=8, val_pairs=6, cir_queries=6)


def _cache(world: Path, dst: Path) -> Path:
    shutil.copytree(world, dst)
    return dst


def _ctx(cache: Path) -> Context:
    return Context(store=ArtifactStore(cache), device="cpu", workers=0)


def _weights(art) -> dict:
    return load_file(str(art.path / "open_clip_model.safetensors"))


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k, v in a.items():
        assert (v == b[k]).all(), k


@pytest.fixture(scope="module")
def full(world, tmp_path_factory):
    """The uninterrupted run that the stopped and failed ones are held against."""
    from zscir_cli.jobs.training.config import PretrainConfig
    from zscir_cli.jobs.training.pretrain import pretrain

    art, built = pretrain(_ctx(_cache(world, tmp_path_factory.mktemp("full") / "a")), PretrainConfig(**CFG))
    assert built and art.manifest["eval"]["val_images"] == 6
    return art


@pytest.mark.slow
def test_pretrain_stopped_then_resumed_equals_uninterrupted(world, full, tmp_path):
    from zscir_cli.jobs.training.config import PretrainConfig
    from zscir_cli.jobs.training.pretrain import pretrain

    assert [r["step"] for r in read_metrics(full.path / "metrics.jsonl")] == [0, 5]
    cache = _cache(world, tmp_path / "b")
    art, built = pretrain(_ctx(cache), PretrainConfig(**CFG), stop_after_epoch=1)  # Ctrl-C after epoch 1
    assert art is None and not built and ArtifactStore(cache).list("backbone") == []
    assert [(r["kind"], r["epoch"], r["epochs"]) for r in interrupted_runs(cache)] == [("backbone", 1, 3)]
    resumed, built = pretrain(_ctx(cache), PretrainConfig(**CFG), resume=True)
    assert built and resumed.key == full.key
    _same(_weights(full), _weights(resumed))
    assert read_metrics(full.path / "metrics.jsonl")[-1]["loss"] == read_metrics(resumed.path / "metrics.jsonl")[-1]["loss"]
    assert interrupted_runs(cache) == []
    again, built = pretrain(_ctx(cache), PretrainConfig(**CFG))
    assert not built and again.key == full.key


def _square(g: int) -> tuple[int, int]:
    return g, g * g


def test_step_batches_are_the_steps_asked_for_in_any_order():
    import torch

    rng = torch.get_rng_state()
    ahead = StepBatches(_square, total=10, workers=2)
    assert [ahead(g) for g in range(3)] == [(0, 0), (1, 1), (2, 4)]  # as made: tuples stay tuples
    assert [ahead(7), ahead(8)] == [(7, 49), (8, 64)]  # asked out of order (a resumed run): made again from 7
    assert ahead.running
    assert ahead(9) == (9, 81) and not ahead.running  # the last step: the workers stop
    assert ahead(2) == (2, 4)
    ahead.close()
    assert not ahead.running
    assert torch.equal(torch.get_rng_state(), rng)  # the training's RNG is not drawn from
    assert [StepBatches(_square, total=10, workers=0)(g) for g in (5, 1)] == [(5, 25), (1, 1)]


@pytest.mark.slow
def test_render_workers_change_no_weight(world, full, tmp_path):
    """Batches rendered by worker processes, stopped and resumed with another number of them:
    the weights of the run rendered in the training process."""
    from zscir_cli.jobs.training.config import PretrainConfig
    from zscir_cli.jobs.training.pretrain import pretrain

    cache = _cache(world, tmp_path / "w")
    stopped, _ = pretrain(Context(store=ArtifactStore(cache), device="cpu", workers=1), PretrainConfig(**CFG),
                          stop_after_epoch=1)
    assert stopped is None
    art, built = pretrain(Context(store=ArtifactStore(cache), device="cpu", workers=2), PretrainConfig(**CFG),
                          resume=True)
    assert built and art.key == full.key
    _same(_weights(full), _weights(art))
    assert [r["loss"] for r in read_metrics(art.path / "metrics.jsonl")] == \
        [r["loss"] for r in read_metrics(full.path / "metrics.jsonl")]


@pytest.mark.slow
def test_failed_evaluation_keeps_the_training(world, full, tmp_path, monkeypatch):
    from zscir_cli.jobs.training import pretrain as P

    cache = _cache(world, tmp_path / "b")
    real = P.evaluate_backbone

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(P, "evaluate_backbone", interrupted)
    with pytest.raises(KeyboardInterrupt):
        P.pretrain(_ctx(cache), P.PretrainConfig(**CFG))
    assert ArtifactStore(cache).list("backbone") == []
    assert [r["epoch"] for r in interrupted_runs(cache)] == [3]  # the finished checkpoint stays
    monkeypatch.setattr(P, "evaluate_backbone", real)

    def no_training(*a, **k):
        raise AssertionError("rendered a batch: trained again")

    monkeypatch.setattr(P, "_batch", no_training)
    art, built = P.pretrain(_ctx(cache), P.PretrainConfig(**CFG))  # only evaluates
    assert built and art.manifest["eval"] == {**full.manifest["eval"], "train_seconds": art.manifest["eval"]["train_seconds"]}
    _same(_weights(full), _weights(art))
    assert json.loads((art.path / "eval.json").read_text()) == art.manifest["eval"]


@pytest.mark.slow
def test_force_replaces_the_artifact(world, tmp_path, cli):
    cache = _cache(world, tmp_path / "c")
    args = ["pretrain", "--steps", "2", "--batch-size", "4", "--cache-dir", cache, "--json", "--device", "cpu"]
    code, out, err = cli(*args)
    assert code == 0, err
    first = json.loads(out)
    assert first["built"] is True and first["trained"] is True
    weights = Path(first["checkpoint"])
    trained = load_file(str(weights))
    save_file({k: v * 0 for k, v in trained.items()}, str(weights))  # a stale or damaged artifact
    code, out, err = cli(*args)
    assert code == 0 and json.loads(out)["built"] is False  # found in the cache, as it is
    code, out, err = cli(*args, "--force")
    res = json.loads(out)
    assert code == 0 and res["built"] is True and res["key"] == first["key"]
    _same(trained, load_file(res["checkpoint"]))  # retrained, and the new weights are what is kept
    assert len(list((cache / "backbone").iterdir())) == 1


def test_pretrain_needs_the_shapes_world(cli, tmp_path, image_folder):
    cache = tmp_path / "c"
    code, _, err = cli("prepare", "imagefolder", image_folder, "--name", "mine", "--cache-dir", cache)
    assert code == 0, err
    code, _, err = cli("pretrain", "--data", "mine", "--steps", "1", "--cache-dir", cache)
    assert code == 2 and "needs the shapes world" in err and "zscir prepare shapes" in err
    assert not (cache / "backbone").exists() and not (cache / ".partial").exists()


@pytest.mark.slow
def test_pretrain_two_processes_match_one(world, tmp_path):
    """zscir-tiny-vit: LayerNorm only. (A ResNet tower's BatchNorm normalises each process's half
    batch with its own statistics, so it would not match one process.)"""
    args = ["pretrain", "--model", "zscir-tiny-vit", "--steps", "4", "--batch-size", "8", "--steps-per-epoch", "2",
            "--device", "cpu", "--json"]
    single, ddp = _cache(world, tmp_path / "one"), _cache(world, tmp_path / "two")
    r1, r2 = one_and_two_processes(args, single, ddp)
    assert r1["key"] != r2["key"] and r2["built"]  # the number of processes is part of the identity
    run1, run2 = single / "backbone" / r1["key"], ddp / "backbone" / r2["key"]
    assert [r["loss"] for r in read_metrics(run2 / "metrics.jsonl")] == \
        pytest.approx([r["loss"] for r in read_metrics(run1 / "metrics.jsonl")], rel=1e-4)
    assert json.loads((run2 / "manifest.json").read_text())["world_size"] == 2
    w1, w2 = load_file(str(run1 / "open_clip_model.safetensors")), load_file(str(run2 / "open_clip_model.safetensors"))
    for k in w1:
        assert (w1[k] - w2[k]).abs().max() < 1e-4, k
