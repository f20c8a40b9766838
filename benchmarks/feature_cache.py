"""Stage I epoch time with the frozen-feature cache against re-encoding the images every step.

Peers (Pic2Word, SEARLE) run the frozen image encoder on every image of every batch. zscir
encodes each image once, stores the features as fp16 memory-mapped arrays and trains on those.
Both paths here run the same Stage I step (token learner + VSI + contrastive loss) on the same
model, images and batch size; the only difference is where the image features come from.
Prints epoch times and their ratio (target: at least 5x).

    python benchmarks/feature_cache.py [--model ViT-B-32] [--images 256] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.data import shapes
    from zscir_cli.data.galleries import FolderGallery
    from zscir_cli.jobs.context import Context
    from zscir_cli.jobs.retrieval.features import cached_features
    from zscir_cli.jobs.training.config import Stage1Config
    from zscir_cli.jobs.training.stage1 import mapping_config
    from zscir_cli.model.backbone import ModelSpec, load_backbone
    from zscir_cli.model.losses import info_nce
    from zscir_cli.model.mapping import PROMPT, Mapper
    from zscir_cli.model.text import TextEncoder
    from zscir_cli.model.visual import encode_with_tokens

    torch.manual_seed(0)
    backbone = load_backbone(ModelSpec(args.model, "none"))
    size = backbone.model.visual.image_size
    side = size[0] if isinstance(size, tuple) else size
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        world = shapes.WorldConfig(seed=0, image_size=side)
        for i in range(args.images):
            shapes.render_record(world, shapes.pair_record(world, "train", i)).save(folder / f"{i:05d}.jpg", quality=90)
        gallery = FolderGallery(folder)
        cfg = Stage1Config()
        t = time.perf_counter()
        feats = cached_features(Context(store=ArtifactStore(Path(tmp) / "cache")), backbone, gallery, grid=cfg.vsi_grid)
        t_cache = time.perf_counter() - t
        mcfg = mapping_config(backbone, cfg, int(feats.tokens.shape[2]))
        encoder = TextEncoder(backbone.model, mcfg.placeholder_id)
        mapper = Mapper(mcfg)
        opt = torch.optim.AdamW(mapper.parameters(), lr=1e-4)
        prompt = backbone.tokenizer([PROMPT])

        def step(v: torch.Tensor, visual: torch.Tensor) -> None:
            t_feat = mapper.encode(encoder, prompt.expand(len(v), -1), v, visual)
            loss = info_nce(t_feat, v)
            opt.zero_grad()
            loss.backward()
            opt.step()

        def epoch(cached: bool) -> float:
            order = torch.randperm(len(gallery))
            start = time.perf_counter()
            for s in range(0, len(order) - args.batch_size + 1, args.batch_size):
                idx = order[s:s + args.batch_size].numpy()
                if cached:
                    v = torch.from_numpy(np.asarray(feats.image[idx], dtype=np.float32))
                    visual = torch.from_numpy(np.asarray(feats.tokens[idx], dtype=np.float32))
                else:  # as re-encoding training loops do: decode, preprocess and run the frozen image tower each step
                    images = torch.stack([backbone.preprocess(gallery.image(int(i))) for i in idx])
                    v, visual = encode_with_tokens(backbone.model, images, cfg.vsi_grid)
                step(v, visual)
            return time.perf_counter() - start

        epoch(True)  # warm-up
        t_cached = min(epoch(True), epoch(True))
        t_encode = epoch(False)
    print(f"model {args.model} (random weights), {args.images} images of {side}px, batch {args.batch_size}, "
          f"VSI on {mcfg.vsi_layers}, torch threads {torch.get_num_threads()}")
    print(f"one-off feature caching:               {t_cache:7.2f} s")
    print(f"epoch re-encoding images every step:   {t_encode:7.2f} s")
    print(f"epoch on cached features:              {t_cached:7.2f} s")
    print(f"speed-up: {t_encode / t_cached:.1f}x")


if __name__ == "__main__":
    main()
