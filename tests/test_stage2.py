"""Stage II: adapters start as the identity, mining never returns a false negative, the CLI end
to end (synth, compose-train, query) on a tiny model, and its bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zscir_cli.core.digests import file_sha256
from zscir_cli.jobs.training.composing import caption_ids, likely_false_negatives, mine_hard_negatives
from zscir_cli.model.adapters import AdapterConfig, ComposingAdapters
from zscir_cli.model.backbone import ModelSpec, load_backbone
from zscir_cli.model.mapping import Mapper, MappingConfig
from zscir_cli.model.text import TextEncoder, placeholder_token_id

TINY = ["--model", "zscir-tiny-vit", "--pretrained", "none"]


def test_zero_initialised_adapters_leave_the_stage1_encoder_unchanged():
    bb = load_backbone(ModelSpec("zscir-tiny-vit", "none"))
    enc = TextEncoder(bb.model, placeholder_token_id(bb.tokenizer))
    mapper = Mapper(MappingConfig(image_dim=32, text_width=64, text_depth=4, token_dim=32,
                                  placeholder_id=enc.placeholder_id, vsi_layers=[2, 4], vsi_heads=2)).eval()
    with torch.no_grad():
        for blk in mapper.vsi.values():
            blk.gate.fill_(0.7)  # a trained Stage I: gates open
    adapters = ComposingAdapters(AdapterConfig(64, 4, dim=8))
    assert adapters.cfg.layers == [1, 2, 3, 4]
    tokens = bb.tokenizer(["a photo of $ that is red", "a photo of $ that has a star"])
    v, vis = torch.nn.functional.normalize(torch.randn(2, 32), dim=-1), torch.randn(2, 17, 32)
    with torch.no_grad():
        base = mapper.encode(enc, tokens, v, vis)
        assert torch.equal(mapper.encode(enc, tokens, v, vis, extra_hooks=adapters.hooks()), base)
        adapters.blocks["3"].up.weight.normal_()
        assert not torch.allclose(mapper.encode(enc, tokens, v, vis, extra_hooks=adapters.hooks()), base)
        # layer 0: on the token embeddings, before the first block; zero-initialised, it changes nothing
        embedding = ComposingAdapters(AdapterConfig(64, 4, dim=8, layers=[0]))
        assert torch.equal(mapper.encode(enc, tokens, v, vis, extra_hooks=embedding.hooks()), base)
        seen = []
        embedding.blocks["0"].up.bias.fill_(0.5)
        embedding.blocks["0"].register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].shape))
        moved = mapper.encode(enc, tokens, v, vis, extra_hooks=embedding.hooks())
        assert not torch.allclose(moved, base) and seen == [(2, tokens.argmax(-1).max() + 1, 64)]


def test_compose_train_puts_an_adapter_on_the_token_embeddings_unless_told_not_to():
    from zscir_cli.jobs.training.config import Stage2Config
    from zscir_cli.jobs.training.stage2 import build_adapters

    enc = TextEncoder(load_backbone(ModelSpec("zscir-tiny-vit", "none")).model, 1)
    assert build_adapters(enc, Stage2Config(triplets="")).cfg.layers == [0, 1, 2, 3, 4]
    assert build_adapters(enc, Stage2Config(triplets="", embedding_adapter=False)).cfg.layers == [1, 2, 3, 4]
    assert build_adapters(enc, Stage2Config(triplets="", adapter_layers=[2], embedding_adapter=False)).cfg.layers == [2]
    assert build_adapters(enc, Stage2Config(triplets="", embedding_positions="words")).cfg.embedding_positions == "words"


def test_embedding_adapter_positions_name_a_run_only_when_not_all():
    from zscir_cli.jobs.training.config import Stage2Config
    from zscir_cli.jobs.training.stage2 import key_settings

    default = key_settings(Stage2Config(triplets="t.jsonl"), [0, 1, 2])
    assert "embedding_positions" not in default and default["adapter_layers"] == [0, 1, 2]  # keys as before
    words = key_settings(Stage2Config(triplets="t.jsonl", embedding_positions="words"), [0, 1, 2])
    assert words == {**default, "embedding_positions": "words"}
    assert "embedding_positions" not in key_settings(Stage2Config(triplets="t.jsonl", embedding_adapter=False), [1, 2])


def test_a_row_names_the_positions_its_embedding_adapter_changes():
    from types import SimpleNamespace

    from zscir_cli.jobs.retrieval.methods import describe

    def row(**config):
        run = SimpleNamespace(manifest={"config": {"triplets": 5000, "hard_negatives": 8, "epochs": 10, **config},
                                        "triplet_recipe": "template/content"})
        return describe(SimpleNamespace(released=None, run=run, name="tscir"))

    base = "Stage II: 5000 template/content triplets, adapters after 2 blocks{}, 8 hard negatives, 10 epochs"
    assert row(adapter_layers=[0, 1, 2]) == base.format(" + embeddings")  # a run made before positions existed
    assert row(adapter_layers=[0, 1, 2], embedding_positions="pseudo-word") == \
        base.format(" + the pseudo-word's embedding")
    assert row(adapter_layers=[0, 1, 2], embedding_positions="words") == base.format(" + embeddings but the pseudo-word's")
    assert row(adapter_layers=[1, 2]) == base.format("")


def test_the_embedding_adapter_changes_only_the_positions_it_is_told_to(tmp_path):
    x = torch.randn(2, 5, 64)
    mask = torch.tensor([[False, True, False, False, False], [False, False, False, True, False]])
    changed = {}
    for where in ("all", "pseudo-word", "words"):
        adapters = ComposingAdapters(AdapterConfig(64, 4, dim=8, layers=[0, 2], embedding_positions=where))
        with torch.no_grad():
            adapters.blocks["0"].up.bias.fill_(0.5)
            adapters.blocks["2"].up.bias.fill_(0.5)
            hooks = adapters.hooks()
            changed[where] = (hooks[0][0](x, None, mask) != x).any(-1)
            assert (hooks[2][0](x, None, mask) != x).any(-1).all()  # a block adapter changes every position
        adapters.save(tmp_path)
        again = ComposingAdapters.load(tmp_path)
        assert again.cfg.embedding_positions == where
        assert torch.equal(again.hooks()[0][0](x, None, mask), hooks[0][0](x, None, mask))
    assert changed["all"].all()
    assert torch.equal(changed["pseudo-word"], mask) and torch.equal(changed["words"], ~mask)
    # adapters saved before positions could be chosen load as changing every position
    config = json.loads((tmp_path / "adapters.json").read_text())
    del config["embedding_positions"]
    (tmp_path / "adapters.json").write_text(json.dumps(config))
    assert ComposingAdapters.load(tmp_path).cfg.embedding_positions == "all"
    with pytest.raises(ValueError, match="Unknown embedding adapter positions 'pseudo'"):
        ComposingAdapters(AdapterConfig(64, 4, 8, [0], "pseudo"))


def test_adapter_layers_outside_the_depth():
    with pytest.raises(ValueError, match=r"Adapter layers 7 outside the text encoder.s depth "
                                         r"\(blocks 1..4; 0: on the token embeddings\)"):
        ComposingAdapters(AdapterConfig(64, 4, 8, [1, 7]))


def test_mining_never_returns_the_target_nor_its_caption():
    rng = np.random.default_rng(0)
    feats = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(12, 8)).astype(np.float32)), dim=-1)
    pool = np.arange(12)
    captions = [f"c{i}" for i in range(12)]
    captions[5] = captions[3]  # image 5 looks like the target of query 0 by its caption
    ref, tgt = np.array([0, 7]), np.array([3, 9])
    # query 0 sits on its target, query 1 between its target and image 2
    q = torch.stack([feats[3] + 0.9 * feats[5], feats[9] + feats[2]])
    out = mine_hard_negatives(q, pool, feats, ref, tgt, caption_ids(captions), k=4)
    assert out.shape == (2, 4)
    assert not {3, 5, 0} & set(out[0].tolist())
    assert not {9, 7} & set(out[1].tolist()) and out[1][0] == 2
    scores = (q[1] @ feats.T).numpy()
    allowed = [i for i in np.argsort(-scores) if i not in (9, 7)]
    assert out[1].tolist() == allowed[:4]  # the nearest allowed, nearest first
    tiny = mine_hard_negatives(q[:1], np.array([0, 3, 5]), feats[[0, 3, 5]], ref[:1], tgt[:1], caption_ids(captions),
                               k=3)
    assert tiny.tolist() == [[0, 0, 0]]  # nothing allowed: the reference fills in


def test_near_duplicate_captions_are_false_negatives_too():
    caps = ["a red circle on gray", "a gray background with a red circle", "a blue circle on gray", ""]
    feats = torch.tensor([[1.0, 0.0], [0.995, 0.0999], [0.6, 0.8], [1.0, 0.0]])  # row 1 ~ row 0; row 3 unknown
    ids = caption_ids(caps)
    assert ids[3] != ids[0] and len(set(ids.tolist())) == 4
    rows, tgt = np.arange(4), np.array([0])
    exact = likely_false_negatives(ids, None, rows, tgt, 0.98)
    assert exact.tolist() == [[True, False, False, False]]
    near = likely_false_negatives(ids, feats, rows, tgt, 0.98)
    assert near.tolist() == [[True, True, False, True]]  # row 3's caption is unknown but its feature matches
    off = likely_false_negatives(ids, feats, rows, tgt, 1.5)
    assert off.tolist() == exact.tolist()


def test_no_hard_negatives_is_hard_negatives_0(cli, tmp_path, monkeypatch):
    from zscir_cli.jobs.training import stage2

    seen = []
    monkeypatch.setattr(stage2, "compose_train", lambda ctx, spec, cfg, resume=False, force=False: seen.append(cfg))
    args = ["compose-train", "--triplets", tmp_path / "t.jsonl", *TINY, "--cache-dir", tmp_path]
    assert cli(*args)[0] == 0 and seen[-1].hard_negatives == 8
    assert cli(*args, "--hard-negatives", "0")[0] == 0 and seen[-1].hard_negatives == 0
    assert cli(*args, "--no-hard-negatives")[0] == 0 and seen[-1].hard_negatives == 0
    assert not hasattr(seen[-1], "use_hard_negatives")
    code, _, err = cli(*args, "--no-hard-negatives", "--hard-negatives", "3")
    assert code == 2 and "--no-hard-negatives contradicts --hard-negatives 3" in err and len(seen) == 3


def test_compose_train_reads_images_outside_the_file_folder_only_when_allowed(cli, tmp_path):
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for name in ("a", "b"):
        Image.new("RGB", (8, 8)).save(tmp_path / "imgs" / f"{name}.png")
    (tmp_path / "sub").mkdir()
    trip = tmp_path / "sub" / "t.jsonl"
    trip.write_text(json.dumps({"reference": "../imgs/a.png", "target": "../imgs/b.png", "modification": "x"}) + "\n")
    args = ["compose-train", "--triplets", trip, *TINY, "--cache-dir", tmp_path / "cache"]
    code, _, err = cli(*args)
    assert code == 2 and "lies outside the triplet file's folder" in err and "--allow-outside-paths" in err
    code, _, err = cli(*args, "--allow-outside-paths")  # read; then there is no Stage I run to compose
    assert code == 2 and "No stage1 run (Stage I)" in err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A small world with a Stage I run of the tiny model, shared by the CLI tests below."""
    from zscir_cli.cli.app import run

    root = tmp_path_factory.mktemp("s2")
    assert run(["prepare", "shapes", "--train-pairs", "400", "--val-pairs", "16", "--queries", "12",
                "--cache-dir", str(root)]) == 0
    assert run(["map-train", *TINY, "--epochs", "1", "--batch-size", "32", "--workers", "0",
                "--cache-dir", str(root)]) == 0
    return root


@pytest.fixture
def cache(trained, tmp_path) -> Path:
    dst = tmp_path / "cache"
    shutil.copytree(trained, dst)
    return dst


def test_synth_compose_train_and_query_end_to_end(cli, cache, tmp_path):
    scene, tmpl = tmp_path / "scene.jsonl", tmp_path / "template.jsonl"
    code, out, err = cli("synth", "--data", "shapes", "--mode", "scene", "--out", scene, "--max-triplets", "300",
                         "--cache-dir", cache, "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["triplets"] == len(scene.read_text().splitlines()) > 50
    row = json.loads(scene.read_text().splitlines()[0])
    assert {"reference", "target", "modification", "reference_caption", "target_caption", "edit_type", "old",
            "new", "score", "source", "dataset"} <= set(row)
    code, out, err = cli("synth", "--data", "shapes", "--out", tmpl, "--cache-dir", cache, *TINY)
    assert code == 0, err
    assert "edit type" in out and "rejected because" in out and "total" in out
    code, out, err = cli("compose-train", "--triplets", scene, *TINY, "--epochs", "2", "--batch-size", "32",
                         "--hard-negatives", "4", "--cache-dir", cache, "--workers", "0", "--json")
    assert code == 0, err
    res = json.loads(out)
    run_dir = cache / "stage2" / res["run"]
    files = {p.name for p in run_dir.iterdir()}
    assert {"adapters.safetensors", "adapters.json", "metrics.jsonl"} <= files
    # the frozen Stage I mapper is not copied: the run names its Stage I run instead
    assert not {"weights.safetensors", "config.json"} & files
    stage1_weights = cache / "stage1" / res["stage1_run"] / "weights.safetensors"
    assert sum(p.stat().st_size for p in run_dir.iterdir()) < stage1_weights.stat().st_size
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(0 <= m["hit@1"] <= 1 for m in metrics)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["hard_negatives"] == 4 and manifest["stage1_run"] == res["stage1_run"]
    assert manifest["triplets_file"] == {"path": str(scene), "sha256": file_sha256(scene)}  # the path as given
    assert manifest["triplet_recipe"] == "scene"
    code, out, err = cli("index", "shapes", *TINY, "--cache-dir", cache, "--workers", "0")
    assert code == 0, err
    index = out.strip()
    ids = json.loads((cache / "index" / index / "ids.json").read_text())
    code, out, err = cli("query", ids[0], "make the circle blue", "--index", index, "--json", "--cache-dir", cache)
    assert code == 0, err  # tscir is the default method
    q = json.loads(out)
    assert q["method"] == "tscir" and q["run"] == res["run"] and len(q["results"]) == 10


def test_compose_train_bad_input(cli, cache, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"reference": "train-000001", "target": "train-000002", "modification": "x", "dataset": "k"}\n'
                   '{"reference": 3}\n')
    code, _, err = cli("compose-train", "--triplets", bad, *TINY, "--cache-dir", cache)
    assert code == 2 and "bad.jsonl:2: missing or empty reference, target, modification" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    code, _, err = cli("compose-train", "--triplets", empty, *TINY, "--cache-dir", cache)
    assert code == 2 and "holds no usable triplet" in err
    good = tmp_path / "t.jsonl"
    code, _, _ = cli("synth", "--data", "shapes", "--mode", "scene", "--out", good, "--cache-dir", cache)
    assert code == 0
    stage1 = next((cache / "stage1").iterdir()).name
    code, _, err = cli("compose-train", "--triplets", good, "--model", "zscir-tiny-rn", "--pretrained", "none",
                       "--stage1", stage1, "--cache-dir", cache)
    assert code == 2 and "stage1 run" in err and "trained on another backbone" in err
    code, _, err = cli("compose-train", "--triplets", good, "--model", "zscir-tiny-rn", "--pretrained", "none",
                       "--cache-dir", cache)
    assert code == 2 and "No stage1 run (Stage I) trained on zscir-tiny-rn" in err
    code, _, err = cli("compose-train", "--triplets", good, *TINY, "--adapter-layers", "1,7", "--batch-size", "16",
                       "--cache-dir", cache, "--workers", "0")
    assert code == 2 and "Adapter layers 7 outside the text encoder's depth (blocks 1..4; 0: on the token" in err
    assert "Choose --adapter-layers between 0 and 4" in err
    # refused before the triplet file is read (it does not exist)
    code, _, err = cli("compose-train", "--triplets", tmp_path / "none.jsonl", *TINY, "--embedding-adapter-on",
                       "pseudo", "--cache-dir", cache)
    assert code == 2 and "Unknown --embedding-adapter-on 'pseudo'. Use all, pseudo-word or words." in err
    code, _, err = cli("compose-train", "--triplets", tmp_path / "none.jsonl", *TINY, "--embedding-adapter-on",
                       "words", "--no-embedding-adapter", "--cache-dir", cache)
    assert code == 2 and "--embedding-adapter-on words contradicts --no-embedding-adapter" in err
    code, _, err = cli("synth", "--captions", tmp_path / "none.csv", "--out", good, "--cache-dir", cache)
    assert code == 2 and "Captions file not found" in err
    code, _, err = cli("synth", "--out", good, "--cache-dir", cache)
    assert code == 2 and "exactly one of --data and --captions" in err
    code, _, err = cli("synth", "--data", "shapes", "--match", "exact", "--out", good, "--cache-dir", cache)
    assert code == 2 and "Unknown --match 'exact'" in err and "words or content" in err
    # a hand-written file without captions cannot aim at its targets' captions
    for name in ("r.png", "t.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    bare = tmp_path / "bare.jsonl"
    bare.write_text('{"reference": "r.png", "target": "t.png", "modification": "make it red"}\n')
    code, _, err = cli("compose-train", "--triplets", bare, *TINY, "--caption-weight", "1", "--cache-dir", cache)
    assert code == 2 and "--caption-weight 1.0 needs a caption for every triplet image; 2 of 2 have none" in err




def _scene_triplets(cli, cache: Path, tmp_path: Path, n: int) -> tuple[Path, Path]:
    """A scene-triplet file for the cache's world, and a copy of the cache to train a twin run in."""
    trip = tmp_path / "t.jsonl"
    assert cli("synth", "--data", "shapes", "--mode", "scene", "--out", trip, "--max-triplets", str(n),
               "--cache-dir", cache)[0] == 0
    twin = tmp_path / "twin"
    shutil.copytree(cache, twin)
    return trip, twin


@pytest.mark.slow
def test_tscir_takes_the_mapper_of_its_stage1_run_unless_tuned(cli, cache, tmp_path):
    from safetensors.torch import load_file

    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.core.errors import UserError
    from zscir_cli.jobs.context import Context
    from zscir_cli.jobs.retrieval.methods import load_method
    from zscir_cli.jobs.training.config import Stage2Config
    from zscir_cli.jobs.training.stage2 import compose_train

    trip = tmp_path / "t.jsonl"
    assert cli("synth", "--data", "shapes", "--mode", "scene", "--out", trip, "--max-triplets", "64",
               "--cache-dir", cache)[0] == 0
    spec = ModelSpec("zscir-tiny-vit", "none")
    ctx = Context(store=ArtifactStore(cache), workers=0)
    cfg = Stage2Config(triplets=str(trip), epochs=1, batch_size=32, lr=1e-2, hard_negatives=2)
    frozen = compose_train(ctx, spec, cfg)
    tuned = compose_train(ctx, spec, Stage2Config(**{**cfg.__dict__, "tune_stage1": True}))
    s1 = ctx.store.get("stage1", frozen.manifest["stage1_run"])
    s1_weights = s1.path / "weights.safetensors"
    assert not (frozen.path / "weights.safetensors").exists() and not frozen.manifest["stage1_tuned"]
    assert (tuned.path / "weights.safetensors").stat().st_size == s1_weights.stat().st_size
    backbone = load_backbone(spec)
    original = load_file(str(s1_weights))
    mapper = load_method(ctx, "tscir", backbone, frozen.key).mapper.state_dict()
    assert all(torch.equal(mapper[k], original[k]) for k in original)
    mapper = load_method(ctx, "tscir", backbone, tuned.key).mapper.state_dict()
    assert any(not torch.equal(mapper[k], original[k]) for k in original)  # its own, tuned copy
    shutil.rmtree(s1.path)
    with pytest.raises(UserError, match=f"tscir run {frozen.key} composes Stage I run {s1.key}, which is not in"
                       ) as e:
        load_method(ctx, "tscir", backbone, frozen.key)
    assert f"Restore stage1/{s1.key}" in str(e.value)
    assert load_method(ctx, "tscir", backbone, tuned.key).mapper is not None


def test_compose_train_resume_equals_uninterrupted(cli, cache, tmp_path):
    from safetensors.torch import load_file

    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.jobs.context import Context
    from zscir_cli.jobs.training.config import Stage2Config
    from zscir_cli.jobs.training.stage2 import compose_train

    trip, other = _scene_triplets(cli, cache, tmp_path, 96)
    spec = ModelSpec("zscir-tiny-vit", "none")
    cfg = Stage2Config(triplets=str(trip), epochs=3, batch_size=32, lr=1e-3, hard_negatives=3, seed=5)
    full = compose_train(Context(store=ArtifactStore(cache), workers=0), spec, cfg)
    ctx = Context(store=ArtifactStore(other), workers=0)
    assert compose_train(ctx, spec, cfg, stop_after_epoch=1) is None
    resumed = compose_train(ctx, spec, cfg, resume=True)
    a = load_file(str(full.path / "adapters.safetensors"))
    b = load_file(str(resumed.path / "adapters.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(a[k].abs().sum() > 0 for k in a if k.endswith("up.weight"))  # it did learn


def test_compose_train_ddp_two_processes_match_one(cli, cache, tmp_path):
    from runs import losses, one_and_two_processes
    from safetensors.torch import load_file

    trip, single = _scene_triplets(cli, cache, tmp_path, 64)
    args = ["compose-train", "--triplets", str(trip), *TINY, "--epochs", "2", "--batch-size", "16", "--lr", "1e-3",
            "--hard-negatives", "2", "--device", "cpu", "--workers", "0", "--json"]
    r1, r2 = one_and_two_processes(args, single, cache)
    run1, run2 = single / "stage2" / r1["run"], cache / "stage2" / r2["run"]
    assert losses(run2) == pytest.approx(losses(run1), rel=1e-4)
    w1, w2 = load_file(str(run1 / "adapters.safetensors")), load_file(str(run2 / "adapters.safetensors"))
    assert all((w1[k] - w2[k]).abs().max() < 1e-4 for k in w1)
