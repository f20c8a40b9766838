"""Stage II's validation on a shapes world's CIR val split: one record per epoch in metrics.jsonl,
the numbers `zscir eval` gives the finished run, and weights bit-identical to a run without it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

TINY = ["--model", "zscir-tiny-vit", "--pretrained", "none"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A small world with a Stage I run of the tiny model and a file of scene triplets."""
    from zscir_cli.cli.app import run

    root = tmp_path_factory.mktemp("s2val")
    cache = root / "cache"
    assert run(["prepare", "shapes", "--train-pairs", "300", "--val-pairs", "8", "--queries", "12",
                "--cache-dir", str(cache)]) == 0
    assert run(["map-train", *TINY, "--epochs", "1", "--batch-size", "32", "--workers", "0",
                "--cache-dir", str(cache)]) == 0
    assert run(["synth", "--data", "shapes", "--mode", "scene", "--out", str(root / "t.jsonl"),
                "--max-triplets", "96", "--cache-dir", str(cache)]) == 0
    return root


def _train(cache: Path, triplets: Path, validate: bool):
    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.jobs.context import Context
    from zscir_cli.jobs.training.config import Stage2Config
    from zscir_cli.jobs.training.stage2 import compose_train
    from zscir_cli.model.backbone import ModelSpec

    cfg = Stage2Config(triplets=str(triplets), epochs=3, batch_size=32, lr=1e-2, hard_negatives=3, seed=1,
                       validate=validate)
    return compose_train(Context(store=ArtifactStore(cache), workers=0), ModelSpec("zscir-tiny-vit", "none"), cfg,
                         force=True)


@pytest.mark.slow
def test_stage2_validates_every_epoch_without_changing_the_weights(cli, trained, tmp_path):
    from safetensors.torch import load_file

    from zscir_cli.jobs.training.loop import read_metrics

    cache = tmp_path / "cache"
    shutil.copytree(trained / "cache", cache)
    run = _train(cache, trained / "t.jsonl", validate=True)
    with_val = load_file(str(run.path / "adapters.safetensors"))
    records = read_metrics(run.path / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all(0 <= r["val_R@1"] <= 100 and 0 <= r["val_mAP@10"] <= 100 for r in records)
    assert len({(r["val_R@1"], r["val_mAP@10"]) for r in records}) > 1  # it follows the training
    # nothing cached for it: the val gallery is encoded in memory
    assert not (cache / "index").exists()

    # the last epoch's numbers are those of 'zscir eval' on the finished run (same protocol)
    code, out, err = cli("eval", "shapes", "--split", "val", "--method", "tscir", "--run", run.key, *TINY,
                         "--no-oracle", "--cache-dir", cache, "--json")
    assert code == 0, err
    tscir = json.loads(out)["results"]["tscir"]
    assert records[-1]["val_R@1"] == pytest.approx(tscir["R@1"])
    assert records[-1]["val_mAP@10"] == pytest.approx(tscir["mAP@10"], abs=1e-6)

    # neither encoding the val gallery (its loader draws a seed) nor validating moves the RNG
    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.jobs.context import Context
    from zscir_cli.jobs.retrieval.methods import load_method
    from zscir_cli.jobs.training.stage2 import Stage2Net
    from zscir_cli.jobs.training.validation import ShapesValidation
    from zscir_cli.model.backbone import ModelSpec, load_backbone

    ctx = Context(store=ArtifactStore(cache), workers=0)
    backbone = load_backbone(ModelSpec("zscir-tiny-vit", "none"))
    method = load_method(ctx, "tscir", backbone, run.key)
    dataset = ctx.store.get("dataset", json.loads((trained / "t.jsonl").read_text().splitlines()[0])["dataset"])
    torch.manual_seed(123)
    state = torch.get_rng_state()
    val = ShapesValidation.open(ctx, backbone, dataset, method.grid)
    got = val(Stage2Net(method.mapper, method.adapters, None, False).train())
    assert torch.equal(torch.get_rng_state(), state)
    assert got == {k: v for k, v in records[-1].items() if k.startswith("val_")}
    edits = {k for k in got if k.startswith("val_R@1_")}
    assert edits == {"val_R@1_add", "val_R@1_background", "val_R@1_colour", "val_R@1_remove", "val_R@1_shape",
                     "val_R@1_size"}
    by_edit = tscir["by_edit_R@1"]
    assert all(records[-1][f"val_R@1_{e}"] == pytest.approx(by_edit[e]) for e in by_edit)

    again = _train(cache, trained / "t.jsonl", validate=False)  # the same run key, trained again
    assert again.key == run.key
    plain = load_file(str(again.path / "adapters.safetensors"))
    assert plain.keys() == with_val.keys() and all(torch.equal(plain[k], with_val[k]) for k in plain)
    assert any(plain[k].abs().sum() > 0 for k in plain if k.endswith("up.weight"))  # it did learn
    assert all("val_R@1" not in r for r in read_metrics(again.path / "metrics.jsonl"))


def test_no_validation_without_a_shapes_val_split(tmp_path):
    from zscir_cli.jobs.training.validation import ShapesValidation

    class Art:
        def __init__(self, manifest):
            self.manifest = manifest

    assert ShapesValidation.open(None, None, None, None) is None
    assert ShapesValidation.open(None, None, Art({"name": "mine", "splits": {"pairs": ["train"]}}), None) is None
    assert ShapesValidation.open(None, None, Art({"name": "shapes", "splits": {"cir": ["test"]}}), None) is None
