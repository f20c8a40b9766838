"""The one ranking function, and the on-disk index format.

Every retrieval in zscir (a query, a benchmark's metrics, a submission file) goes through
`rank`: exact inner-product top-k with faiss (`IndexFlatIP`), which keeps memory bounded by the
top-k heap rather than a full score matrix, with optional per-query exclusions (the reference
image in CIRR's protocol).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

FEATURES = "features.npy"
IDS = "ids.json"
INDEX = "index.faiss"


def build_faiss(features: np.ndarray) -> faiss.Index:
    """An exact inner-product index over (N, D) features (normalised: inner product = cosine)."""
    feats = np.ascontiguousarray(features, dtype=np.float32)
    index = faiss.IndexFlatIP(feats.shape[1])
    index.add(feats)
    return index


def rank(gallery: faiss.Index | np.ndarray, queries: np.ndarray, k: int,
         exclude: Sequence[Sequence[int]] | None = None,
         batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Top-k gallery rows for each query, best first.

    gallery: a faiss index or (N, D) features; queries: (Q, D); exclude[q]: rows never returned
    for query q. Returns (indices (Q, k) int64, scores (Q, k) float32); rows past the gallery's
    end are -1 with score -inf.
    """
    index = gallery if isinstance(gallery, faiss.Index) else build_faiss(gallery)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != index.d:
        raise ValueError(f"queries must be (Q, {index.d}), got {queries.shape}")
    n_q = queries.shape[0]
    out_i = np.full((n_q, k), -1, dtype=np.int64)
    out_s = np.full((n_q, k), -np.inf, dtype=np.float32)
    extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
    fetch = min(k + extra, index.ntotal)
    for start in range(0, n_q, batch_size):
        scores, idx = index.search(queries[start:start + batch_size], fetch)
        for row in range(idx.shape[0]):
            q = start + row
            keep_i, keep_s = idx[row], scores[row]
            if extra:
                banned = set(exclude[q])
                ok = np.array([i not in banned and i >= 0 for i in keep_i], dtype=bool)
                keep_i, keep_s = keep_i[ok], keep_s[ok]
            n = min(k, len(keep_i))
            out_i[q, :n] = keep_i[:n]
            out_s[q, :n] = keep_s[:n]
    return out_i, out_s


def save(folder: Path, features: np.ndarray, ids: list[str]) -> None:
    """features as fp16 (half the disk, memory-mappable), ids as JSON, and the faiss index."""
    folder = Path(folder)
    np.save(folder / FEATURES, features.astype(np.float16))
    (folder / IDS).write_text(json.dumps(ids), encoding="utf-8")
    faiss.write_index(build_faiss(features), str(folder / INDEX))


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


class IndexWriter:
    """The index format written batch by batch: the faiss index gets the float32 features (as
    `save` does), features.npy their fp16 copy."""

    def __init__(self, folder: Path, capacity: int):
        self.folder = Path(folder)
        self.features = NpyAppender(self.folder / FEATURES, capacity)
        self.index: faiss.Index | None = None

    def append(self, features: np.ndarray) -> None:
        feats = np.ascontiguousarray(features, dtype=np.float32)
        if self.index is None:
            self.index = faiss.IndexFlatIP(feats.shape[1])
        self.index.add(feats)  # a flat index only appends: batch by batch equals all at once
        self.features.append(feats)

    def close(self, ids: list[str]) -> None:
        self.features.close()
        (self.folder / IDS).write_text(json.dumps(ids), encoding="utf-8")
        if self.index is not None:
            faiss.write_index(self.index, str(self.folder / INDEX))


def load(folder: Path) -> tuple[faiss.Index, np.ndarray, list[str]]:
    folder = Path(folder)
    features = np.load(folder / FEATURES, mmap_mode="r")
    ids = json.loads((folder / IDS).read_text(encoding="utf-8"))
    return faiss.read_index(str(folder / INDEX)), features, ids
