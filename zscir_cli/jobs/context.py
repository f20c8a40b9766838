"""What every pipeline function needs: the artifact store, a progress reporter, the device."""

from __future__ import annotations

from dataclasses import dataclass, field

from zscir_cli.core.cache import ArtifactStore
from zscir_cli.core.progress import NULL_REPORTER, Reporter


@dataclass
class Context:
    store: ArtifactStore = field(default_factory=ArtifactStore)
    reporter: Reporter = NULL_REPORTER
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    workers: int | None = None  # DataLoader workers; None: one per spare core, at most 4

    def num_workers(self) -> int:
        if self.workers is not None:
            return max(0, self.workers)
        import os

        return max(0, min(4, (os.cpu_count() or 1) - 1))
