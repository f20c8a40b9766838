"""`zscir pretrain`: a small CLIP trained from scratch on the shapes world.

Why a plain loop rather than `open_clip_train`: on this kind of machine (2 CPU cores) the plain
loop was about 30% faster, needs no webdataset shards, and runs under torchrun on the CPU;
OpenCLIP's model classes and `ClipLoss` are used as they are, so the result is an ordinary
OpenCLIP checkpoint.

Images are rendered on the fly from the world's generator (a stream of its own, apart from the
stored splits), so every step sees new scenes. Half of each batch are same-layout copies of the
other half with one attribute changed: hard negatives that force the towers to bind colour,
shape and size rather than layout. Shape changes are drawn more often, since shape is what a
small tower learns last.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from zscir_cli.core.cache import Artifact, identity
from zscir_cli.core.device import autocast, resolve_device, seed_everything
from zscir_cli.data import shapes
from zscir_cli.data.images import DatasetGallery
from zscir_cli.model.backbone import (
    Backbone,
    ModelSpec,
    check_spec,
    load_backbone,
    model_config,
    register_configs,
)
from zscir_cli.pipeline.context import Context
from zscir_cli.pipeline.datasets import find_dataset, load_split
from zscir_cli.pipeline.encode import encode_gallery

KIND = "backbone"
WEIGHTS = "open_clip_model.safetensors"
CONFIG = "open_clip_config.json"
PRETRAIN_STREAM = 4
OPENAI_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
OPENAI_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
HARD_EDITS = ("shape", "shape", "colour", "size", "background")  # drawn uniformly


@dataclass
class PretrainConfig:
    model: str = "zscir-shapes-rn"  # architecture: our shipped config or any OpenCLIP name
    steps: int = 900  # optimiser updates; the number of updates is what a CPU budget buys
    batch_size: int = 64  # pairs per step (half of them hard negatives)
    lr: float = 2e-3  # AdamW peak learning rate
    weight_decay: float = 0.1  # on weight matrices only, not gains, biases or embeddings
    warmup: float = 0.08  # fraction of steps with linear warm-up, then cosine decay
    hard_negatives: float = 0.5  # fraction of each batch that are one-attribute edits
    seed: int = 0  # initialisation and batch stream


def backbone_spec(artifact: Artifact) -> ModelSpec:
    return ModelSpec(artifact.manifest["config"]["model"], str(artifact.path / WEIGHTS))


def find_backbone(ctx: Context) -> Artifact | None:
    found = ctx.store.list(KIND)
    return found[0] if found else None


def _batch(world: shapes.WorldConfig, cfg: PretrainConfig, step: int, tokenizer,
           image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng([world.seed, PRETRAIN_STREAM, cfg.seed, step])
    n_hard = int(cfg.batch_size * cfg.hard_negatives)
    n_base = cfg.batch_size - n_hard
    scenes = [shapes.random_scene(rng) for _ in range(n_base)]
    jitters = [int(rng.integers(2**31)) for _ in range(n_base)]
    for j in range(n_hard):
        base = scenes[j % n_base]
        edit = shapes.apply_edit(rng, base, shapes._pick(rng, HARD_EDITS))
        scenes.append(edit.target)  # same cells as `base`: a same-layout near miss
        jitters.append(jitters[j % n_base])
    pixels = np.stack([np.asarray(shapes.render(s, image_size, np.random.default_rng(jt)))
                       for s, jt in zip(scenes, jitters)])
    images = torch.from_numpy(((pixels.astype(np.float32) / 255.0 - OPENAI_MEAN) / OPENAI_STD)
                              .transpose(0, 3, 1, 2).copy())
    captions = [shapes.caption(s, int(rng.integers(len(shapes.CAPTION_TEMPLATES)))) for s in scenes]
    return images, tokenizer(captions)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or \
            "logit_scale" in name or "embedding" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimizer(model: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg.weight_decay)
    try:  # the fused kernel is 10x faster on the CPU than the per-tensor loop
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)


def lr_at(step: int, cfg: PretrainConfig) -> float:
    warm = max(1, int(cfg.warmup * cfg.steps))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    progress = (step - warm) / max(1, cfg.steps - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def pretrain(ctx: Context, cfg: PretrainConfig, dataset: str = "shapes",
             force: bool = False) -> tuple[Artifact, bool]:
    """Train (or find in the cache) the base CLIP; returns (artifact, trained_now)."""
    import open_clip
    from safetensors.torch import save_file

    register_configs()
    data = find_dataset(ctx, dataset)
    config = asdict(cfg)
    key = ctx.store.key_for(KIND, config, [identity(data)])
    found = ctx.store.get(KIND, key)
    if found is not None and not force:
        return found, False
    ctx.store.ensure_writable()
    arch = model_config(cfg.model)
    if arch is None:
        check_spec(ModelSpec(cfg.model))  # raises the 'unknown model' error with choices
    world = shapes.WorldConfig(**{k: v for k, v in data.manifest["config"].items()
                                  if k in shapes.WorldConfig.__dataclass_fields__})
    device = resolve_device(ctx.device)
    seed_everything(cfg.seed)
    model = open_clip.create_model(cfg.model, pretrained=None, device=device, output_dict=True)
    tokenizer = open_clip.get_tokenizer(cfg.model)
    image_size = int(model.visual.image_size[0] if isinstance(model.visual.image_size, tuple)
                     else model.visual.image_size)
    channels_last = device.type == "cpu"  # oneDNN convolutions run ~1.4x faster in NHWC
    if channels_last:
        model.visual.to(memory_format=torch.channels_last)
    loss_fn = open_clip.ClipLoss()
    opt = _optimizer(model, cfg)
    model.train()
    log: list[dict[str, Any]] = []
    t0 = time.time()
    with ctx.reporter.task(f"pretraining {cfg.model}", total=cfg.steps) as task:
        for step in range(cfg.steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg)
            images, tokens = _batch(world, cfg, step, tokenizer, image_size)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device):
                out = model(images.to(device), tokens.to(device))
                loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            if step % 20 == 0 or step == cfg.steps - 1:
                log.append({"step": step, "loss": round(loss.item(), 5), "lr": opt.param_groups[0]["lr"],
                            "elapsed_s": round(time.time() - t0, 2)})
            task.advance(1, loss=loss.item())
    train_seconds = time.time() - t0
    model.eval()
    with ctx.store.create(KIND, key, config=config, inputs=[identity(data)], seed=cfg.seed,
                          description=f"{cfg.model} trained {cfg.steps} steps on shapes "
                                      f"(seed {cfg.seed})") as out:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out.path / WEIGHTS))
        (out.path / CONFIG).write_text(json.dumps({"model_cfg": arch, "preprocess_cfg": {}}, indent=2))
        (out.path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
        spec = ModelSpec(cfg.model, str(out.path / WEIGHTS))
        backbone = load_backbone(spec, device=device)
        report = evaluate_backbone(ctx, backbone, data)
        report["train_seconds"] = round(train_seconds, 1)
        (out.path / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
        out.manifest["eval"] = report
        out.manifest["model"] = {"name": cfg.model, "weights": WEIGHTS}
    return ctx.store.get(KIND, key), True  # type: ignore[return-value]


# -- validation ----------------------------------------------------------------------------------

def _swap_probes(scene: shapes.Scene) -> dict[str, list[tuple[str, list[str]]]]:
    """Per attribute: (true caption, captions with that one attribute changed) pairs."""
    probes: dict[str, list[tuple[str, list[str]]]] = {"colour": [], "shape": [], "size": [],
                                                      "background": [], "binding": []}
    true = shapes.caption(scene)
    objs = list(scene.objects)

    def cap(new_objs, bg=scene.background) -> str:
        return shapes.caption(shapes.Scene(bg, tuple(new_objs)))

    for i, o in enumerate(objs):
        for attr, values in (("colour", shapes.COLOURS), ("shape", shapes.SHAPES), ("size", shapes.SIZES)):
            alts = [cap(objs[:i] + [replace(o, **{attr: v})] + objs[i + 1:])
                    for v in values if v != getattr(o, attr)]
            probes[attr].append((true, alts))
    probes["background"].append((true, [cap(objs, b) for b in shapes.BACKGROUNDS if b != scene.background]))
    if len(objs) >= 2 and objs[0].colour != objs[1].colour:  # swap two objects' colours
        swapped = [replace(objs[0], colour=objs[1].colour),
                   replace(objs[1], colour=objs[0].colour)] + objs[2:]
        probes["binding"].append((true, [cap(swapped)]))
    return probes


@torch.inference_mode()
def evaluate_backbone(ctx: Context, backbone: Backbone, data: Artifact, limit: int = 1000) -> dict[str, Any]:
    """Caption retrieval R@1 among the val captions, and zero-shot attribute accuracies (%)."""
    val = load_split(data, "pairs", "val")
    val = val.select(range(min(limit, len(val))))
    enc = encode_gallery(ctx, backbone, DatasetGallery(val, {}), description="validating backbone")
    img = torch.from_numpy(enc.features)
    captions = list(val["caption"])
    txt = torch.cat([backbone.encode_texts(captions[i:i + 256]).cpu() for i in range(0, len(captions), 256)])
    best = (img @ txt.T).argmax(dim=1).tolist()
    i2t = float(np.mean([captions[b] == captions[i] for i, b in enumerate(best)])) * 100
    best_t = (txt @ img.T).argmax(dim=1).tolist()
    t2i = float(np.mean([captions[b] == captions[i] for i, b in enumerate(best_t)])) * 100
    scenes = [shapes.Scene.from_json(s) for s in val["scene"]]
    probes = [_swap_probes(scene) for scene in scenes]
    # encode every distinct probe caption once, in large batches
    texts = sorted({t for p in probes for items in p.values() for true, alts in items for t in [true, *alts]})
    row_of = {t: i for i, t in enumerate(texts)}
    probe_feats = torch.cat([backbone.encode_texts(texts[i:i + 512]).cpu() for i in range(0, len(texts), 512)])
    acc: dict[str, list[bool]] = {}
    for row, p in enumerate(probes):
        for attr, items in p.items():
            for true, alts in items:
                scores = probe_feats[[row_of[true]] + [row_of[a] for a in alts]] @ img[row]
                acc.setdefault(attr, []).append(bool(scores[0] > scores[1:].max()))
    out = {"val_images": len(captions), "caption_r1": round(i2t, 2), "text_to_image_r1": round(t2i, 2)}
    out.update({f"{k}_acc": round(100 * float(np.mean(v)), 2) for k, v in acc.items() if v})
    return out
