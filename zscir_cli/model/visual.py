"""Frozen image features for Stage I: the global feature and a few pooled spatial tokens.

The spatial tokens are a ViT's patch tokens (after `ln_post` and `proj`, so in the same space
as the global feature), or for a ResNet tower the last feature map before its attention pool,
pushed through the pool's value and output projections (the dense-feature reading of CLIP's
attention pool). Either map is average-pooled to a small grid (default 4x4, never finer than
the map) and the global feature is put first: M = 1 + grid^2 tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def tower_kind(model: nn.Module) -> str:
    visual = model.visual
    if hasattr(visual, "conv1") and hasattr(visual, "transformer") and hasattr(visual, "ln_post"):
        return "vit"
    if hasattr(visual, "layer4") and hasattr(visual, "attnpool"):
        return "resnet"
    raise ValueError(f"Spatial tokens are not supported for the image tower {type(visual).__name__}; "
                     "OpenCLIP ViT and ModifiedResNet towers have them.")


def _image_size(model: nn.Module) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


@torch.no_grad()
def encode_with_tokens(model: nn.Module, images: torch.Tensor, grid: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, 3, H, W) -> (global (B, D) normalised, tokens (B, M, D) each normalised)."""
    kind = tower_kind(model)
    captured: dict[str, torch.Tensor] = {}
    visual = model.visual
    target = visual.transformer if kind == "vit" else visual.layer4
    handle = target.register_forward_hook(lambda _m, _i, out: captured.__setitem__("x", out))
    try:
        pooled = model.encode_image(images)  # (B, D)
    finally:
        handle.remove()
    x = captured["x"]
    if kind == "vit":
        if not getattr(visual.transformer, "batch_first", True):
            x = x.transpose(0, 1)
        x = visual.ln_post(x[:, 1:])  # (B, g*g, W): patch tokens, class token dropped
        if visual.proj is not None:
            x = x @ visual.proj  # (B, g*g, D)
        side = round(x.shape[1] ** 0.5)
        fmap = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], side, side)  # (B, D, g, g)
    else:
        pool = visual.attnpool
        b, _, h, w = x.shape
        seq = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
        if pool.positional_embedding.shape[0] == h * w + 1:
            seq = seq + pool.positional_embedding[1:].to(seq.dtype)
        seq = pool.c_proj(pool.v_proj(seq))  # (B, h*w, D)
        fmap = seq.transpose(1, 2).reshape(b, -1, h, w)  # (B, D, h, w)
    g = min(grid, fmap.shape[-1])
    spatial = F.adaptive_avg_pool2d(fmap.float(), g).flatten(2).transpose(1, 2)  # (B, g*g, D)
    tokens = torch.cat([pooled.float().unsqueeze(1), spatial], dim=1)  # (B, M, D)
    return F.normalize(pooled.float(), dim=-1), F.normalize(tokens, dim=-1)
