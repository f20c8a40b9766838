"""What Stage I and Stage II train on: the frozen features of their images (and captions),
computed once, by every process under torchrun, and read back as float32 rows."""

from __future__ import annotations

import numpy as np
import torch

from zscir_cli.core.errors import UserError
from zscir_cli.data.galleries import Gallery
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.distributed import Dist
from zscir_cli.jobs.retrieval.features import FeatureSet, cached_features
from zscir_cli.jobs.retrieval.sharded_features import sharded_features
from zscir_cli.model.backbone import Backbone
from zscir_cli.model.visual import tower_kind


def shared_features(ctx: Context, backbone: Backbone, gallery: Gallery, d: Dist, grid: int,
                    captions: list[str] | None = None) -> FeatureSet:
    """`cached_features` of the gallery. Under torchrun every process encodes its parts of the
    images (`sharded_features`); rank 0 then caches the captions' features (text is cheap) while
    the other ranks wait, and every rank reads the cache."""
    try:
        tower_kind(backbone.model)
    except ValueError as e:
        raise UserError(str(e), "Choose an OpenCLIP ViT or ResNet architecture with --model.") from e
    if d.world > 1:
        sharded_features(ctx, backbone, gallery, d, grid)
    if d.main:
        fs = cached_features(ctx, backbone, gallery, grid=grid, captions=captions)
    d.barrier()
    return fs if d.main else cached_features(ctx, backbone, gallery, grid=grid, captions=captions)


def rows(x: np.ndarray, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    """Rows `idx` of a (memory-mapped, fp16) feature array as float32 on `device`."""
    return torch.from_numpy(np.asarray(x[idx], dtype=np.float32)).to(device)


