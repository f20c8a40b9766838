"""Weights: QuickGELU per zoo tag, content identity memoised on disk, .pt files that are not
state dicts, and failing fast when the hub cannot be reached."""

from __future__ import annotations

import json
import time
import warnings

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from zscir_cli.core.errors import UserError
from zscir_cli.jobs.backbones import user_errors
from zscir_cli.model import weights
from zscir_cli.model.backbone import ModelSpec, create_kwargs, load_backbone, model_config


def _activations(model: torch.nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules() if type(m).__name__ in ("GELU", "QuickGELU")}


def test_every_quick_gelu_tag_is_built_with_quick_gelu():
    checked = 0
    for name, tag in open_clip.list_pretrained():
        if not open_clip.get_pretrained_cfg(name, tag).get("quick_gelu"):
            continue
        arch = model_config(name) or {}
        assert arch.get("quick_gelu") or create_kwargs(ModelSpec(name, tag))["force_quick_gelu"], (name, tag)
        checked += 1
    assert checked > 20  # OpenAI's, MetaCLIP's, DFN's, ... tags
    assert create_kwargs(ModelSpec("ViT-L-14", "openai")) == {"force_quick_gelu": True}
    assert create_kwargs(ModelSpec("ViT-L-14-quickgelu", "openai")) == {"force_quick_gelu": False}
    assert create_kwargs(ModelSpec("ViT-B-32", "laion2b_s34b_b79k")) == {"force_quick_gelu": False}


def test_a_quick_gelu_tag_loads_with_quick_gelu_and_no_warning(tmp_path, monkeypatch):
    """A zoo tag whose config says quick_gelu, end to end through open_clip, without its weights:
    the tag is registered on a tiny architecture and its download answered by a local file."""
    from open_clip import factory, pretrained

    plain = load_backbone(ModelSpec("zscir-tiny-vit", "none"))
    assert _activations(plain.model) == {"GELU"}
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in plain.model.state_dict().items()}, str(path))
    monkeypatch.setitem(pretrained._PRETRAINED, "zscir-tiny-vit",
                        {"quicktag": pretrained._pcfg(hf_hub="nobody/nothing/", quick_gelu=True)})
    monkeypatch.setattr(factory, "download_pretrained", lambda cfg, cache_dir=None: str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bb = load_backbone(ModelSpec("zscir-tiny-vit", "quicktag"), cache_dir=tmp_path)
    assert not [w for w in caught if "QuickGELU" in str(w.message)]
    assert _activations(bb.model) == {"QuickGELU"}
    assert bb.spec.identity() == {"name": "zscir-tiny-vit", "pretrained": "quicktag", "quick_gelu": True}


def test_a_pt_file_without_a_state_dict_gets_a_sentence(tmp_path):
    for content, what in (([1, 2, 3], "holds list, not a state dict"),
                          ({"a": 1}, "holds a dict whose values are not all tensors"),
                          ({}, "holds an empty dict")):
        path = tmp_path / "w.pt"
        torch.save(content, path)
        with pytest.raises(UserError, match=what), user_errors():
            load_backbone(ModelSpec("zscir-tiny-vit", str(path)))
    path.write_bytes(b"")
    with pytest.raises(UserError, match="is empty"), user_errors():
        load_backbone(ModelSpec("zscir-tiny-vit", str(path)))
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="not a PyTorch checkpoint"), user_errors():
        load_backbone(ModelSpec("zscir-tiny-vit", str(path)))


def test_the_hash_of_a_weights_file_is_memoised_on_disk(tmp_path, monkeypatch):
    memo = weights.WeightsMemo(tmp_path / "cache")
    path = tmp_path / "w.safetensors"
    save_file({"x": torch.ones(3)}, str(path))
    first = memo.sha256(path)
    on_disk = json.loads(memo.path.read_text())
    assert on_disk["files"][str(path.resolve())]["sha256"] == first
    again = weights.WeightsMemo(tmp_path / "cache")  # a new process: only the file on disk remembers

    def no_hashing(p):
        raise AssertionError("hashed again")

    monkeypatch.setattr(weights, "file_sha256", no_hashing)
    assert again.sha256(path) == first
    assert again.find(first) == path.resolve()
    monkeypatch.undo()
    save_file({"x": torch.zeros(3)}, str(path))  # changed content: a new hash
    assert again.sha256(path) != first
    nowhere = weights.WeightsMemo(None)  # without a cache: remembered in the process only
    assert nowhere.sha256(path) == again.sha256(path) and nowhere.path is None


def test_a_spec_hashes_through_the_memo_its_command_gives_it(tmp_path):
    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.jobs.backbones import resolve_spec
    from zscir_cli.jobs.context import Context

    path = tmp_path / "w.safetensors"
    save_file({"x": torch.ones(3)}, str(path))
    ctx = Context(store=ArtifactStore(tmp_path / "cache"))
    spec = resolve_spec(ctx, "zscir-tiny-vit", str(path))
    assert spec.memo is ctx.memo and spec == ModelSpec("zscir-tiny-vit", str(path))  # the memo is no part of it
    spec.identity()
    assert (tmp_path / "cache" / ".memo" / "weights-sha256.json").is_file()  # the command's cache, nowhere else
    ModelSpec("zscir-tiny-vit", str(path)).identity()  # no memo: nothing written anywhere


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}])
def test_unreachable_hub_fails_fast_with_the_way_out(env, tmp_path, gallery_png, cli, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as a process started online
    monkeypatch.setattr(weights, "_probe", {})
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    load_backbone(ModelSpec("zscir-tiny-vit", "none"))  # imports done, so the time is the download's
    t0 = time.monotonic()
    code, _, err = cli("index", gallery_png, "--model", "ViT-B-32", "--cache-dir", tmp_path / "c")
    assert time.monotonic() - t0 < 8
    assert code == 2
    assert "Could not fetch the weights of ViT-B-32 with weights 'openai'" in err
    assert "--pretrained /path/to/weights.safetensors" in err and "zscir demo" in err
    assert "Retrying" not in err and err.count("error:") == 1


@pytest.fixture
def gallery_png(tmp_path):
    from PIL import Image

    folder = tmp_path / "g"
    folder.mkdir()
    Image.new("RGB", (8, 8), "red").save(folder / "a.png")
    return folder
