"""Batches made ahead of the training loop, by DataLoader worker processes, for a loop whose
batch is a function of the global step (pretraining renders its scenes at every step).

`StepBatches(make, total, workers)(g)` is `make(g)`: the same batch, whether workers made it or
not, so a run's weights do not depend on how many there are. The workers make the steps after
`g` while the loop trains on it (two each ahead); a step asked for out of order (a resumed run)
starts them again from there, and they stop once the last step is handed over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset


def _as_made(item: Any) -> Any:
    return item  # no collation: a worker's batch is handed over as `make` returned it


class _Steps(Dataset):
    def __init__(self, make: Callable[[int], Any], first: int, total: int):
        self.make, self.first, self.total = make, first, total

    def __len__(self) -> int:
        return self.total - self.first

    def __getitem__(self, i: int) -> Any:
        return self.make(self.first + i)


class StepBatches:
    """`make(g)` for g = first, first + 1, ..., total - 1, made by `workers` processes ahead of
    the caller (0: made when asked, in this process). `make` must pickle where processes are
    spawned rather than forked."""

    def __init__(self, make: Callable[[int], Any], total: int, workers: int, ahead: int = 2):
        self.make, self.total, self.workers, self.ahead = make, total, workers, ahead
        self._it: Iterator | None = None
        self._next = -1

    def __call__(self, g: int) -> Any:
        if self.workers <= 0:
            return self.make(g)
        if self._it is None or g != self._next:
            self.close()
            # a generator of its own: the workers' seeds are not drawn from the training's RNG
            loader = DataLoader(_Steps(self.make, g, self.total), batch_size=None, shuffle=False,
                                num_workers=self.workers, prefetch_factor=self.ahead, persistent_workers=False,
                                collate_fn=_as_made, generator=torch.Generator())
            self._it = iter(loader)
        self._next = g + 1
        item = next(self._it)
        if self._next >= self.total:  # the last step: no worker waits on through what follows
            self.close()
        return item

    def close(self) -> None:
        """Stop the workers now (also on an error, whatever still refers to the iterator)."""
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    @property
    def running(self) -> bool:
        return self._it is not None
