"""The one ranking function, and the on-disk index format.

Every retrieval in zscir (a query, a benchmark's metrics, a submission file) goes through
`rank`: exact inner-product top-k with faiss (`IndexFlatIP`), which keeps memory bounded by the
top-k heap rather than a full score matrix, with optional per-query exclusions (the reference
image in CIRR's protocol). An index folder opened with `open_index` ranks the same way: a flat
index exactly, an approximate one (`ann`) by its candidates re-ranked exactly against the
stored fp16 vectors.

Index folder: `features.npy` (fp16, L2-normalised), `ids.json`, `index.faiss`, and `index.json`
(what the index is: `ann.IndexSpec`; absent in indexes older than index kinds, which are flat).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import faiss
import numpy as np

from zscir_cli.core.arrays import NpyAppender
from zscir_cli.index.ann import FLAT, IndexSpec

FEATURES = "features.npy"
IDS = "ids.json"
INDEX = "index.faiss"
SPEC = "index.json"
# Candidates an approximate index hands to the exact re-rank: several times k, since composed
# queries are cross-modal and their order degrades most on quantised codes.
CANDIDATES_PER_K = 4
CANDIDATES_MIN = 100
CHUNK_ROWS = 16384  # rows read, converted and added at a time while building (float32: 48 MB at 768)


def build_faiss(features: np.ndarray) -> faiss.Index:
    """An exact inner-product index over (N, D) features (normalised: inner product = cosine)."""
    feats = np.ascontiguousarray(features, dtype=np.float32)
    index = faiss.IndexFlatIP(feats.shape[1])
    index.add(feats)
    return index


def rank(gallery: faiss.Index | np.ndarray | OpenIndex, queries: np.ndarray, k: int,
         exclude: Sequence[Sequence[int]] | None = None,
         batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Top-k gallery rows for each query, best first.

    gallery: a faiss index, (N, D) features, or an index folder opened with `open_index` (which
    re-ranks an approximate index's candidates exactly); queries: (Q, D); exclude[q]: rows never
    returned for query q. Returns (indices (Q, k) int64, scores (Q, k) float32); rows past the
    gallery's end are -1 with score -inf.
    """
    if isinstance(gallery, OpenIndex):
        return gallery.rank(queries, k, exclude, batch_size)
    index = gallery if isinstance(gallery, faiss.Index) else build_faiss(gallery)
    queries = _check_queries(queries, index.d)
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


def _check_queries(queries: np.ndarray, d: int) -> np.ndarray:
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != d:
        raise ValueError(f"queries must be (Q, {d}), got {queries.shape}")
    return queries


def candidates(k: int) -> int:
    """How many candidates an approximate index returns for the exact re-rank of a top k."""
    return max(CANDIDATES_PER_K * k, CANDIDATES_MIN)


class RowReader:
    """Rows of a 2-D `.npy` read by position (`os.pread`), as float32. The re-rank reads its
    candidates this way rather than through a memory map: a map counts every page the kernel
    maps around a fault as the process's own, and random rows soon map the whole file."""

    def __init__(self, path: Path):
        (self.n, self.d), self.dtype, self.offset = npy_shape(path)
        self.row_bytes = self.d * np.dtype(self.dtype).itemsize
        self.fd = os.open(path, os.O_RDONLY)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), d) float32 for sorted, distinct rows; runs of neighbours in one read each."""
        out = bytearray(len(rows) * self.row_bytes)
        starts = np.flatnonzero(np.diff(rows, prepend=-2) != 1)  # where a run of consecutive rows begins
        for a, b in zip(starts, [*starts[1:], len(rows)]):
            data = os.pread(self.fd, (b - a) * self.row_bytes, self.offset + int(rows[a]) * self.row_bytes)
            out[a * self.row_bytes:a * self.row_bytes + len(data)] = data
        return np.frombuffer(out, dtype=self.dtype).reshape(len(rows), self.d).astype(np.float32)

    def __del__(self):
        with contextlib.suppress(OSError, AttributeError):
            os.close(self.fd)


class OpenIndex:
    """An index folder opened for search: the faiss index, the fp16 vectors (memory-mapped, for
    the few rows a caller looks up), the ids and what the index is; `vectors`, the `.npy` the
    re-rank reads its candidates from (by default the memory map's file)."""

    def __init__(self, index: faiss.Index, features: np.ndarray, ids: list[str], spec: IndexSpec,
                 vectors: Path | None = None):
        self.index, self.features, self.ids, self.spec = index, features, ids, spec
        set_search_params(index, spec)
        source = vectors if vectors is not None else getattr(features, "filename", None)
        self.reader = RowReader(Path(source)) if source is not None and not spec.exact else None

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def rank(self, queries: np.ndarray, k: int, exclude: Sequence[Sequence[int]] | None = None,
             batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """`rank` over this index: exact for a flat index; else the index's `candidates(k)`
        (plus the excluded rows) re-scored exactly against the fp16 vectors."""
        if self.spec.exact:
            return rank(self.index, queries, k, exclude, batch_size)
        queries = _check_queries(queries, self.index.d)
        n_q = queries.shape[0]
        out_i = np.full((n_q, k), -1, dtype=np.int64)
        out_s = np.full((n_q, k), -np.inf, dtype=np.float32)
        extra = max((len(e) for e in exclude), default=0) if exclude is not None else 0
        fetch = min(candidates(k) + extra, self.ntotal)
        if "efSearch" in self.spec.params:  # a graph search returns at most efSearch results
            faiss.ParameterSpace().set_index_parameter(self.index, "efSearch",
                                                       max(int(self.spec.params["efSearch"]), 2 * fetch))
        for start in range(0, n_q, batch_size):
            _, cand = self.index.search(queries[start:start + batch_size], fetch)
            for row in range(cand.shape[0]):
                q = start + row
                rows = np.unique(cand[row][cand[row] >= 0])  # sorted: the memory map is read in order
                if extra and len(exclude[q]):  # type: ignore[index]
                    rows = rows[~np.isin(rows, np.asarray(exclude[q], dtype=np.int64))]  # type: ignore[index]
                vecs = self.reader.take(rows) if self.reader is not None else \
                    np.asarray(self.features[rows], dtype=np.float32)
                scores = vecs @ queries[q]
                best = np.argsort(-scores, kind="stable")[:k]
                out_i[q, :len(best)] = rows[best]
                out_s[q, :len(best)] = scores[best]
        return out_i, out_s


def set_search_params(index: faiss.Index, spec: IndexSpec) -> None:
    """The spec's search parameters (nprobe, efSearch) on a loaded index."""
    space = faiss.ParameterSpace()
    for name in ("nprobe", "efSearch"):
        if name in spec.params:
            space.set_index_parameter(index, name, int(spec.params[name]))


def save(folder: Path, features: np.ndarray, ids: list[str], spec: IndexSpec = FLAT) -> None:
    """features as fp16 (half the disk, memory-mappable), ids as JSON, and the faiss index."""
    writer = IndexWriter(Path(folder), len(features), spec)
    writer.append(features)
    writer.close(ids)


class IndexWriter:
    """The index format written batch by batch. Every kind ranks the numbers features.npy holds
    (fp16), so that a flat index and the exact re-rank of an approximate one score alike: a flat
    index gets them as they come; any other kind is built at `close` from features.npy, read in
    chunks, so the float32 gallery is never in memory whole."""

    def __init__(self, folder: Path, capacity: int, spec: IndexSpec = FLAT,
                 log: Callable[[str], None] | None = None):
        self.folder, self.spec, self.log = Path(folder), spec, log
        self.features = NpyAppender(self.folder / FEATURES, capacity)
        self.index: faiss.Index | None = None

    def append(self, features: np.ndarray) -> None:
        stored = np.ascontiguousarray(features, dtype=np.float16)
        if self.spec.exact:
            if self.index is None:
                self.index = faiss.IndexFlatIP(stored.shape[1])
            self.index.add(stored.astype(np.float32))  # only appends: batch by batch equals all at once
        self.features.append(stored)

    def close(self, ids: list[str]) -> None:
        self.features.close()
        (self.folder / IDS).write_text(json.dumps(ids), encoding="utf-8")
        if not self.spec.exact and self.features.count:
            self.index = index_folder(self.folder, self.spec, self.log)
        elif self.index is not None:
            write_index(self.folder, self.index, self.spec)


def write_index(folder: Path, index: faiss.Index, spec: IndexSpec) -> None:
    faiss.write_index(index, str(Path(folder) / INDEX))
    (Path(folder) / SPEC).write_text(json.dumps(spec.to_json()), encoding="utf-8")


def index_folder(folder: Path, spec: IndexSpec, log: Callable[[str], None] | None = None) -> faiss.Index:
    """Build the index `spec` describes from the folder's features.npy and write it there."""
    index = build_index(Path(folder) / FEATURES, spec, log)
    write_index(folder, index, spec)
    return index


def npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, offset of the data) of a `.npy` file, from its header."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                 else np.lib.format.read_array_header_2_0(f))
        if fortran:
            raise ValueError(f"{path} is stored in Fortran order; expected C order.")
        return shape, dtype, f.tell()


def read_chunks(path: Path, rows: int = CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 rows) of a 2-D `.npy`, `rows` at a time, read with plain file reads:
    a memory map would keep every page it touched resident, up to the whole file."""
    (n, d), dtype, offset = npy_shape(path)
    with open(path, "rb") as f:
        f.seek(offset)
        for start in range(0, n, rows):
            count = min(rows, n - start)
            block = np.fromfile(f, dtype=dtype, count=count * d)
            yield start, block.reshape(count, d).astype(np.float32)


def build_index(path: Path, spec: IndexSpec, log: Callable[[str], None] | None = None) -> faiss.Index:
    """The index `spec` describes over the vectors of a `.npy` file: trained on an even random
    sample of `train_rows` rows (seed 0: the same file gives the same index), then filled chunk
    by chunk."""
    (n, d), _, _ = npy_shape(path)
    index = faiss.index_factory(d, spec.factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        want = int(spec.params.get("train_rows", n))
        picked = np.sort(np.random.default_rng(0).choice(n, min(want, n), replace=False))
        sample = np.concatenate([x[picked[(picked >= s) & (picked < s + len(x))] - s]
                                 for s, x in read_chunks(path)])
        if log is not None:
            log(f"training {spec.factory} on {len(sample)} of {n} vectors")
        index.train(sample)
        del sample
    if log is not None:
        log(f"adding {n} vectors to {spec.factory}")
    for _, chunk in read_chunks(path):
        index.add(chunk)
    set_search_params(index, spec)
    return index


def open_index(folder: Path) -> OpenIndex:
    """An index folder, ready for `rank` (exact for flat indexes, re-ranked for the others)."""
    folder = Path(folder)
    spec_file = folder / SPEC
    spec = IndexSpec.from_json(json.loads(spec_file.read_text(encoding="utf-8"))) if spec_file.is_file() else FLAT
    index, features, ids = load(folder)
    return OpenIndex(index, features, ids, spec)


def load(folder: Path) -> tuple[faiss.Index, np.ndarray, list[str]]:
    folder = Path(folder)
    features = np.load(folder / FEATURES, mmap_mode="r")
    ids = json.loads((folder / IDS).read_text(encoding="utf-8"))
    return faiss.read_index(str(folder / INDEX)), features, ids
