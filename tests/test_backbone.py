"""Loading backbones: local files (safetensors, .pt), local-dir:, and every error a user can fix."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from zscir_cli.core.errors import UserError
from zscir_cli.jobs.backbones import user_errors
from zscir_cli.model.backbone import BackboneError, ModelSpec, model_config
from zscir_cli.model.backbone import load_backbone as _load_backbone


def load_backbone(spec, **kwargs):
    """The model layer's loader with the job layer's conversion of its errors, as commands see it."""
    with user_errors():
        return _load_backbone(spec, **kwargs)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(1)
    return load_backbone(ModelSpec("zscir-tiny-vit", "none"))


def _state(backbone):
    return {k: v.detach().clone().contiguous() for k, v in backbone.model.state_dict().items()}


def _same_model(a, b):
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(a.encode_images(images), b.encode_images(images))
    assert torch.equal(a.encode_texts(["a red star"]), b.encode_texts(["a red star"]))


def test_local_safetensors_file(tiny, tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(_state(tiny), str(path))
    _same_model(tiny, load_backbone(ModelSpec("zscir-tiny-vit", str(path))))


def test_local_pt_file_read_with_weights_only(tiny, tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in _state(tiny).items()}}, path)
    _same_model(tiny, load_backbone(ModelSpec("zscir-tiny-vit", str(path))))


def test_pickled_code_is_never_executed(tiny, tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _state(tiny), "x": Evil()}, path)
    with pytest.raises(UserError, match="Could not load") as e:
        load_backbone(ModelSpec("zscir-tiny-vit", str(path)))
    assert not (tmp_path / "PWNED").exists()
    msg = str(e.value)
    assert "evil.pt is a pickle that refers to the Python object 'exec'" in msg
    assert "safetensors.torch.save_file" in msg and "weights_only" not in msg


def test_local_dir_model(tiny, tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_config("zscir-tiny-vit"), "preprocess_cfg": {}}))
    save_file(_state(tiny), str(folder / "open_clip_model.safetensors"))
    _same_model(tiny, load_backbone(ModelSpec(f"local-dir:{folder}")))


def test_identity_binds_file_content(tiny, tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(_state(tiny), str(a))
    save_file(_state(tiny), str(b))
    ia, ib = ModelSpec("zscir-tiny-vit", str(a)).identity(), ModelSpec("zscir-tiny-vit", str(b)).identity()
    # the content names the weights, never the path: two copies are one identity
    assert ia == ib == {"name": "zscir-tiny-vit", "pretrained": None, "sha256": ia["sha256"]}
    assert len(ia["sha256"]) == 64 and str(tmp_path) not in json.dumps(ia)
    # OpenAI's weights were trained with QuickGELU, which the identity records
    assert ModelSpec("ViT-B-32", "openai").identity() == {"name": "ViT-B-32", "pretrained": "openai",
                                                          "quick_gelu": True}
    assert ModelSpec("ViT-B-32", "laion2b_s34b_b79k").identity() == {
        "name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}


def test_unknown_model_lists_close_choices():
    with pytest.raises(UserError) as e:
        load_backbone(ModelSpec("ViT-L-41", "openai"))
    assert "Unknown model 'ViT-L-41'" in str(e.value) and "ViT-L-14" in str(e.value)


def test_missing_pretrained_file():
    with pytest.raises(UserError, match="--pretrained file not found: .*nope.safetensors"):
        load_backbone(ModelSpec("zscir-tiny-vit", "/no/such/nope.safetensors"))


def test_unknown_tag_lists_the_tags():
    with pytest.raises(UserError, match="neither a file nor a pretrained tag.*openai"):
        load_backbone(ModelSpec("ViT-B-32", "openaii"))


def test_offline_zoo_weights_name_model_tag_and_both_ways_out(tmp_path):
    with pytest.raises(UserError) as e:
        load_backbone(ModelSpec("ViT-B-32", "openai"), cache_dir=tmp_path)
    msg = str(e.value)
    assert "ViT-B-32" in msg and "'openai'" in msg
    assert "--pretrained /path/to/weights.safetensors" in msg and "zscir demo" in msg


def test_offline_hf_hub_id(tmp_path):
    with pytest.raises(UserError, match="Could not fetch the weights of hf-hub:nobody/nothing"):
        load_backbone(ModelSpec("hf-hub:nobody/nothing"), cache_dir=tmp_path)


def test_checkpoint_of_another_architecture(tmp_path):
    other = load_backbone(ModelSpec("zscir-tiny-rn", "none"))
    path = tmp_path / "rn.safetensors"
    save_file(_state(other), str(path))
    with pytest.raises(UserError, match="Could not load zscir-tiny-vit.*matches the architecture"):
        load_backbone(ModelSpec("zscir-tiny-vit", str(path)))


def test_local_dir_without_config(tmp_path):
    with pytest.raises(UserError, match="no open_clip_config.json"):
        load_backbone(ModelSpec(f"local-dir:{tmp_path}"))


def test_model_layer_raises_value_errors_that_name_no_option():
    for spec in (ModelSpec("zscir-tiny-vit", "/no/such/nope.safetensors"), ModelSpec("ViT-L-41", "openai"),
                 ModelSpec("ViT-B-32", "openaii")):
        with pytest.raises(BackboneError) as e:
            _load_backbone(spec)
        assert isinstance(e.value, ValueError) and not isinstance(e.value, UserError)
        assert "--" not in str(e.value)


def test_a_tokenizer_is_built_once_per_model_config(tmp_path, monkeypatch):
    import open_clip
    from open_clip import factory

    from zscir_cli.model.tokenizers import tokenizer_of

    # the configs this test registers leave OpenCLIP's registry with it
    monkeypatch.setattr(factory, "_MODEL_CONFIGS", dict(factory._MODEL_CONFIGS))
    monkeypatch.setattr(factory, "_MODEL_CONFIG_PATHS", list(factory._MODEL_CONFIG_PATHS))

    cfg = model_config("zscir-tiny-vit")
    first = tokenizer_of("zscir-tiny-vit")
    assert tokenizer_of("zscir-tiny-vit") is first
    words = ["a small red circle", "make it blue"]
    assert torch.equal(first(words), open_clip.get_tokenizer("zscir-tiny-vit")(words))
    # the same name registered again with another text config: another tokenizer, of that config
    folder = tmp_path / "configs"
    folder.mkdir()
    for length in (77, 12):
        cfg["text_cfg"]["context_length"] = length
        (folder / "zscir-test-tokenizer.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(folder)
        assert tokenizer_of("zscir-test-tokenizer")(words).shape == (2, length)
    # a model read from a folder: its files may change, its tokenizer is read each time
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    assert tokenizer_of(f"local-dir:{tmp_path / 'dir'}") is not tokenizer_of(f"local-dir:{tmp_path / 'dir'}")
