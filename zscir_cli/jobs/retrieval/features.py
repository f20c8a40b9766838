"""The frozen-feature cache: image features, pooled spatial tokens and caption features.

Computed once per (model, image source, grid) and stored as fp16 `.npy` files that training
memory-maps, so no epoch and no later run ever runs the image encoder again. Image features come
from the one encoding pass of `retrieval.encodings` (shared with the index).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch

from zscir_cli.core.cache import Artifact
from zscir_cli.core.device import autocast
from zscir_cli.data.galleries import Gallery
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.retrieval.encodings import FEATURES, encode_once
from zscir_cli.model.backbone import Backbone
from zscir_cli.model.visual import encode_with_tokens

KIND = FEATURES
TEXT_KIND = "text-features"


@dataclass
class FeatureSet:
    """Memory-mapped features of one image source; rows follow `ids`."""

    artifact: Artifact
    ids: list[str]
    image: np.ndarray  # (N, D) fp16, normalised global features
    tokens: np.ndarray  # (N, M, D) fp16, normalised visual tokens (global first)
    captions: np.ndarray | None  # (N, D) fp16, normalised caption features, or None

    @staticmethod
    def captions_of(ctx: Context, backbone: Backbone, captions: list[str]) -> np.ndarray:
        """(N, D) fp16 normalised caption features, cached."""
        return np.load(_caption_features(ctx, backbone, captions).path / "captions.npy", mmap_mode="r")

    @staticmethod
    def open(artifact: Artifact) -> FeatureSet:
        p = artifact.path
        return FeatureSet(artifact, json.loads((p / "ids.json").read_text()),
                          np.load(p / "image.npy", mmap_mode="r"), np.load(p / "tokens.npy", mmap_mode="r"), None)


def cached_features(ctx: Context, backbone: Backbone, gallery: Gallery, *, grid: int = 4,
                    captions: list[str] | None = None, batch_size: int = 64) -> FeatureSet:
    """The features of `gallery` (and of `captions`, one per image), computed once then reused."""
    images = encode_once(ctx, backbone, gallery, index=False, grid=grid, batch_size=batch_size).features
    assert images is not None
    fs = FeatureSet.open(images)
    if captions is not None:
        if len(captions) != len(fs.ids):
            raise ValueError("one caption per image expected")
        fs.captions = np.load(_caption_features(ctx, backbone, captions).path / "captions.npy", mmap_mode="r")
    return fs


def _caption_features(ctx: Context, backbone: Backbone, captions: list[str]) -> Artifact:
    digest = hashlib.sha256("\n".join(captions).encode()).hexdigest()[:16]
    config = {"model": backbone.spec.identity(), "captions": len(captions), "digest": digest}
    key = ctx.store.key_for(TEXT_KIND, config)
    with ctx.store.lock(TEXT_KIND, key, on_wait=ctx.reporter.info):
        found = ctx.store.get(TEXT_KIND, key)
        return found if found is not None else _encode_captions(ctx, backbone, captions, config, key)


def _encode_captions(ctx: Context, backbone: Backbone, captions: list[str], config: dict, key: str) -> Artifact:
    parts = []
    with ctx.reporter.task(f"caching features of {len(captions)} captions", total=len(captions)) as task:
        for s in range(0, len(captions), 256):
            parts.append(backbone.encode_texts(list(captions[s:s + 256])).cpu().numpy().astype(np.float16))
            task.advance(len(captions[s:s + 256]))
    with ctx.store.create(TEXT_KIND, key, config=config, model=backbone.spec.identity(),
                          description=f"frozen features of {len(captions)} captions, {backbone.spec.label()}") as out:
        np.save(out.path / "captions.npy", np.concatenate(parts))
        out.manifest["count"] = len(captions)
    return ctx.store.get(TEXT_KIND, key)  # type: ignore[return-value]


def encode_images_with_tokens(backbone: Backbone, images: list, grid: int,
                              batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """PIL images -> (v (N, D), tokens (N, M, D)) float32, for references at query time."""
    vs, ts = [], []
    for s in range(0, len(images), batch_size):
        batch = torch.stack([backbone.preprocess(im) for im in images[s:s + batch_size]]).to(backbone.device)
        with torch.inference_mode(), autocast(backbone.device):
            v, t = encode_with_tokens(backbone.model, batch, grid)
        vs.append(v.float().cpu().numpy())
        ts.append(t.float().cpu().numpy())
    return np.concatenate(vs), np.concatenate(ts)


