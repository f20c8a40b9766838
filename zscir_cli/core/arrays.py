"""Arrays written to disk row by row: a large gallery's features never sit in memory whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class NpyAppender:
    """Rows appended to a memory-mapped `.npy` of `capacity` rows, so a large gallery never sits in
    memory; `close` cuts the file to the rows written (fewer when images were skipped)."""

    def __init__(self, path: Path, capacity: int, dtype=np.float16):
        self.path, self.capacity, self.dtype = Path(path), capacity, dtype
        self.array: np.ndarray | None = None
        self.count = 0

    def append(self, x: np.ndarray) -> None:
        if self.array is None:
            self.array = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype,
                                                   shape=(self.capacity, *x.shape[1:]))
        self.array[self.count:self.count + len(x)] = x.astype(self.dtype)
        self.count += len(x)

    def close(self) -> None:
        if self.array is None:
            return
        self.array.flush()
        if self.count < self.capacity:
            kept = np.array(self.array[:self.count])
            self.array = None
            np.save(self.path, kept)
        self.array = None
