"""Training runs killed (SIGKILL) at each point of a checkpoint write, then resumed; two identical
runs at once. Subprocesses, each killed by its own kill point (core/faults.py)."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest
from runs import Process, prepared_world, zscir
from safetensors.torch import load_file

from zscir_cli.core.cache import ArtifactStore
from zscir_cli.jobs.training.loop import interrupted_runs, read_metrics

ARGS = ["pretrain", "--model", "zscir-tiny-vit", "--steps", "6", "--steps-per-epoch", "2", "--batch-size", "8",
        "--device", "cpu", "--json"]  # 3 epochs


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return prepared_world(tmp_path_factory.mktemp("world"), train_pairs=8, val_pairs=6, cir_queries=6)


@pytest.fixture(scope="module")
def uninterrupted(world, tmp_path_factory) -> dict:
    cache = tmp_path_factory.mktemp("full") / "cache"
    shutil.copytree(world, cache)
    run = zscir(ARGS, cache)
    assert run.returncode == 0, run.stderr[-3000:]
    return load_file(json.loads(run.stdout)["checkpoint"])


@pytest.mark.slow
@pytest.mark.parametrize(("point", "epoch_left"), [
    ("checkpoint:before-replace@1", 0),  # killed before the first checkpoint: resume starts afresh
    ("checkpoint:before-replace@2", 1),  # epoch 2 written to its temporary file, not yet renamed
    ("checkpoint:after-replace@2", 2),  # epoch 2 renamed into place, nothing after
    ("train:epoch-end@2", 2),
])
def test_killed_then_resumed_equals_uninterrupted(world, uninterrupted, tmp_path, point, epoch_left):
    cache = tmp_path / "cache"
    shutil.copytree(world, cache)
    killed = zscir(ARGS, cache, env={"ZSCIR_KILL_AT": point})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert ArtifactStore(cache).list("backbone") == []
    assert [r["epoch"] for r in interrupted_runs(cache)] == [epoch_left]
    resumed = zscir([*ARGS, "--resume"], cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if epoch_left == 0:
        assert "had not finished an epoch: starting it afresh" in resumed.stderr
    else:
        assert f"after epoch {epoch_left}" in resumed.stderr
    res = json.loads(resumed.stdout)
    weights = load_file(res["checkpoint"])
    for k, v in uninterrupted.items():
        assert (v == weights[k]).all(), k
    assert [r["step"] for r in read_metrics(Path(res["checkpoint"]).parent / "metrics.jsonl")] == [0, 5]
    assert not (cache / ".partial").exists() or not any((cache / ".partial").iterdir())


@pytest.mark.slow
def test_two_identical_runs_at_once_train_once(world, uninterrupted, tmp_path):
    """The first is paused (SIGSTOP) while it holds the run's lock, until the second says it waits."""
    cache = tmp_path / "cache"
    shutil.copytree(world, cache)
    args = [*ARGS, "--cache-dir", str(cache)]
    first = Process(args, tmp_path / "first")
    deadline = time.time() + 120
    while not (cache / ".partial").is_dir() and not first.finished() and time.time() < deadline:
        time.sleep(0.02)  # its partial folder exists once it holds the lock
    first.send_signal(signal.SIGSTOP)
    try:
        second = Process(args, tmp_path / "second")
        second.wait_for("waiting for pid")  # (or it ends without waiting: then the test fails)
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait() == 0, first.err_text()[-3000:]
    assert second.wait() == 0, second.err_text()[-3000:]
    out1, out2, err2 = first.out_text(), second.out_text(), second.err_text().splitlines()
    assert any(f"waiting for pid {first.pid}" in line for line in err2)
    r1, r2 = json.loads(out1), json.loads(out2)
    assert r1["key"] == r2["key"] and r1["built"] and not r2["built"]
    metrics = read_metrics(cache / "backbone" / r1["key"] / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [0, 5]  # trained once
    weights = load_file(r2["checkpoint"])
    for k, v in uninterrupted.items():
        assert (v == weights[k]).all(), k
