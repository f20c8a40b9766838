"""Putting a served process's threading (`config.ServeThreads`) in place: the environment before
torch and faiss start, their thread counts once they have."""

from __future__ import annotations

import os
import sys

from zscir_cli.jobs.service.config import ServeThreads

HEAVY = ("torch", "faiss")


def prepare(threads: ServeThreads) -> list[str]:
    """Set OpenMP's and BLAS's variables (a variable the user set is kept). Returns the libraries
    already started in this process, for which they come too late (said to the user)."""
    for name, value in threads.environment().items():
        os.environ.setdefault(name, value)
    return [m for m in HEAVY if m in sys.modules]


def compute_threads(threads: ServeThreads) -> int:
    """The intra-op threads in force: OMP_NUM_THREADS when the user set it (it wins over
    `--threads`, as the docs say), else `threads.compute` (0: the libraries' own)."""
    if threads.compute <= 0:
        return 0
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", threads.compute)))
    except ValueError:
        return threads.compute


def wait_policy() -> str:
    """OpenMP's wait policy in force (passive unless the environment says otherwise)."""
    return os.environ.get("OMP_WAIT_POLICY", "passive").lower()


def apply(threads: ServeThreads) -> dict[str, int]:
    """The thread counts of torch and faiss, now that they are imported; what they use."""
    import faiss  # heavy: imported by the service anyway, after `prepare`
    import torch

    compute = compute_threads(threads)
    if compute > 0:
        torch.set_num_threads(compute)
        faiss.omp_set_num_threads(compute)
    try:
        torch.set_num_interop_threads(1)  # no inter-op parallelism in a query's small graph
    except RuntimeError:  # already set, or inter-op work already ran in this process
        pass
    return {"torch": torch.get_num_threads(), "faiss": faiss.omp_get_max_threads()}
