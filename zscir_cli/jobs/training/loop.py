"""The one training loop: `zscir pretrain`, Stage I and Stage II all run through `train`.

A run in progress lives in `<cache>/.partial/<kind>-<key>/`: `run.json` and, after every epoch,
ONE checkpoint (trainable weights, optimiser and RNG states, metrics so far) written to a name of
its own, fsync'd, then renamed over the last one: a crash at any instant leaves one whole epoch.
Rank 0 holds the run's lock (kind, key) throughout, so two identical commands never both train.
Batches are a function of the global step and the RNG state is checkpointed, so a resumed run
reaches an uninterrupted run's weights. Under torchrun each process takes its slice of every
global batch and the losses gather the whole batch, so N processes follow one process's loss.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zscir_cli.core import faults
from zscir_cli.core.cache import Artifact
from zscir_cli.core.durable import write_atomically
from zscir_cli.core.errors import UserError
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.distributed import Dist, device_for, gather, init_distributed  # noqa: F401 - re-exported

PARTIAL = ".partial"
CHECKPOINT = "checkpoint.pt"
RUN = "run.json"
METRICS = "metrics.jsonl"


@dataclass
class TrainSpec:
    kind: str  # artifact kind: backbone, stage1, stage2
    key: str  # content key of config + inputs
    config: dict[str, Any]
    inputs: list[dict[str, Any]]
    seed: int
    model: dict[str, Any] | None  # backbone identity
    description: str
    n_items: int  # training examples
    batch_size: int  # global batch
    epochs: int
    lr: float
    weight_decay: float
    warmup_steps: int = 0
    extra_manifest: dict[str, Any] = field(default_factory=dict)
    steps_per_epoch: int | None = None  # None: one pass over the items
    total_steps: int | None = None  # None: epochs x steps per epoch (else the last epoch is shorter)
    log_every: int | None = None  # None: one metrics record per epoch; N: one every N steps

    @property
    def epoch_steps(self) -> int:
        return self.steps_per_epoch or max(1, self.n_items // self.batch_size)

    @property
    def total(self) -> int:
        return self.total_steps or self.epoch_steps * self.epochs


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to zero at `total`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def existing_run(ctx: Context, kind: str, key: str, d: Dist, *, force: bool = False) -> Artifact | None:
    """The finished run with this key, said so (a rerun returns it without training); with
    `force`, it and any interrupted run of it are removed under its lock, and None is returned.
    Rank 0 decides, every rank gets the same answer."""
    if not d.main:
        return d.share(None)
    found = ctx.store.get(kind, key)
    if found is not None and force:
        with ctx.store.lock(kind, key, on_wait=ctx.reporter.info):
            again = ctx.store.get(kind, key)
            if again is not None:
                ctx.store.remove(again)
            shutil.rmtree(partial_path(ctx.store.root, kind, key), ignore_errors=True)
        found = None
    elif found is not None:
        ctx.reporter.info(f"already trained: {kind} run {key} ({found.description}); "
                          "pass --force to train it again")
    return d.share(found)


# -- checkpoints and partial folders -------------------------------------------------------------

def partial_path(root: Path, kind: str, key: str) -> Path:
    return Path(root) / PARTIAL / f"{kind}-{key}"


def save_checkpoint(state: dict[str, Any], folder: Path) -> None:
    write_atomically(folder / CHECKPOINT, lambda f: torch.save(state, f), kill_point="checkpoint:before-replace")
    faults.point("checkpoint:after-replace")


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    path = folder / CHECKPOINT
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file; a line torn by a crash (or anything unparsable) is skipped."""
    records = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return [r for r in records if isinstance(r, dict)]


def interrupted_runs(root: Path) -> list[dict[str, Any]]:
    """Every run folder under `<root>/.partial/`, with the epoch its checkpoint reached (0: none)."""
    base = Path(root) / PARTIAL
    out = []
    for p in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
        kind, _, key = p.name.partition("-")
        info: dict[str, Any] = {"kind": kind, "key": key, "path": p, "epoch": 0, "epochs": None,
                                "config": {}, "description": ""}
        with contextlib.suppress(OSError, ValueError, TypeError):  # no run.json yet: what the name says
            info.update({k: v for k, v in json.loads((p / RUN).read_text()).items() if k != "path"})
        with contextlib.suppress(Exception):  # no checkpoint, or an unreadable one: epoch 0
            info["epoch"] = int(torch.load(p / CHECKPOINT, map_location="cpu", weights_only=True,
                                           mmap=True)["epoch"])
        out.append(info)
    return out


def _describe_difference(want: dict[str, Any], have: dict[str, Any]) -> str:
    diffs = [f"{k}={have.get(k)!r} (now {want.get(k)!r})" for k in sorted(set(want) | set(have))
             if want.get(k) != have.get(k)]
    return ", ".join(diffs[:6]) or "its inputs (data, features or library versions)"  # never empty


def _no_run_to_resume(ctx: Context, spec: TrainSpec) -> tuple[str, str]:
    others = [r for r in interrupted_runs(ctx.store.root) if r["kind"] == spec.kind and r["key"] != spec.key]
    hint = "".join(f"; an interrupted run differs in {_describe_difference(spec.config, r['config'])}"
                   for r in others[:3])
    return (f"No interrupted {spec.kind} run with these settings to resume{hint}.",
            "Run the same command as the interrupted run plus --resume, or drop --resume.")


def _open_partial(ctx: Context, spec: TrainSpec, folder: Path, resume: bool) -> tuple[str, str] | None:
    """Rank 0, under the run's lock: keep, clear or create the partial folder. Returns the
    (message, hint) of a UserError when there is nothing to resume."""
    say = ctx.reporter.info
    state = load_checkpoint(folder)
    epoch = int(state["epoch"]) if state is not None else 0
    if resume and not folder.is_dir():
        return _no_run_to_resume(ctx, spec)
    if resume and state is None:
        say(f"the interrupted {spec.kind} run had not finished an epoch: starting it afresh")
        shutil.rmtree(folder)
    elif resume:
        say(f"resuming {spec.kind} run {spec.key} after epoch {epoch}")
    elif state is not None and epoch >= spec.epochs:
        say(f"an interrupted {spec.kind} run with these settings had finished training: completing it")
    elif folder.is_dir():
        if state is not None:
            say(f"an interrupted run with these settings stopped after epoch {epoch}; "
                "starting over (add --resume to continue it)")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".*.incomplete"):  # a killed writer's leftovers; we hold the lock
        stale.unlink(missing_ok=True)
    run = {"kind": spec.kind, "key": spec.key, "epochs": spec.epochs, "description": spec.description}
    write_atomically(folder / RUN, json.dumps({**run, "config": spec.config}, default=str).encode())
    return None


# -- the loop ----------------------------------------------------------------------------------

def shuffled(spec: TrainSpec, d: Dist) -> Callable[[int], tuple[torch.Tensor, torch.Tensor]]:
    """Index batches: a permutation of the items per (seed, epoch); each rank takes its slice."""
    local, size = spec.batch_size // d.world, spec.batch_size

    @functools.lru_cache(maxsize=1)
    def order(epoch: int) -> torch.Tensor:
        return torch.randperm(spec.n_items, generator=torch.Generator().manual_seed(spec.seed * 100003 + epoch))

    def batches(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(step, spec.epoch_steps)
        batch = order(epoch)[i * size:(i + 1) * size]
        return batch[d.rank * local:(d.rank + 1) * local], batch
    return batches


@dataclass
class Hooks:
    step_fn: Callable[[nn.Module, Any, Any], tuple[torch.Tensor, dict[str, float]]]  # -> (loss, logs)
    batches: Callable[[int], tuple[Any, Any]] | None = None  # global step -> (local part, global batch)
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None  # default: AdamW, one group
    after_step: Callable[[nn.Module], None] | None = None  # after opt.step (e.g. clamp a parameter)
    on_epoch_start: Callable[[nn.Module, int], None] | None = None
    evaluate: Callable[[nn.Module], dict[str, Any]] | None = None  # rank 0, after every epoch
    # rank 0, at the end, outside the artifact's atomic write (a failure keeps the last checkpoint):
    conclude: Callable[[nn.Module, list[dict[str, Any]]], dict[str, Any]] | None = None  # -> manifest fields
    finalize: Callable[[Path], None] | None = None  # writes the artifact's files


def train(ctx: Context, spec: TrainSpec, module: nn.Module, *, device: torch.device, d: Dist, resume: bool = False,
          stop_after_epoch: int | None = None, **hooks: Any) -> Artifact | None:
    """Train `module`'s trainable parameters; returns the finished artifact (None if stopped early).
    hooks: `Hooks`' fields; step_fn(model, local, batch) is the loss of the global batch `batch`, of
    which this rank holds `local` (index tensors from `shuffled` unless `batches` says otherwise)."""
    h = Hooks(**hooks)
    if not any(p.requires_grad for p in module.parameters()):
        raise UserError("Nothing to train: every parameter is frozen.", "Check the stage's options.")
    if spec.batch_size % d.world:
        raise UserError(f"--batch-size {spec.batch_size} does not divide over {d.world} processes.",
                        f"Use a multiple of {d.world}.")
    if d.main:
        ctx.store.ensure_writable()
    lock = ctx.store.lock(spec.kind, spec.key, on_wait=ctx.reporter.info) if d.main else contextlib.nullcontext()
    with lock:
        # another process may have finished this very run while we waited for its lock
        if d.share(ctx.store.get(spec.kind, spec.key) is not None):
            return ctx.store.get(spec.kind, spec.key)
        folder = partial_path(ctx.store.root, spec.kind, spec.key)
        problem = d.share(_open_partial(ctx, spec, folder, resume) if d.main else None)
        if problem is not None:
            raise UserError(*problem)
        return _Run(ctx, spec, module, device, d, h, folder).run(stop_after_epoch)


class _Run:
    def __init__(self, ctx: Context, spec: TrainSpec, module: nn.Module, device: torch.device, d: Dist,
                 hooks: Hooks, folder: Path):
        self.ctx, self.spec, self.module, self.d, self.h, self.folder = ctx, spec, module, d, hooks, folder
        self.opt = hooks.optimizer(module) if hooks.optimizer else torch.optim.AdamW(
            [p for p in module.parameters() if p.requires_grad], lr=spec.lr, weight_decay=spec.weight_decay)
        self.batches = hooks.batches or shuffled(spec, d)
        state = load_checkpoint(folder)
        if state is not None:
            module.load_state_dict({**module.state_dict(), **state["weights"]})
            self.opt.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])
        self.start = int(state["epoch"]) if state else 0
        self.records: list[dict[str, Any]] = list(state["metrics"]) if state else []
        self.elapsed0 = float(state.get("elapsed_s", 0.0)) if state else 0.0
        self.model = module
        if d.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                module, device_ids=[device.index] if device.type == "cuda" else None)
        self.t0 = time.time()

    def elapsed(self) -> float:
        return self.elapsed0 + time.time() - self.t0

    def run(self, stop_after_epoch: int | None) -> Artifact | None:
        spec = self.spec
        with self.ctx.reporter.task(f"{spec.kind} training", total=spec.total) as task:
            task.advance(min(spec.total, self.start * spec.epoch_steps))
            for epoch in range(self.start, spec.epochs):
                self.epoch(epoch, task)
                if stop_after_epoch is not None and stop_after_epoch <= epoch + 1 < spec.epochs:
                    return None
        return self.finish()

    def epoch(self, epoch: int, task) -> None:
        spec, opt, h = self.spec, self.opt, self.h
        self.module.train()
        if h.on_epoch_start is not None:
            h.on_epoch_start(self.module, epoch)
        sums: dict[str, float] = {}
        first, last = epoch * spec.epoch_steps, min(spec.total, (epoch + 1) * spec.epoch_steps)
        for g in range(first, last):
            for group in opt.param_groups:
                group["lr"] = lr_at(g, spec.lr, spec.warmup_steps, spec.total)
            local, batch = self.batches(g)
            loss, logs = h.step_fn(self.model, local, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if h.after_step is not None:
                h.after_step(self.module)
            logs = {"loss": loss.item(), **logs}
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            if spec.log_every and (g % spec.log_every == 0 or g == spec.total - 1):
                self.records.append({"step": g, "loss": round(logs["loss"], 5), "lr": opt.param_groups[0]["lr"],
                                     "elapsed_s": round(self.elapsed(), 2)})
            task.advance(1, loss=logs["loss"], ex_s=(g + 1 - self.start * spec.epoch_steps)
                         * spec.batch_size / max(1e-9, time.time() - self.t0))
        if not spec.log_every:
            self.records.append({"epoch": epoch + 1, **{k: v / max(1, last - first) for k, v in sums.items()},
                                 "lr": opt.param_groups[0]["lr"], "elapsed_s": round(self.elapsed(), 2)})
        if h.evaluate is not None and self.d.main:
            self.module.eval()
            self.records[-1].update(h.evaluate(self.module))
        if self.d.main:
            self.checkpoint(epoch + 1)
        self.d.barrier()
        faults.point("train:epoch-end")

    def checkpoint(self, epoch: int) -> None:
        names = {n for n, p in self.module.named_parameters() if p.requires_grad} | \
            {n for n, _ in self.module.named_buffers()}
        weights = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items() if k in names}
        save_checkpoint({"weights": weights, "optimizer": self.opt.state_dict(), "rng": torch.get_rng_state(),
                         "epoch": epoch, "metrics": self.records, "elapsed_s": self.elapsed()}, self.folder)

    def finish(self) -> Artifact | None:
        spec, ctx, d = self.spec, self.ctx, self.d
        self.module.eval()
        if not d.main:
            d.barrier()
            return ctx.store.get(spec.kind, spec.key)
        extra = self.h.conclude(self.module, self.records) if self.h.conclude is not None else {}
        with ctx.store.create(spec.kind, spec.key, config=spec.config, inputs=spec.inputs, seed=spec.seed,
                              model=spec.model, description=spec.description) as out:
            if self.h.finalize is not None:
                self.h.finalize(out.path)
            (out.path / METRICS).write_text("".join(json.dumps(r) + "\n" for r in self.records))
            out.manifest.update({**spec.extra_manifest, **extra})
            out.manifest["final"] = self.records[-1] if self.records else {}
            out.manifest["train_seconds"] = round(self.elapsed(), 2)
            out.manifest["world_size"] = d.world
        shutil.rmtree(self.folder, ignore_errors=True)
        d.barrier()
        art = ctx.store.get(spec.kind, spec.key)
        if art is not None:
            art.built = True
        return art
