"""The one training loop: `zscir pretrain`, Stage I and Stage II all run through `train`.

A run in progress lives in `<cache>/.partial/<kind>-<key>/`: `run.json` (what the run is) and,
after every epoch, ONE checkpoint file holding the trainable weights, the optimiser and RNG
states and the metrics so far. It is written to a temporary name of its own, fsync'd, then
renamed over the previous one, so a crash at any instant leaves either the old epoch or the new
one, never a mix. Ctrl-C (or a kill) keeps the last complete epoch for `--resume`; a finished run
becomes an ordinary artifact and the partial folder is removed. Rank 0 holds the run's lock
(the artifact's kind and key) for the whole run, so two identical commands never both train.

Determinism: batches are a function of the global step (by default a permutation of the items
per (seed, epoch)) and the torch RNG state (dropout) is saved with each checkpoint, so on the CPU
a resumed run reaches the same weights as an uninterrupted one.

Data parallel: under `torchrun`, each of the N processes takes its slice of every global batch;
losses gather the features of the whole batch (with gradients), so the loss is that of one
process with the same global batch. Only rank 0 writes anything.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from zscir_cli.core import faults
from zscir_cli.core.cache import Artifact
from zscir_cli.core.errors import UserError
from zscir_cli.pipeline.context import Context

PARTIAL = ".partial"
CHECKPOINT = "checkpoint.pt"
RUN = "run.json"
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

    def share(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (a decision only rank 0 may take)."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


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


# -- checkpoints and partial folders -------------------------------------------------------------

def partial_path(root: Path, kind: str, key: str) -> Path:
    return Path(root) / PARTIAL / f"{kind}-{key}"


def _temp_name(path: Path) -> Path:
    # pid + uuid: two processes (or a killed one's leftover) never share a temporary file
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.incomplete")


def _replace_durably(write: Callable[[Any], None], path: Path, kill_point: str | None = None) -> None:
    tmp = _temp_name(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if kill_point:
            faults.point(kill_point)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a power cut
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(state: dict[str, Any], folder: Path) -> None:
    _replace_durably(lambda f: torch.save(state, f), folder / CHECKPOINT, "checkpoint:before-replace")
    faults.point("checkpoint:after-replace")


def load_checkpoint(folder: Path) -> dict[str, Any] | None:
    path = folder / CHECKPOINT
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file; a line torn by a crash (or anything unparsable) is skipped."""
    records = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            if isinstance(rec, dict):
                records.append(rec)
    return records


def _read_json(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def interrupted_runs(root: Path) -> list[dict[str, Any]]:
    """Every run folder under `<root>/.partial/`, with the epoch its checkpoint reached (0: none)."""
    base = Path(root) / PARTIAL
    out = []
    for p in sorted(base.iterdir()) if base.is_dir() else []:
        if not p.is_dir():
            continue
        info = _read_json(p / RUN)
        kind, _, key = p.name.partition("-")
        try:
            ck = torch.load(p / CHECKPOINT, map_location="cpu", weights_only=True, mmap=True) \
                if (p / CHECKPOINT).is_file() else None
        except Exception:  # noqa: BLE001 - an unreadable checkpoint counts as no epoch
            ck = None
        out.append({"kind": info.get("kind", kind), "key": info.get("key", key), "path": p,
                    "epoch": int(ck["epoch"]) if ck else 0, "epochs": info.get("epochs"),
                    "config": info.get("config", {}), "description": info.get("description", "")})
    return out


def _describe_difference(want: dict[str, Any], have: dict[str, Any]) -> str:
    diffs = [f"{k}={have.get(k)!r} (now {want.get(k)!r})" for k in sorted(set(want) | set(have))
             if want.get(k) != have.get(k)]
    return ", ".join(diffs[:6]) or "its inputs (data, features or library versions)"


def _no_run_to_resume(ctx: Context, spec: TrainSpec) -> tuple[str, str]:
    others = [r for r in interrupted_runs(ctx.store.root) if r["kind"] == spec.kind and r["key"] != spec.key]
    hint = ("; an interrupted run differs in " + "; ".join(
        _describe_difference(spec.config, r["config"]) for r in others[:3])) if others else ""
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
    run = {"kind": spec.kind, "key": spec.key, "epochs": spec.epochs, "description": spec.description,
           "config": spec.config}
    _replace_durably(lambda f: f.write(json.dumps(run, indent=2, default=str).encode()), folder / RUN)
    return None


# -- the loop ----------------------------------------------------------------------------------

StepFn = Callable[[nn.Module, Any, Any], tuple[torch.Tensor, dict[str, float]]]


class Shuffled:
    """Index batches: a permutation of the items per (seed, epoch); each rank takes its slice."""

    def __init__(self, spec: TrainSpec, d: Dist):
        self.spec, self.d = spec, d
        self.local = spec.batch_size // d.world
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, i = divmod(step, self.spec.epoch_steps)
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = torch.randperm(self.spec.n_items, generator=torch.Generator().manual_seed(
                self.spec.seed * 100003 + epoch))
        batch = self._order[i * self.spec.batch_size:(i + 1) * self.spec.batch_size]
        return batch[self.d.rank * self.local:(self.d.rank + 1) * self.local], batch


@dataclass
class Hooks:
    step_fn: StepFn  # (model, local part, global batch) -> (loss, logs)
    batches: Callable[[int], tuple[Any, Any]] | None = None  # global step -> (local part, global batch)
    optimizer: Callable[[nn.Module], torch.optim.Optimizer] | None = None  # default: AdamW, one group
    after_step: Callable[[nn.Module], None] | None = None  # after opt.step (e.g. clamp a parameter)
    on_epoch_start: Callable[[nn.Module, int], None] | None = None
    evaluate: Callable[[nn.Module], dict[str, Any]] | None = None  # rank 0, after every epoch
    conclude: Callable[[nn.Module, list[dict[str, Any]]], dict[str, Any]] | None = None  # rank 0, at the
    # end, outside the artifact's atomic write: a failure there keeps the completed checkpoint
    finalize: Callable[[Path], None] | None = None  # writes the artifact's files


def train(ctx: Context, spec: TrainSpec, module: nn.Module, *, device: torch.device, d: Dist,
          step_fn: StepFn, evaluate: Callable[[nn.Module], dict[str, Any]] | None = None,
          on_epoch_start: Callable[[nn.Module, int], None] | None = None,
          finalize: Callable[[Path], None] | None = None,
          resume: bool = False, stop_after_epoch: int | None = None, **hooks: Any) -> Artifact | None:
    """Train `module`'s trainable parameters; returns the finished artifact (None if stopped early).

    step_fn(model, local, batch) -> (loss, logs): the loss of the global batch `batch`, of which
    this rank holds `local` (by default index tensors from `Shuffled`; `batches=` changes that).
    Other hooks (see `Hooks`): batches, optimizer, after_step, conclude.
    """
    h = Hooks(step_fn=step_fn, evaluate=evaluate, on_epoch_start=on_epoch_start, finalize=finalize, **hooks)
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
        params = [p for p in module.parameters() if p.requires_grad]
        self.opt = hooks.optimizer(module) if hooks.optimizer else \
            torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
        self.batches = hooks.batches or Shuffled(spec, d)
        self.records: list[dict[str, Any]] = []
        self.start, self.elapsed0 = 0, 0.0
        state = load_checkpoint(folder)
        if state is not None:
            module.load_state_dict({**module.state_dict(), **state["weights"]})
            self.opt.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])
            self.start, self.records = int(state["epoch"]), list(state["metrics"])
            self.elapsed0 = float(state.get("elapsed_s", 0.0))
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
        names = {n for n, p in self.module.named_parameters() if p.requires_grad}
        names |= {n for n, _ in self.module.named_buffers()}
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
            out.manifest.update(spec.extra_manifest)
            out.manifest.update(extra)
            out.manifest["final"] = self.records[-1] if self.records else {}
            out.manifest["train_seconds"] = round(self.elapsed(), 2)
            out.manifest["world_size"] = d.world
        shutil.rmtree(self.folder, ignore_errors=True)
        d.barrier()
        return ctx.store.get(spec.kind, spec.key)
