"""Device selection, mixed precision and seeding (imports torch)."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

from zscir_cli.core.errors import UserError


def resolve_device(spec: str | None = "auto") -> torch.device:
    """'auto' picks CUDA when present, else the CPU; 'cuda:1', 'cpu', 'mps' are taken as given."""
    spec = (spec or "auto").lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as e:
        raise UserError(f"Unknown device '{spec}'.", "Use auto, cpu, cuda or cuda:N.") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"Device '{spec}' was asked for but CUDA is not available here.",
                        "Use --device cpu (or auto).")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"Device '{spec}' does not exist: {torch.cuda.device_count()} CUDA device(s).",
                        "Pick an index below the device count.")
    return device


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (no loss scaling needed); a no-op on the CPU, where fp32 is faster."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
