"""`zscir pretrain`: a small CLIP trained from scratch on the shapes world.

Why our loop rather than `open_clip_train`: on this kind of machine (2 CPU cores) it was about
30% faster, needs no webdataset shards, and runs under torchrun on the CPU; OpenCLIP's model
classes and `ClipLoss` are used as they are, so the result is an ordinary OpenCLIP checkpoint.
The loop is the one both stages use (`jobs/training/loop.py`): per-epoch checkpoints ("epochs"
of `steps_per_epoch` steps), `--resume`, torchrun, a lock per run.

Images are rendered on the fly from the world's pretraining stream (`shapes.pretrain_batch`:
train scenes only, captions as on the web, half of each batch same-layout hard negatives), so
every step sees new scenes: a batch is a function of the global step.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zscir_cli.core.cache import Artifact, identity
from zscir_cli.core.device import autocast, resolve_device, seed_everything
from zscir_cli.core.errors import UserError
from zscir_cli.core.progress import NULL_REPORTER
from zscir_cli.data import shapes
from zscir_cli.jobs.backbones import CONFIG, KIND, WEIGHTS, user_errors
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.datasets.store import find_dataset
from zscir_cli.jobs.distributed import Dist, device_for, gather, init_distributed, world_size
from zscir_cli.jobs.training.ahead import StepBatches
from zscir_cli.jobs.training.clip_check import evaluate_backbone
from zscir_cli.jobs.training.config import PretrainConfig
from zscir_cli.jobs.training.loop import TrainSpec, partial_path, train
from zscir_cli.model.backbone import (
    ModelSpec,
    check_spec,
    load_backbone,
    model_config,
    register_configs,
)
from zscir_cli.model.tokenizers import tokenizer_of

OPENAI_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
OPENAI_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
LOG_EVERY = 20  # steps between metrics records


def _batch(world: shapes.WorldConfig, cfg: PretrainConfig, step: int, tokenizer, image_size: int,
           rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
    """Step `step`'s batch (`shapes.pretrain_batch`), only its `rows` rendered (a process's share
    under torchrun)."""
    scenes, jitters, captions = shapes.pretrain_batch(world.seed, cfg.seed, step, cfg.batch_size,
                                                      cfg.hard_negatives, cfg.absence_negatives)
    pixels = np.stack([np.asarray(shapes.render(s, image_size, np.random.default_rng(jt)))
                       for s, jt in zip(scenes[rows], jitters[rows])])
    images = torch.from_numpy(((pixels.astype(np.float32) / 255.0 - OPENAI_MEAN) / OPENAI_STD)
                              .transpose(0, 3, 1, 2).copy())
    return images, tokenizer(captions[rows])


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


def render_workers(ctx: Context, device: torch.device) -> int:
    """Processes that render the next steps while the model trains: as many as asked; by default
    none on the CPU, where a worker takes its cores from the training's threads (2 cores: 0.96x
    the speed, `benchmarks/pretrain_workers.py`), and one per spare core on an accelerator (CUDA,
    MPS), which would otherwise wait for a batch rendered between its steps."""
    if ctx.workers is not None:
        return max(0, ctx.workers)
    return 0 if device.type == "cpu" else ctx.num_workers()


def shapes_world(data: Artifact) -> shapes.WorldConfig:
    """The world a prepared data set was generated from; only the shapes world can be rendered."""
    config = data.manifest.get("config", {})
    if "generator" not in config:
        raise UserError(f"zscir pretrain needs the shapes world, and data set '{data.manifest.get('name', data.key)}' "
                        "is not one (pretraining renders new scenes of the world at every step).",
                        "Prepare one with 'zscir prepare shapes' and pass its name (default: shapes); "
                        "for your own images, use a pretrained backbone (--model/--pretrained) with map-train.")
    return shapes.WorldConfig(**{k: v for k, v in config.items() if k in shapes.WorldConfig.__dataclass_fields__})


def run_config(cfg: PretrainConfig) -> dict[str, Any]:
    """What names a pretraining run: its settings and the number of processes (BatchNorm
    statistics are per process, so N processes do not give one process's weights)."""
    return {**{k: v for k, v in asdict(cfg).items() if k != "data"}, "world_size": world_size()}


def pretrain(ctx: Context, cfg: PretrainConfig, force: bool = False,
             resume: bool = False, stop_after_epoch: int | None = None) -> tuple[Artifact, bool]:
    """Train (or find in the cache) the base CLIP on the data set `cfg.data`; returns (artifact,
    built_now). With `stop_after_epoch`, the artifact is None when the run stopped there."""
    register_configs()
    data = find_dataset(ctx, cfg.data)
    world = shapes_world(data)
    config = run_config(cfg)
    key = ctx.store.key_for(KIND, config, [identity(data)])
    found = ctx.store.get(KIND, key)
    if found is not None and not force:
        return found, False
    if model_config(cfg.model) is None:
        with user_errors():
            check_spec(ModelSpec(cfg.model))  # raises the 'unknown model' error with choices
    ctx.store.ensure_writable()
    device = resolve_device(ctx.device)
    d = init_distributed(device)
    device = device_for(d, device)
    if not d.main:  # one progress display: rank 0's
        ctx = replace(ctx, reporter=NULL_REPORTER)
    if force and d.main:
        _clear(ctx, key)
    return _train(ctx, cfg, world, data, key, device, d, resume, stop_after_epoch)  # type: ignore[return-value]


def _clear(ctx: Context, key: str) -> None:
    """--force: the old artifact and any interrupted run of it go, under the run's lock."""
    with ctx.store.lock(KIND, key, on_wait=ctx.reporter.info):
        old = ctx.store.get(KIND, key)
        if old is not None:
            ctx.store.remove(old)
        shutil.rmtree(partial_path(ctx.store.root, KIND, key), ignore_errors=True)


def _train(ctx: Context, cfg: PretrainConfig, world: shapes.WorldConfig, data: Artifact, key: str,
           device: torch.device, d: Dist, resume: bool,
           stop_after_epoch: int | None) -> tuple[Artifact | None, bool]:
    import open_clip
    from safetensors.torch import save_file

    seed_everything(cfg.seed)
    model = open_clip.create_model(cfg.model, pretrained=None, device=device, output_dict=True)
    tokenizer = tokenizer_of(cfg.model)
    size = model.visual.image_size
    image_size = int(size[0] if isinstance(size, tuple) else size)
    channels_last = device.type == "cpu"  # oneDNN convolutions run ~1.4x faster in NHWC
    if channels_last:
        model.visual.to(memory_format=torch.channels_last)
    loss_fn = open_clip.ClipLoss()
    local = cfg.batch_size // d.world
    mine = slice(d.rank * local, (d.rank + 1) * local)

    def step_fn(net: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor], _step: int):
        images, tokens = batch
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            out = net(images.to(device), tokens.to(device))
            # the whole global batch's features: N processes compute one process's loss
            loss = loss_fn(gather(out["image_features"], d), gather(out["text_features"], d), out["logit_scale"])
        return loss, {}

    def clamp(net: torch.nn.Module) -> None:
        with torch.no_grad():
            net.logit_scale.clamp_(0, math.log(100))

    def state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}

    report: dict[str, Any] = {}
    built: list[bool] = []  # set when this process completes the run (not when another did)

    def conclude(net: torch.nn.Module, records: list[dict[str, Any]]) -> dict[str, Any]:
        built.append(True)
        report.update(_evaluate_weights(ctx, cfg.model, state(net), data, device))
        report["train_seconds"] = round(records[-1]["elapsed_s"] if records else 0.0, 1)
        return {"eval": report, "model": {"name": cfg.model, "weights": WEIGHTS}}

    def finalize(folder: Path) -> None:
        save_file(state(model), str(folder / WEIGHTS))
        (folder / CONFIG).write_text(json.dumps({"model_cfg": model_config(cfg.model), "preprocess_cfg": {}},
                                                indent=2))
        (folder / "eval.json").write_text(json.dumps(report, indent=2) + "\n")

    ahead = StepBatches(functools.partial(_batch, world, cfg, tokenizer=tokenizer, image_size=image_size, rows=mine),
                        cfg.steps, render_workers(ctx, device))
    spec = TrainSpec(kind=KIND, key=key, config=run_config(cfg), inputs=[identity(data)], seed=cfg.seed, model=None,
                     description=f"{cfg.model} trained {cfg.steps} steps on shapes (seed {cfg.seed})",
                     n_items=cfg.steps * cfg.batch_size, batch_size=cfg.batch_size, epochs=cfg.epochs,
                     lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps,
                     steps_per_epoch=cfg.steps_per_epoch, total_steps=cfg.steps, log_every=LOG_EVERY)
    try:
        art = train(ctx, spec, model, device=device, d=d, step_fn=step_fn, finalize=finalize, resume=resume,
                    stop_after_epoch=stop_after_epoch, conclude=conclude, after_step=clamp,
                    optimizer=lambda net: _optimizer(net, cfg),
                    batches=lambda g: (ahead(g), g))
    finally:
        ahead.close()
    return art, bool(built) or (art is not None and not d.main)


def _evaluate_weights(ctx: Context, name: str, weights: dict[str, torch.Tensor], data: Artifact,
                      device: torch.device) -> dict[str, Any]:
    """Evaluate trained weights as `--pretrained FILE` would load them (a fresh fp32 model)."""
    from safetensors.torch import save_file

    with ctx.store.scratch("backbone-eval") as tmp:
        path = Path(tmp) / WEIGHTS
        save_file(weights, str(path))
        return evaluate_backbone(ctx, load_backbone(ModelSpec(name, str(path)), device=device), data)
