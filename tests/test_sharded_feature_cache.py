"""The Stage I feature cache at scale: what it stores per image is the pooled grid, in fp16."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("grid", [2, 4])
def test_feature_cache_stores_the_pooled_grid_in_fp16(image_folder, tmp_path, grid):
    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.data.galleries import FolderGallery
    from zscir_cli.jobs.context import Context
    from zscir_cli.jobs.retrieval.features import cached_features
    from zscir_cli.model.backbone import ModelSpec, load_backbone

    backbone = load_backbone(ModelSpec("zscir-tiny-vit", "none"))
    ctx = Context(store=ArtifactStore(tmp_path / "cache"), workers=0)
    fs = cached_features(ctx, backbone, FolderGallery(image_folder), grid=grid, batch_size=4)
    n, dim = len(fs.ids), backbone.embed_dim
    # the global feature then grid x grid pooled tokens, never the whole patch map
    assert fs.tokens.shape == (n, 1 + grid * grid, dim) and fs.tokens.dtype == np.float16
    assert fs.image.shape == (n, dim) and fs.image.dtype == np.float16
    assert np.array_equal(fs.tokens[:, 0], fs.image)  # the global feature leads the tokens
    body = sum(np.load(fs.artifact.path / f, mmap_mode="r").nbytes for f in ("image.npy", "tokens.npy"))
    assert body == n * (dim + (1 + grid * grid) * dim) * 2  # bytes per image: (D + M D) x 2
