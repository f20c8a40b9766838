"""The one training loop on a toy module: schedule, checkpoints, resume, partial folders, locks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from zscir_cli.core.cache import ArtifactStore
from zscir_cli.core.errors import UserError
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.training.loop import (
    CHECKPOINT,
    Dist,
    TrainSpec,
    interrupted_runs,
    load_checkpoint,
    lr_at,
    partial_path,
    read_metrics,
    save_checkpoint,
    train,
)

X = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
Y = X @ torch.randn(8, 1, generator=torch.Generator().manual_seed(1))


def _spec(epochs: int = 4, **kw) -> TrainSpec:
    config = {"toy": 1, "epochs": epochs, **kw.pop("config", {})}
    return TrainSpec(kind="toy", key=kw.pop("key", "k1"), config=config, inputs=[], seed=5, model=None,
                     description="a toy run", n_items=64, batch_size=16, epochs=epochs, lr=1e-2,
                     weight_decay=0.01, **kw)


def _toy(store: ArtifactStore, spec: TrainSpec, **kw):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.3), nn.Linear(16, 1))  # dropout: RNG must resume

    def step_fn(model, idx, _batch):
        return ((model(X[idx]) - Y[idx]) ** 2).mean(), {}

    def finalize(folder: Path) -> None:
        torch.save({k: v for k, v in net.state_dict().items()}, folder / "w.pt")

    art = train(Context(store=store), spec, net, device=torch.device("cpu"), d=Dist(), step_fn=step_fn,
                finalize=finalize, **kw)
    return art, net


def test_schedule_is_warmup_then_cosine():
    assert lr_at(0, 1.0, 4, 20) == pytest.approx(0.25)
    assert lr_at(3, 1.0, 4, 20) == pytest.approx(1.0)
    assert lr_at(4, 1.0, 4, 20) == pytest.approx(1.0)  # cosine starts at the peak
    assert lr_at(12, 1.0, 4, 20) == pytest.approx(0.5)
    assert lr_at(19, 2.0, 0, 20) == pytest.approx(1 + math.cos(math.pi * 19 / 20))


def test_checkpoint_is_one_file_replaced_atomically(tmp_path):
    save_checkpoint({"epoch": 1, "weights": {"w": torch.ones(2)}, "metrics": [{"epoch": 1}]}, tmp_path)
    save_checkpoint({"epoch": 2, "weights": {"w": torch.zeros(2)}, "metrics": [{"epoch": 1}, {"epoch": 2}]}, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]  # no temporary file left
    state = load_checkpoint(tmp_path)
    assert state["epoch"] == 2 and state["weights"]["w"].sum() == 0 and len(state["metrics"]) == 2


def test_torn_metrics_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "loss": 0.5}\n{"epoch": 2, "loss": 0.4}\n{"epoch": 3, "lo')
    assert read_metrics(path) == [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.4}]


def test_stop_then_resume_equals_uninterrupted(tmp_path):
    full, net_full = _toy(ArtifactStore(tmp_path / "a"), _spec())
    store = ArtifactStore(tmp_path / "b")
    assert _toy(store, _spec(), stop_after_epoch=2)[0] is None
    runs = interrupted_runs(store.root)
    assert [(r["kind"], r["key"], r["epoch"], r["epochs"], r["description"]) for r in runs] == \
        [("toy", "k1", 2, 4, "a toy run")]
    assert runs[0]["config"]["toy"] == 1 and runs[0]["path"] == partial_path(store.root, "toy", "k1")
    resumed, net = _toy(store, _spec(), resume=True)
    for a, b in zip(net_full.state_dict().values(), net.state_dict().values()):
        assert torch.equal(a, b)
    assert [r["loss"] for r in read_metrics(full.path / "metrics.jsonl")] == \
        [r["loss"] for r in read_metrics(resumed.path / "metrics.jsonl")]
    assert [r["epoch"] for r in read_metrics(resumed.path / "metrics.jsonl")] == [1, 2, 3, 4]
    assert interrupted_runs(store.root) == [] and resumed.manifest["final"]["epoch"] == 4


def test_resume_with_no_epoch_yet_starts_afresh(tmp_path, caplog):
    _, net_full = _toy(ArtifactStore(tmp_path / "a"), _spec())
    store = ArtifactStore(tmp_path / "b")
    folder = partial_path(store.root, "toy", "k1")
    folder.mkdir(parents=True)  # killed before the first checkpoint: a folder, no checkpoint
    (folder / f".{CHECKPOINT}.123-abc.incomplete").write_bytes(b"torn")
    assert [r["epoch"] for r in interrupted_runs(store.root)] == [0]
    with caplog.at_level("INFO", logger="zscir"):
        _, net = _toy(store, _spec(), resume=True)
    assert "had not finished an epoch: starting it afresh" in caplog.text
    for a, b in zip(net_full.state_dict().values(), net.state_dict().values()):
        assert torch.equal(a, b)
    assert not folder.exists()


def test_resume_without_a_run_names_what_differs_never_an_empty_list(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(UserError) as e:
        _toy(store, _spec(), resume=True)
    assert e.value.args[0] == "No interrupted toy run with these settings to resume."
    _toy(store, _spec(key="k2", config={"lr_tag": "other"}), stop_after_epoch=1)
    _toy(store, _spec(key="k3"), stop_after_epoch=1)  # same config, other inputs
    with pytest.raises(UserError) as e:
        _toy(store, _spec(), resume=True)
    assert "differs in lr_tag='other' (now None)" in e.value.args[0]
    assert "differs in its inputs" in e.value.args[0] and "differs in ." not in e.value.args[0]


def test_finished_checkpoint_is_completed_without_training(tmp_path):
    store = ArtifactStore(tmp_path)
    _, net_full = _toy(ArtifactStore(tmp_path / "a"), _spec())

    def failing(_module, _records):
        raise KeyboardInterrupt  # e.g. Ctrl-C in the final evaluation

    with pytest.raises(KeyboardInterrupt):
        _toy(store, _spec(), conclude=failing)
    assert store.get("toy", "k1") is None and [r["epoch"] for r in interrupted_runs(store.root)] == [4]

    def no_batches(_step):
        raise AssertionError("trained again")

    art, _ = _toy(store, _spec(), batches=no_batches, conclude=lambda m, r: {"concluded": len(r)})
    assert art.manifest["concluded"] == 4 and interrupted_runs(store.root) == []
    assert torch.equal(torch.load(art.path / "w.pt")["0.weight"], net_full.state_dict()["0.weight"])


def test_hooks_step_batches_optimizer_and_after_step(tmp_path):
    seen, clamps = [], []

    def batches(step):
        seen.append(step)
        idx = torch.arange(16) + 16 * (step % 4)
        return idx, idx

    spec = _spec(epochs=3, steps_per_epoch=2, total_steps=5, log_every=2)
    art, _ = _toy(ArtifactStore(tmp_path), spec, batches=batches, after_step=lambda m: clamps.append(1),
                    optimizer=lambda m: torch.optim.SGD(m.parameters(), lr=0.1))
    assert seen == [0, 1, 2, 3, 4] and len(clamps) == 5  # the last epoch is one step
    assert [r["step"] for r in read_metrics(art.path / "metrics.jsonl")] == [0, 2, 4]
    assert json.loads((art.path / "manifest.json").read_text())["final"]["step"] == 4
