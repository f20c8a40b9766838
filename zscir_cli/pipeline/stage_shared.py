"""What Stage I and Stage II share: process setup under torchrun, frozen features computed once,
and the frozen model parts, loaded with the model layer's ValueErrors turned into UserErrors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from zscir_cli.core.cache import Artifact
from zscir_cli.core.device import resolve_device
from zscir_cli.core.errors import UserError
from zscir_cli.core.progress import NULL_REPORTER
from zscir_cli.data.images import Gallery
from zscir_cli.model.adapters import ComposingAdapters
from zscir_cli.model.backbone import Backbone
from zscir_cli.model.mapping import Mapper
from zscir_cli.model.text import TextEncoder
from zscir_cli.model.visual import tower_kind
from zscir_cli.pipeline.context import Context
from zscir_cli.pipeline.distributed import Dist, device_for, init_distributed
from zscir_cli.pipeline.features import FeatureSet, cached_features
from zscir_cli.pipeline.sharded_features import sharded_features


def start_run(ctx: Context) -> tuple[Context, torch.device, Dist]:
    """The device and process group of a training run; under torchrun only rank 0 reports."""
    device = resolve_device(ctx.device)
    d = init_distributed(device)
    device = device_for(d, device)
    if not d.main:  # one progress display: rank 0's
        ctx = replace(ctx, reporter=NULL_REPORTER)
    return ctx, device, d


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


def text_encoder(backbone: Backbone, placeholder_id: int) -> TextEncoder:
    try:
        return TextEncoder(backbone.model, placeholder_id)
    except ValueError as e:
        raise UserError(str(e), "Choose such an architecture with --model.") from e


def load_mapper(art: Artifact, device: torch.device | str) -> Mapper:
    """The Stage I mapper saved in `art` (a Stage I run, or a Stage II run that tuned it)."""
    try:
        return Mapper.load(art.path, device)
    except (ValueError, TypeError) as e:
        raise UserError(f"{art.kind} run {art.key} cannot be loaded: {e}", "Train it again.") from e


def load_adapters(art: Artifact, device: torch.device | str) -> ComposingAdapters:
    try:
        return ComposingAdapters.load(art.path, device)
    except (ValueError, TypeError) as e:
        raise UserError(f"{art.kind} run {art.key} cannot be loaded: {e}", "Train it again.") from e
