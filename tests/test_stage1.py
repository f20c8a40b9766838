"""Stage I: modules, losses, spatial tokens, resume, and the CLI end to end on a tiny model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zscir_cli.model.backbone import ModelSpec, load_backbone
from zscir_cli.model.losses import info_nce, soft_text_alignment
from zscir_cli.model.mapping import Mapper, MappingConfig, TokenLearner, VSIBlock
from zscir_cli.model.text import TextEncoder, placeholder_token_id
from zscir_cli.model.visual import encode_with_tokens


@pytest.fixture(scope="module")
def vit():
    return load_backbone(ModelSpec("zscir-tiny-vit", "none"))


def _cfg(backbone, layers=(2, 4), scope="placeholder"):
    enc = TextEncoder(backbone.model, placeholder_token_id(backbone.tokenizer))
    return enc, MappingConfig(image_dim=32, text_width=enc.width, text_depth=enc.depth, token_dim=32,
                              placeholder_id=enc.placeholder_id, vsi_layers=list(layers), vsi_heads=2,
                              vsi_scope=scope, dropout=0.0)


def test_token_learner_and_vsi_shapes():
    phi = TokenLearner(32, 64, hidden_mult=4, dropout=0.5)
    assert phi(torch.randn(5, 32)).shape == (5, 64)
    assert phi.net[0].out_features == 256 and len([m for m in phi.net if isinstance(m, torch.nn.Linear)]) == 3
    vsi = VSIBlock(64, 32, heads=4)
    h, mask = torch.randn(5, 7, 64), torch.zeros(5, 7, dtype=torch.bool)
    mask[:, 3] = True
    out = vsi(h, mask, torch.randn(5, 17, 32))
    assert out.shape == (5, 7, 64) and vsi.gate.item() == 0.0


def test_vsi_changes_only_the_placeholder_position():
    vsi = VSIBlock(16, 8, heads=2)
    with torch.no_grad():
        vsi.gate.fill_(1.0)
    h, mask = torch.randn(2, 5, 16), torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 2] = True  # row 1 has no placeholder
    out = vsi(h, mask, torch.randn(2, 3, 8))
    changed = (out - h).abs().sum(-1) > 0
    assert changed.tolist() == [[False, False, True, False, False], [False] * 5]
    out_all = vsi(h, mask, torch.randn(2, 3, 8), scope="all")
    changed = (out_all - h).abs().sum(-1) > 0
    assert changed[0].all() and not changed[1].any()


def test_zero_gates_equal_plain_token_injection(vit):
    enc, cfg = _cfg(vit)
    mapper = Mapper(cfg).eval()
    plain = Mapper(MappingConfig(**{**cfg.__dict__, "vsi_layers": []})).eval()
    plain.phi.load_state_dict(mapper.phi.state_dict())
    tokens = vit.tokenizer(["a photo of $", "a photo of $ that is red"])
    v, visual = F.normalize(torch.randn(2, 32), dim=-1), torch.randn(2, 17, 32)
    with torch.no_grad():
        assert torch.allclose(mapper.encode(enc, tokens, v, visual), plain.encode(enc, tokens, v), atol=1e-6)
        for blk in mapper.vsi.values():
            blk.gate.fill_(0.5)
        assert not torch.allclose(mapper.encode(enc, tokens, v, visual), plain.encode(enc, tokens, v), atol=1e-4)


def test_vsi_layers_outside_the_depth_are_refused(vit):
    _, cfg = _cfg(vit, layers=(0, 5))
    with pytest.raises(ValueError, match=r"VSI layers 0,5 outside the text encoder's depth \(blocks 1..4\)") as e:
        Mapper(cfg)
    assert "--" not in str(e.value)  # the model layer knows no command-line flags
    assert MappingConfig.default_vsi_layers(12) == [3, 6, 9, 12]
    assert MappingConfig.default_vsi_layers(2) == [1, 2]


def test_mapper_save_and_load(vit, tmp_path):
    _, cfg = _cfg(vit)
    mapper = Mapper(cfg)
    mapper.save(tmp_path)
    back = Mapper.load(tmp_path)
    for (k, a), (_, b) in zip(mapper.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    assert json.loads((tmp_path / "config.json").read_text())["vsi_layers"] == [2, 4]


@pytest.mark.parametrize("name,tokens", [("zscir-tiny-vit", 17), ("zscir-tiny-rn", 2), ("zscir-shapes-rn", 5)])
def test_spatial_tokens_for_vit_and_resnet_towers(name, tokens):
    bb = load_backbone(ModelSpec(name, "none"))
    size = bb.model.visual.image_size
    size = size[0] if isinstance(size, tuple) else size
    images = torch.randn(3, 3, size, size)
    v, t = encode_with_tokens(bb.model, images, grid=4)
    assert v.shape == (3, bb.embed_dim) and t.shape == (3, tokens, bb.embed_dim)
    assert torch.allclose(v, bb.encode_images(images), atol=1e-5)  # the global feature is encode_image's
    assert torch.allclose(t[:, 0], v, atol=1e-5)  # ... and comes first
    assert torch.allclose(t.norm(dim=-1), torch.ones(3, tokens), atol=1e-5)


def test_vit_patch_tokens_are_pooled_patches(vit):
    """Grid 1 pools every patch: the mean of ln_post(patch) @ proj."""
    images = torch.randn(2, 3, 32, 32)
    captured = {}
    h = vit.model.visual.transformer.register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    vit.model.encode_image(images)
    h.remove()
    patches = vit.model.visual.ln_post(captured["x"][:, 1:]) @ vit.model.visual.proj
    _, t = encode_with_tokens(vit.model, images, grid=1)
    assert torch.allclose(t[:, 1], F.normalize(patches.mean(1), dim=-1), atol=1e-5)


def test_soft_text_alignment_hand_computed():
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    u = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    tau, tau_s = 0.5, 0.25
    # q_i = softmax_j(u_i.u_j / tau_s); p_i = softmax_j(t_i.u_j / tau)
    q = [[math.exp(4) / (math.exp(4) + math.exp(2.4)), math.exp(2.4) / (math.exp(4) + math.exp(2.4))],
         [math.exp(2.4) / (math.exp(2.4) + math.exp(4)), math.exp(4) / (math.exp(2.4) + math.exp(4))]]
    p = [[math.exp(2) / (math.exp(2) + math.exp(1.2)), math.exp(1.2) / (math.exp(2) + math.exp(1.2))],
         [math.exp(0) / (math.exp(0) + math.exp(1.6)), math.exp(1.6) / (math.exp(0) + math.exp(1.6))]]
    kl = sum(q[i][j] * math.log(q[i][j] / p[i][j]) for i in range(2) for j in range(2)) / 2
    assert soft_text_alignment(t, u, tau, tau_s).item() == pytest.approx(kl, rel=1e-5)
    assert soft_text_alignment(u, u, tau_s, tau_s).item() == pytest.approx(0.0, abs=1e-6)


def test_info_nce_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    tau = 0.5
    l1 = -math.log(math.exp(2) / (math.exp(2) + math.exp(0)))  # a0 vs (b0, b1)
    l2 = -math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))  # a1 vs (b0, b1)
    l3 = -math.log(math.exp(2) / (math.exp(2) + math.exp(1.2)))  # b0 vs (a0, a1)
    l4 = -math.log(math.exp(1.6) / (math.exp(0) + math.exp(1.6)))  # b1 vs (a0, a1)
    assert info_nce(a, b, tau).item() == pytest.approx(((l1 + l2) / 2 + (l3 + l4) / 2) / 2, rel=1e-5)


def test_vsi_grid_flag_and_its_renamed_alias(cli, tmp_path, monkeypatch):
    from zscir_cli.jobs.training import stage1

    seen = []
    monkeypatch.setattr(stage1, "map_train", lambda ctx, spec, cfg, resume=False, force=False: seen.append(cfg))
    tiny = ["--model", "zscir-tiny-vit", "--pretrained", "none", "--cache-dir", tmp_path]
    code, _, err = cli("map-train", *tiny, "--vsi-grid", "3")
    assert code == 0 and seen[-1].vsi_grid == 3 and "renamed" not in err
    code, _, err = cli("map-train", *tiny, "--vsi-tokens", "2")
    assert code == 0 and seen[-1].vsi_grid == 2
    assert "--vsi-tokens is renamed --vsi-grid" in " ".join(err.split())
    code, out, _ = cli("map-train", "--help")
    assert code == 0 and "--vsi-grid" in out and "--vsi-tokens" not in out
    assert not hasattr(seen[-1], "extra") and not hasattr(seen[-1], "vsi_tokens")


def test_self_retrieval_r1_ranks_every_val_image():
    from zscir_cli.jobs.retrieval.features import FeatureSet
    from zscir_cli.jobs.training.stage1 import self_retrieval_r1

    image = np.eye(4, dtype=np.float16)  # four orthogonal val images
    val = FeatureSet(None, ["a", "b", "c", "d"], image, image[:, None].repeat(2, axis=1), None)

    class Net(torch.nn.Module):  # image 3's prompt lands on image 0; the others on themselves
        def forward(self, tokens, v, visual):
            assert tokens.shape == (len(v), 3) and visual.shape == (len(v), 2, 4)
            return torch.where(v[:, 3:] > 0.5, torch.eye(4)[0], v)

    assert self_retrieval_r1(Net(), val, torch.zeros(1, 3, dtype=torch.long), torch.device("cpu"), True) == 75.0
