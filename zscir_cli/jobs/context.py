"""What every job needs: the artifact store, a progress reporter, the device, and the memo of
weights files' content hashes (kept under the store's root, so every command of a cache shares it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from zscir_cli.core.cache import ArtifactStore
from zscir_cli.core.progress import NULL_REPORTER, Reporter
from zscir_cli.model.weights import WeightsMemo


@dataclass
class Context:
    store: ArtifactStore = field(default_factory=ArtifactStore)
    reporter: Reporter = NULL_REPORTER
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int | None = None  # DataLoader workers; None: one per spare core, at most 4
    memo: WeightsMemo | None = None  # None: the store's (under its root)

    def __post_init__(self) -> None:
        if self.memo is None:
            self.memo = WeightsMemo(self.store.root)

    def num_workers(self) -> int:
        if self.workers is not None:
            return max(0, self.workers)
        return max(0, min(4, (os.cpu_count() or 1) - 1))
