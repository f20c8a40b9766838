"""The training machinery both stages share: epochs over cached features, checkpoints that a
run can resume from, data-parallel training under torchrun, metrics and progress.

A run in progress lives in `<cache>/.partial/<kind>-<key>/`; after every epoch it holds the
trainable weights, the optimiser and RNG states, and `metrics.jsonl`, each written atomically,
so Ctrl-C (or a crash) leaves the last complete epoch usable by `--resume`. A finished run
becomes an ordinary artifact (kind `stage1` or `stage2`) and the partial folder is removed.

Determinism: batch order is a function of (seed, epoch) and the torch RNG state (dropout) is
saved with each checkpoint, so on the CPU a resumed run reaches the same weights as an
uninterrupted one.

Data parallel: under `torchrun`, each of the N processes takes its slice of every global batch;
losses gather the features of the whole batch (with gradients), so the loss is that of one
process with the same global batch. Only rank 0 writes anything.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from zscir_cli.core.cache import Artifact
from zscir_cli.core.errors import UserError
from zscir_cli.pipeline.context import Context

PARTIAL = ".partial"
STATE = "state.pt"
WEIGHTS = "trainable.safetensors"
METRICS = "metrics.jsonl"


# -- distributed -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_distributed(device: torch.device) -> Dist:
    """Join the process group that torchrun describes in the environment (gloo on the CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def device_for(d: Dist, device: torch.device) -> torch.device:
    if device.type == "cuda" and d.world > 1:
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return device


def gather(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Concatenate every rank's rows in rank order, keeping gradients for the local rows."""
    if d.world == 1:
        return x
    import torch.distributed.nn.functional as dnn

    return torch.cat(dnn.all_gather(x), dim=0)


# -- runs --------------------------------------------------------------------------------------

@dataclass
class TrainSpec:
    kind: str  # artifact kind: stage1, stage2
    key: str  # content key of config + inputs
    config: dict[str, Any]
    inputs: list[dict[str, Any]]
    seed: int
    model: dict[str, Any]  # backbone identity
    description: str
    n_items: int  # training examples
    batch_size: int  # global batch
    epochs: int
    lr: float
    weight_decay: float
    warmup_steps: int = 0
    extra_manifest: dict[str, Any] = field(default_factory=dict)


def find_run(ctx: Context, kind: str, spec, run: str | None, where, missing: UserError) -> Artifact:
    """The run named `run` (it must be of `spec`'s backbone), else the newest of `kind` for the
    backbone that `where(artifact)` accepts; `missing` is raised when there is none."""
    if run:
        art = ctx.store.resolve(run if "/" in run else f"{kind}/{run}")
        if art.manifest.get("model") != spec.identity():
            raise UserError(f"{kind} run {art.key} was trained on another backbone than {spec.label()}.",
                            "Use a run of the same --model/--pretrained, or train one for this backbone.")
        return art
    ident = spec.identity()
    found = ctx.store.find(kind, lambda a: a.manifest.get("model") == ident and where(a))
    if not found:
        raise missing
    return found[0]


class Partial:
    """The folder of a run in progress."""

    def __init__(self, ctx: Context, kind: str, key: str):
        self.path = ctx.store.root / PARTIAL / f"{kind}-{key}"

    def exists(self) -> bool:
        return (self.path / STATE).is_file()

    def epoch(self) -> int:
        return int(torch.load(self.path / STATE, weights_only=True)["epoch"]) if self.exists() else 0


def other_partials(ctx: Context, kind: str) -> list[dict[str, Any]]:
    root = ctx.store.root / PARTIAL
    out = []
    for p in sorted(root.glob(f"{kind}-*")) if root.is_dir() else []:
        cfg = p / "config.json"
        if cfg.is_file():
            out.append(json.loads(cfg.read_text()))
    return out


def _describe_difference(want: dict[str, Any], have: dict[str, Any]) -> str:
    diffs = [f"{k}={have.get(k)!r} (now {want.get(k)!r})" for k in sorted(set(want) | set(have))
             if want.get(k) != have.get(k)]
    return ", ".join(diffs[:6])


def _save_atomic(write: Callable[[Path], None], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.incomplete")
    write(tmp)
    os.replace(tmp, path)


def train(ctx: Context, spec: TrainSpec, module: nn.Module, *, device: torch.device, d: Dist,
          step_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]],
          evaluate: Callable[[nn.Module], dict[str, Any]] | None = None,
          on_epoch_start: Callable[[nn.Module, int], None] | None = None,
          finalize: Callable[[Path], None] | None = None,
          resume: bool = False, stop_after_epoch: int | None = None) -> Artifact | None:
    """Train `module`'s trainable parameters; returns the finished artifact (None if stopped early).

    step_fn(model, local_indices, batch_indices) -> (loss, logs): the loss of the global batch
    `batch_indices`, of which this rank holds `local_indices`.
    """
    from safetensors.torch import load_file, save_file

    partial = Partial(ctx, spec.kind, spec.key)
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise UserError("Nothing to train: every parameter is frozen.", "Check the stage's options.")
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    steps_per_epoch = max(1, spec.n_items // spec.batch_size)
    total = steps_per_epoch * spec.epochs
    start_epoch = 0
    if resume:
        if not partial.exists():
            others = other_partials(ctx, spec.kind)
            hint = ("; an interrupted run differs in " + "; ".join(
                _describe_difference(spec.config, o) for o in others[:3])) if others else ""
            raise UserError(f"No interrupted {spec.kind} run with these settings to resume{hint}.",
                            "Run the same command as the interrupted run plus --resume, or drop --resume.")
        state = torch.load(partial.path / STATE, weights_only=True)
        module.load_state_dict({**module.state_dict(), **load_file(str(partial.path / WEIGHTS))})
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start_epoch = int(state["epoch"])
        ctx.reporter.info(f"resuming {spec.kind} run {spec.key} after epoch {start_epoch}")
    elif partial.exists() and d.main:
        ctx.reporter.info(f"an interrupted run with these settings stopped after epoch {partial.epoch()}; "
                          "starting over (add --resume to continue it)")
        shutil.rmtree(partial.path)
    if d.main:
        partial.path.mkdir(parents=True, exist_ok=True)
        (partial.path / "config.json").write_text(json.dumps(spec.config, indent=2, default=str))
        if not resume:
            (partial.path / METRICS).write_text("")
    d.barrier()

    model = module
    if d.world > 1:
        model = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)
    local = spec.batch_size // d.world
    if local * d.world != spec.batch_size:
        raise UserError(f"--batch-size {spec.batch_size} does not divide over {d.world} processes.",
                        f"Use a multiple of {d.world}.")
    t0 = time.time()
    with ctx.reporter.task(f"{spec.kind} training", total=total) as task:
        task.advance(start_epoch * steps_per_epoch)
        for epoch in range(start_epoch, spec.epochs):
            module.train()
            if on_epoch_start is not None:
                on_epoch_start(module, epoch)
            order = torch.randperm(spec.n_items, generator=torch.Generator().manual_seed(
                spec.seed * 100003 + epoch))
            sums: dict[str, float] = {}
            seen = 0
            for step in range(steps_per_epoch):
                g = epoch * steps_per_epoch + step
                for group in opt.param_groups:
                    group["lr"] = _lr(spec, g, total)
                batch = order[step * spec.batch_size:(step + 1) * spec.batch_size]
                mine = batch[d.rank * local:(d.rank + 1) * local]
                loss, logs = step_fn(model, mine, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                logs = {"loss": loss.item(), **logs}
                for k, v in logs.items():
                    sums[k] = sums.get(k, 0.0) + v
                seen += 1
                task.advance(1, loss=logs["loss"], ex_s=(g + 1 - start_epoch * steps_per_epoch)
                             * spec.batch_size / max(1e-9, time.time() - t0))
            record: dict[str, Any] = {"epoch": epoch + 1, **{k: v / seen for k, v in sums.items()},
                                      "lr": opt.param_groups[0]["lr"], "elapsed_s": round(time.time() - t0, 2)}
            if evaluate is not None and d.main:
                module.eval()
                record.update(evaluate(module))
            if d.main:
                state_dict = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()
                              if k in _trainable_names(module)}
                state = {"optimizer": opt.state_dict(), "rng": torch.get_rng_state(), "epoch": epoch + 1}
                _save_atomic(lambda p, sd=state_dict: save_file(sd, str(p)), partial.path / WEIGHTS)
                _save_atomic(lambda p, st=state: torch.save(st, p), partial.path / STATE)
                with open(partial.path / METRICS, "a") as f:
                    f.write(json.dumps(record) + "\n")
            d.barrier()
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch and epoch + 1 < spec.epochs:
                return None
    module.eval()
    if not d.main:
        d.barrier()
        return ctx.store.get(spec.kind, spec.key)
    metrics = [json.loads(line) for line in (partial.path / METRICS).read_text().splitlines() if line]
    with ctx.store.create(spec.kind, spec.key, config=spec.config, inputs=spec.inputs, seed=spec.seed,
                          model=spec.model, description=spec.description) as out:
        if finalize is not None:
            finalize(out.path)
        shutil.copy(partial.path / METRICS, out.path / METRICS)
        out.manifest.update(spec.extra_manifest)
        out.manifest["final"] = metrics[-1] if metrics else {}
        out.manifest["train_seconds"] = round(time.time() - t0, 2)
        out.manifest["world_size"] = d.world
    shutil.rmtree(partial.path, ignore_errors=True)
    d.barrier()
    return ctx.store.get(spec.kind, spec.key)


def _trainable_names(module: nn.Module) -> set[str]:
    names = {n for n, p in module.named_parameters() if p.requires_grad}
    names |= {n for n, _ in module.named_buffers()}
    return names


def _lr(spec: TrainSpec, step: int, total: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, total - spec.warmup_steps)
    return spec.lr * 0.5 * (1 + math.cos(math.pi * progress))
