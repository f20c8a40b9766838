"""What `zscir serve` asks for (`ServeRequest`), and the threads a served process runs with
(`ServeThreads`). Nothing here imports torch or faiss."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ServeThreads:
    """The threading of a served process, chosen for a machine the service shares with other work
    (a training job, a second worker, another service).

    A query is one small forward pass and one search: a thread pool buys it little, and threads
    that spin while they wait (OpenMP's default) take the cores a neighbour needs and are starved
    by it in turn: on a 2-core machine beside one busy torch process, the libraries' own threading
    answered at 2-2.6x its quiet p50 and 0.03-0.25x its quiet throughput, beside two at up to 14x
    its quiet p50 (docs/performance.md). So by default the model and faiss compute on one thread
    each, idle OpenMP threads sleep (`OMP_WAIT_POLICY=PASSIVE`), and requests are decoded on the
    event loop and a small pool for image reads, the model calls one at a time."""

    compute: int = 1  # intra-op threads of torch and faiss (0: one per core, the libraries' own choice)
    wait_policy: str = "passive"  # OpenMP's idle threads: passive (sleep) | active (spin)
    io: int = 4  # worker threads for image reads (thumbnails); model calls stay one at a time

    def environment(self) -> dict[str, str]:
        """The variables OpenMP and BLAS read when they start: in place before torch or faiss is
        first imported, or they are ignored."""
        env = {"OMP_WAIT_POLICY": self.wait_policy.upper()}
        if self.compute > 0:
            for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env[name] = str(self.compute)
        return env


@dataclass
class ServeRequest:
    """`zscir serve`."""

    indexes: list[str] = field(default_factory=list)  # index keys [] = the newest index in the cache
    host: str = "127.0.0.1"  # 127.0.0.1 keeps the service to this machine
    port: int = 8000  # 0: any free port
    max_upload_mb: float = 20.0  # the largest uploaded image
    weights: list[str] = field(default_factory=list)  # METHOD=FILE: released mappers served beside the rest
    threads: ServeThreads = field(default_factory=ServeThreads)
