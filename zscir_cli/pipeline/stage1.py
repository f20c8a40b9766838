"""`zscir map-train`: Stage I, mapping images to a rich pseudo-word (method.md, Stage I)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from zscir_cli.core.cache import Artifact, identity
from zscir_cli.core.device import autocast, resolve_device, seed_everything
from zscir_cli.core.errors import UserError
from zscir_cli.core.progress import NULL_REPORTER
from zscir_cli.data.images import DatasetGallery
from zscir_cli.model.backbone import Backbone, ModelSpec, load_backbone
from zscir_cli.model.losses import info_nce, soft_text_alignment
from zscir_cli.model.mapping import PROMPT, Mapper, MappingConfig
from zscir_cli.model.text import TextEncoder, placeholder_token_id
from zscir_cli.pipeline.context import Context
from zscir_cli.pipeline.datasets import find_dataset, load_split
from zscir_cli.pipeline.features import FeatureSet, cached_features
from zscir_cli.pipeline.training import (
    TrainSpec,
    device_for,
    find_run,
    gather,
    init_distributed,
    train,
)

KIND = "stage1"


@dataclass
class Stage1Config:
    data: str = "shapes"  # prepared image(-caption) data set; trains on its 'train' split
    epochs: int = 10
    batch_size: int = 256  # global batch (split over torchrun processes)
    lr: float = 1e-4  # AdamW, cosine schedule
    weight_decay: float = 0.01
    seed: int = 0
    temperature: float = 0.07  # tau of the contrastive and alignment predictions
    vsi: bool = True  # visual semantic injection
    vsi_layers: list[int] | None = None  # 1-based; None = 4 layers spread over the depth
    vsi_tokens: int = 4  # spatial grid side: M = 1 + grid^2 visual tokens (at most the map's size)
    vsi_scope: str = "placeholder"  # placeholder | all
    vsi_heads: int = 4
    sta: bool = True  # soft text alignment (needs captions)
    sta_weight: float = 1.0  # lambda
    sta_temperature: float = 0.05  # tau_s of the caption-to-caption soft targets
    dropout: float = 0.5  # token learner dropout
    placeholder: str = "$"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return "pic2word" if not self.vsi and not self.sta else "stage1"


class Stage1Net(nn.Module):
    """The trainable mapper bound to the frozen text encoder (what DDP wraps)."""

    def __init__(self, mapper: Mapper, encoder: TextEncoder):
        super().__init__()
        self.mapper = mapper
        object.__setattr__(self, "encoder", encoder)

    def forward(self, tokens: torch.Tensor, v: torch.Tensor, visual: torch.Tensor | None) -> torch.Tensor:
        return self.mapper.encode(self.encoder, tokens, v, visual)


def mapping_config(backbone: Backbone, cfg: Stage1Config, token_dim: int) -> MappingConfig:
    encoder = TextEncoder(backbone.model, placeholder_token_id(backbone.tokenizer, cfg.placeholder))
    layers = [] if not cfg.vsi else (cfg.vsi_layers or MappingConfig.default_vsi_layers(encoder.depth))
    image_dim = int(backbone.model.text_projection.shape[-1])
    return MappingConfig(image_dim=image_dim, text_width=encoder.width, text_depth=encoder.depth,
                         token_dim=token_dim, placeholder=cfg.placeholder, placeholder_id=encoder.placeholder_id,
                         dropout=cfg.dropout, vsi_layers=layers, vsi_heads=cfg.vsi_heads,
                         vsi_scope=cfg.vsi_scope, grid=cfg.vsi_tokens)


def _rows(x: np.ndarray, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x[idx.numpy()], dtype=np.float32)).to(device)


def self_retrieval_r1(net: Stage1Net, val: FeatureSet, tokens: torch.Tensor, device: torch.device,
                      use_visual: bool) -> float:
    """'a photo of $' from each val image, ranked against every val image: R@1 (%)."""
    n = len(val.ids)
    outs = []
    with torch.no_grad():
        for s in range(0, n, 512):
            idx = torch.arange(s, min(n, s + 512))
            v = _rows(val.image, idx, device)
            t = _rows(val.tokens, idx, device) if use_visual else None
            outs.append(net(tokens.expand(len(idx), -1), v, t).float().cpu())
    t = torch.cat(outs)
    img = torch.from_numpy(np.asarray(val.image, dtype=np.float32))
    return 100.0 * float(((t @ img.T).argmax(dim=1) == torch.arange(n)).float().mean())


def map_train(ctx: Context, spec: ModelSpec, cfg: Stage1Config, *, resume: bool = False,
              stop_after_epoch: int | None = None) -> Artifact | None:
    device = resolve_device(ctx.device)
    d = init_distributed(device)
    device = device_for(d, device)
    if not d.main:  # one progress display: rank 0's
        ctx = replace(ctx, reporter=NULL_REPORTER)
    data = find_dataset(ctx, cfg.data)
    backbone = load_backbone(spec, cache_dir=ctx.store.root, device=device)
    train_split = load_split(data, "pairs", "train")
    captions = [c or "" for c in train_split["caption"]] if "caption" in train_split.column_names else []
    has_captions = bool(captions) and all(c.strip() for c in captions)
    if cfg.sta and not has_captions:
        ctx.reporter.info("the data set has no captions (or some are empty): soft text alignment is off")
        cfg.sta = False
    if len(train_split) == 0:
        raise UserError(f"Data set {cfg.data} has no usable images.", "Prepare a data set with images.")

    def features(split: str, with_captions: bool) -> FeatureSet:
        ds = load_split(data, "pairs", split)
        gal = DatasetGallery(ds, {"kind": "dataset", "dataset": identity(data), "part": "pairs", "split": split})
        caps = list(ds["caption"]) if with_captions else None
        if d.main:  # rank 0 computes the cache, the others wait and read it
            fs = cached_features(ctx, backbone, gal, grid=cfg.vsi_tokens, captions=caps)
        d.barrier()
        return fs if d.main else cached_features(ctx, backbone, gal, grid=cfg.vsi_tokens, captions=caps)

    train_feats = features("train", cfg.sta)
    has_val = (data.path / "pairs" / "val").is_dir()
    val_feats = features("val", False) if has_val else None

    seed_everything(cfg.seed)
    mcfg = mapping_config(backbone, cfg, int(train_feats.tokens.shape[2]))
    encoder = TextEncoder(backbone.model, mcfg.placeholder_id)
    mapper = Mapper(mcfg).to(device)
    net = Stage1Net(mapper, encoder)
    prompt = backbone.tokenizer([PROMPT.replace("$", cfg.placeholder)]).to(device)  # (1, L)

    def step_fn(model: nn.Module, idx: torch.Tensor, _batch: torch.Tensor):
        v = _rows(train_feats.image, idx, device)
        visual = _rows(train_feats.tokens, idx, device) if mcfg.vsi_layers else None
        with autocast(device):
            t_local = model(prompt.expand(len(idx), -1), v, visual)
        t = gather(t_local.float(), d)
        v_all = gather(v, d)
        contrastive = info_nce(t, v_all, cfg.temperature)
        logs = {"contrastive": contrastive.item()}
        loss = contrastive
        if cfg.sta:
            u = gather(_rows(train_feats.captions, idx, device), d)
            sta = soft_text_alignment(t, u, cfg.temperature, cfg.sta_temperature)
            loss = loss + cfg.sta_weight * sta
            logs["sta"] = sta.item()
        return loss, logs

    def evaluate(module: nn.Module) -> dict[str, Any]:
        if val_feats is None:
            return {}
        return {"val_self_r1": round(self_retrieval_r1(module, val_feats, prompt, device,
                                                       bool(mcfg.vsi_layers)), 2)}

    config = {k: v for k, v in asdict(cfg).items() if k not in ("extra",)}
    config["vsi_layers"] = mcfg.vsi_layers
    config["model"] = backbone.spec.identity()
    key = ctx.store.key_for(KIND, config, [identity(data), identity(train_feats.artifact)])
    found = ctx.store.get(KIND, key)
    if found is not None:  # finished already (with --resume too: nothing is left to do)
        return found
    tspec = TrainSpec(kind=KIND, key=key, config=config, inputs=[identity(data), identity(train_feats.artifact)],
                      seed=cfg.seed, model=backbone.spec.identity(),
                      description=f"{cfg.method} mapping on {data.manifest.get('name', cfg.data)}, "
                                  f"{backbone.spec.label()}, {cfg.epochs} epochs, seed {cfg.seed}",
                      n_items=len(train_feats.ids), batch_size=cfg.batch_size, epochs=cfg.epochs,
                      lr=cfg.lr, weight_decay=cfg.weight_decay,
                      extra_manifest={"method": cfg.method, "placeholder": cfg.placeholder,
                                      "placeholder_id": mcfg.placeholder_id,
                                      "mapping": asdict(mcfg)})
    if tspec.n_items < cfg.batch_size:
        raise UserError(f"The data set has {tspec.n_items} images, fewer than one batch ({cfg.batch_size}).",
                        f"Pass --batch-size {max(2, tspec.n_items // 2 * 2)} or prepare more images.")
    return train(ctx, tspec, net, device=device, d=d, step_fn=step_fn, evaluate=evaluate,
                 finalize=lambda folder: mapper.save(folder), resume=resume, stop_after_epoch=stop_after_epoch)


def find_stage1(ctx: Context, spec: ModelSpec, method: str, run: str | None = None) -> Artifact:
    """The newest Stage I run of this backbone for `method` (pic2word: no VSI, no STA)."""
    flags = " --no-vsi --no-sta" if method == "pic2word" else ""
    missing = UserError(f"No {method} run (Stage I) trained on {spec.label()} in {ctx.store.root}.",
                        f"Train one: zscir map-train --model {spec.name} --pretrained ...{flags}")
    return find_run(ctx, KIND, spec, run, lambda a: a.manifest.get("method") == method, missing)
