"""Data-parallel plumbing shared by every command that runs under torchrun: the process group
(gloo on the CPU, nccl on GPUs), the device of each process, and a gather that keeps gradients.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist

from zscir_cli.core.device import resolve_device
from zscir_cli.core.progress import NULL_REPORTER
from zscir_cli.jobs.context import Context


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
        box = [obj]
        if self.world > 1:
            dist.broadcast_object_list(box, src=0)
        return box[0]


def world_size() -> int:
    """The number of processes torchrun started (1 without torchrun), known before joining."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device) -> Dist:
    """Join the process group that torchrun describes in the environment (gloo on the CPU)."""
    world = world_size()
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def start_run(ctx: Context) -> tuple[Context, torch.device, Dist]:
    """The device and process group of a training run; under torchrun only rank 0 reports."""
    device = resolve_device(ctx.device)
    d = init_distributed(device)
    device = device_for(d, device)
    if not d.main:  # one progress display: rank 0's
        ctx = replace(ctx, reporter=NULL_REPORTER)
    return ctx, device, d


def device_for(d: Dist, device: torch.device) -> torch.device:
    if device.type == "cuda" and d.world > 1:
        torch.cuda.set_device(d.local_rank)
        return torch.device("cuda", d.local_rank)
    return device


class _Gather(torch.autograd.Function):
    """All-gather whose backward hands each rank the summed gradient of its own rows.

    Every rank computes the loss of the whole gathered batch, so the gradient of a rank's rows
    is the sum over ranks of each loss's gradient: all-reduce, then take the local slice. Written
    here because torch's own autograd all-gather has been deprecated and renamed across releases.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # (n, ...) -> (world * n, ...)
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows, ctx.rank = x.shape[0], dist.get_rank()
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """Concatenate every rank's rows in rank order (equal row counts), keeping gradients for the
    local rows."""
    if d.world == 1:
        return x
    return _Gather.apply(x)
