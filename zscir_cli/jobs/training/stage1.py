"""`zscir map-train`: Stage I, mapping images to a rich pseudo-word (the paper's Stage I)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from zscir_cli.core.cache import Artifact, identity
from zscir_cli.core.device import autocast, seed_everything
from zscir_cli.core.errors import UserError
from zscir_cli.data.galleries import DatasetGallery
from zscir_cli.eval.metrics import recall_at_k
from zscir_cli.index.search import rank
from zscir_cli.jobs.backbones import open_backbone, resolve_spec, text_encoder
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.datasets.store import find_dataset, load_split
from zscir_cli.jobs.distributed import Dist, gather, start_run, world_size
from zscir_cli.jobs.retrieval.features import FeatureSet
from zscir_cli.jobs.runs import STAGE1
from zscir_cli.jobs.training.config import Stage1Config
from zscir_cli.jobs.training.inputs import rows, shared_features
from zscir_cli.jobs.training.loop import TrainSpec, existing_run, train
from zscir_cli.model.backbone import Backbone, ModelSpec
from zscir_cli.model.losses import info_nce, soft_text_alignment
from zscir_cli.model.mapping import PROMPT, Mapper, MappingConfig
from zscir_cli.model.text import TextEncoder, placeholder_token_id

KIND = STAGE1


class Stage1Net(nn.Module):
    """The trainable mapper bound to the frozen text encoder (what DDP wraps)."""

    def __init__(self, mapper: Mapper, encoder: TextEncoder):
        super().__init__()
        self.mapper = mapper
        object.__setattr__(self, "encoder", encoder)

    def forward(self, tokens: torch.Tensor, v: torch.Tensor, visual: torch.Tensor | None) -> torch.Tensor:
        return self.mapper.encode(self.encoder, tokens, v, visual)


def mapping_config(backbone: Backbone, cfg: Stage1Config, token_dim: int) -> MappingConfig:
    try:
        placeholder_id = placeholder_token_id(backbone.tokenizer, cfg.placeholder)
    except ValueError as e:
        raise UserError(str(e), "Choose another placeholder.") from e
    encoder = text_encoder(backbone, placeholder_id)
    layers = [] if not cfg.vsi else (cfg.vsi_layers or MappingConfig.default_vsi_layers(encoder.depth))
    image_dim = int(backbone.model.text_projection.shape[-1])
    return MappingConfig(image_dim=image_dim, text_width=encoder.width, text_depth=encoder.depth,
                         token_dim=token_dim, placeholder=cfg.placeholder, placeholder_id=encoder.placeholder_id,
                         dropout=cfg.dropout, vsi_layers=layers, vsi_heads=cfg.vsi_heads,
                         vsi_scope=cfg.vsi_scope, grid=cfg.vsi_grid)


def build_mapper(mcfg: MappingConfig) -> Mapper:
    try:
        return Mapper(mcfg)
    except ValueError as e:
        raise UserError(str(e), f"Choose --vsi-layers between 1 and {mcfg.text_depth} and --vsi-scope "
                                "placeholder or all.") from e


def self_retrieval_r1(net: nn.Module, val: FeatureSet, prompt: torch.Tensor, device: torch.device,
                      use_visual: bool) -> float:
    """'a photo of $' from each val image, ranked against every val image: R@1 (%)."""
    n = len(val.ids)
    outs = []
    with torch.no_grad():
        for s in range(0, n, 512):
            idx = np.arange(s, min(n, s + 512))
            v = rows(val.image, idx, device)
            t = rows(val.tokens, idx, device) if use_visual else None
            outs.append(net(prompt.expand(len(idx), -1), v, t).float().cpu())
    ranked, _ = rank(np.asarray(val.image, dtype=np.float32), torch.cat(outs).numpy(), 1)
    return recall_at_k(ranked, [{i} for i in range(n)], 1)


@dataclass
class Stage1Loss:
    """A training step's loss: InfoNCE between 'a photo of $' and the images of the global
    batch, plus soft text alignment against their captions (`cfg.sta`)."""

    feats: FeatureSet  # the training images (and captions)
    prompt: torch.Tensor  # (1, L) tokens of PROMPT
    cfg: Stage1Config
    use_visual: bool  # feed the visual tokens (VSI)
    device: torch.device
    d: Dist

    def __call__(self, model: nn.Module, local: torch.Tensor, _batch: torch.Tensor):
        idx = local.numpy()
        v = rows(self.feats.image, idx, self.device)
        visual = rows(self.feats.tokens, idx, self.device) if self.use_visual else None
        with autocast(self.device):
            t_local = model(self.prompt.expand(len(idx), -1), v, visual)
        t = gather(t_local.float(), self.d)
        contrastive = info_nce(t, gather(v, self.d), self.cfg.temperature)
        logs = {"contrastive": contrastive.item()}
        loss = contrastive
        if self.cfg.sta:
            u = gather(rows(self.feats.captions, idx, self.device), self.d)
            sta = soft_text_alignment(t, u, self.cfg.temperature, self.cfg.sta_temperature)
            loss = loss + self.cfg.sta_weight * sta
            logs["sta"] = sta.item()
        return loss, logs


@dataclass
class Stage1Validation:
    """After each epoch: self-retrieval R@1 on the val split, when the data set has one."""

    val: FeatureSet | None
    prompt: torch.Tensor
    device: torch.device
    use_visual: bool

    def __call__(self, module: nn.Module) -> dict[str, Any]:
        if self.val is None:
            return {}
        return {"val_self_r1": round(self_retrieval_r1(module, self.val, self.prompt, self.device,
                                                       self.use_visual), 2)}


def _pairs_gallery(data: Artifact, split: str) -> tuple[Any, DatasetGallery]:
    ds = load_split(data, "pairs", split)
    return ds, DatasetGallery(ds, {"kind": "dataset", "dataset": identity(data), "part": "pairs", "split": split})


def _with_caption_check(ctx: Context, data: Artifact, cfg: Stage1Config) -> Stage1Config:
    """cfg, with soft text alignment off when the training split lacks captions."""
    train_split = load_split(data, "pairs", "train")
    captions = [c or "" for c in train_split["caption"]] if "caption" in train_split.column_names else []
    if cfg.sta and not (captions and all(c.strip() for c in captions)):
        ctx.reporter.info("the data set has no captions (or some are empty): soft text alignment is off")
        cfg = replace(cfg, sta=False)
    if len(train_split) == 0:
        raise UserError(f"Data set {cfg.data} has no usable images.", "Prepare a data set with images.")
    return cfg


def _features(ctx: Context, backbone: Backbone, data: Artifact, cfg: Stage1Config,
              d: Dist) -> tuple[FeatureSet, FeatureSet | None]:
    """Frozen features of the train split (with captions for STA) and of the val split, if any."""
    ds, gallery = _pairs_gallery(data, "train")
    train_feats = shared_features(ctx, backbone, gallery, d, cfg.vsi_grid,
                                  list(ds["caption"]) if cfg.sta else None)
    if not (data.path / "pairs" / "val").is_dir():
        return train_feats, None
    return train_feats, shared_features(ctx, backbone, _pairs_gallery(data, "val")[1], d, cfg.vsi_grid)


def _train_spec(ctx: Context, backbone: Backbone, data: Artifact, feats: FeatureSet, cfg: Stage1Config,
                mcfg: MappingConfig) -> TrainSpec:
    config = {k: v for k, v in asdict(cfg).items() if k != "pretrained"}  # "model": the identity, below
    config["vsi_layers"] = mcfg.vsi_layers
    config["model"] = backbone.spec.identity()
    # N processes follow one process's loss curve but not its exact weights (reductions differ)
    config["world_size"] = world_size()
    inputs = [identity(data), identity(feats.artifact)]
    return TrainSpec(kind=KIND, key=ctx.store.key_for(KIND, config, inputs), config=config, inputs=inputs,
                     seed=cfg.seed, model=backbone.spec.identity(),
                     description=f"{cfg.method} mapping on {data.manifest.get('name', cfg.data)}, "
                                 f"{backbone.spec.label()}, {cfg.epochs} epochs, seed {cfg.seed}",
                     n_items=len(feats.ids), batch_size=cfg.batch_size, epochs=cfg.epochs,
                     lr=cfg.lr, weight_decay=cfg.weight_decay,
                     extra_manifest={"method": cfg.method, "placeholder": cfg.placeholder,
                                     "placeholder_id": mcfg.placeholder_id, "mapping": asdict(mcfg)})


def map_train(ctx: Context, spec: ModelSpec | None, cfg: Stage1Config, *, resume: bool = False, force: bool = False,
              stop_after_epoch: int | None = None) -> Artifact | None:
    ctx, device, d = start_run(ctx)
    spec = spec or resolve_spec(ctx, cfg.model, cfg.pretrained)  # None: the backbone cfg names
    data = find_dataset(ctx, cfg.data)
    backbone = open_backbone(ctx, spec, device)
    cfg = _with_caption_check(ctx, data, cfg)
    train_feats, val_feats = _features(ctx, backbone, data, cfg, d)

    seed_everything(cfg.seed)  # the mapper's initial weights, then dropout, follow the seed
    mcfg = mapping_config(backbone, cfg, int(train_feats.tokens.shape[2]))
    mapper = build_mapper(mcfg).to(device)
    net = Stage1Net(mapper, text_encoder(backbone, mcfg.placeholder_id))
    prompt = backbone.tokenizer([PROMPT.replace("$", cfg.placeholder)]).to(device)  # (1, L)
    tspec = _train_spec(ctx, backbone, data, train_feats, cfg, mcfg)
    found = existing_run(ctx, KIND, tspec.key, d, force=force)
    if found is not None:  # finished already (with --resume too: nothing is left to do)
        return found
    if tspec.n_items < cfg.batch_size:
        raise UserError(f"The data set has {tspec.n_items} images, fewer than one batch ({cfg.batch_size}).",
                        f"Pass --batch-size {max(2, tspec.n_items // 2 * 2)} or prepare more images.")
    use_visual = bool(mcfg.vsi_layers)
    return train(ctx, tspec, net, device=device, d=d,
                 step_fn=Stage1Loss(train_feats, prompt, cfg, use_visual, device, d),
                 evaluate=Stage1Validation(val_feats, prompt, device, use_visual),
                 finalize=mapper.save, resume=resume, stop_after_epoch=stop_after_epoch)


