"""Index kinds, and the rules `auto` picks one by.

A gallery's index is one of:

- `flat`: exact inner product over float32 vectors (`IndexFlatIP`); no re-rank needed;
- `hnsw`: a graph (HNSW, M = 32) over float32 vectors;
- `ivf`: an inverted file (k-means lists) over 8-bit scalar-quantised codes (`SQ8`), or product
  quantisation codes (`PQm`) when SQ8 codes do not fit in the memory allowed;
- any faiss factory string (`IVF4096,PQ64`, `HNSW16,SQ8`, ...), for experts.

Every kind but `flat` is approximate, and its candidates are re-ranked exactly against the
stored fp16 vectors (see `search.OpenIndex`), so the index only has to find the right
neighbourhood, not order it.

`auto` follows autofaiss's order (flat for small galleries, HNSW while the graph fits, IVF with
compressed codes beyond), with thresholds measured on a 2-core machine (README, "Index kinds").
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

# A flat scan of at most this many numbers (rows x dim) answers one query in a few milliseconds
# on one core: about 21,800 vectors of 768 dimensions.
FLAT_MAX_SCAN = 2 ** 24
HNSW_M = 32
HNSW_EF_SEARCH = 128  # raised to twice the candidate count when a search asks for more
# HNSW inserts vectors one at a time (100,000 x 768 take 35 s on 2 cores, IVF-SQ8 8 s), and on
# clustered galleries its recall@50 stops near 0.95-0.98 whatever efSearch (a graph search misses
# clusters it has no edge into), where IVF-SQ8 plus the re-rank reaches 1.00 (benchmarks/ann_search.py):
# auto keeps it for galleries just past flat's size.
HNSW_MAX_ROWS = 50_000
IVF_TRAIN_PER_LIST = 50  # faiss warns below 39 training points per list
PQ_TRAIN_MIN = 256 * 40  # each PQ sub-quantiser learns 256 centroids
IVF_PROBE_SHARE = 1 / 64  # lists searched per query, as a share of all lists
IVF_MIN_PROBE = 16
PQ_SIZES = (96, 64, 48, 32, 24, 16, 8)  # bytes per code, largest that fits first


@dataclass
class IndexSpec:
    """What an index is: the faiss factory string, its search parameters and how it was chosen."""

    kind: str  # flat | hnsw | ivf | factory
    factory: str  # faiss index_factory string, metric inner product
    params: dict[str, Any] = field(default_factory=dict)  # nlist, nprobe, M, efSearch, train_rows, codes
    reason: str = ""  # why auto chose it (empty when the kind was asked for)

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    def identity(self) -> dict[str, Any]:
        """What makes two indexes of one gallery the same (part of the artifact key)."""
        return {"kind": self.kind, "factory": self.factory, "params": dict(sorted(self.params.items()))}

    def to_json(self) -> dict[str, Any]:
        return {**self.identity(), **({"reason": self.reason} if self.reason else {})}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> IndexSpec:
        if not data:  # an index written before index kinds existed
            return FLAT
        return cls(data["kind"], data["factory"], dict(data.get("params", {})), data.get("reason", ""))

    def label(self) -> str:
        shown = ", ".join(f"{k} {v}" for k, v in sorted(self.params.items()) if k != "train_rows")
        return f"{self.kind} ({self.factory}{'; ' + shown if shown else ''})"


FLAT = IndexSpec("flat", "Flat")


def default_max_memory() -> int:
    """A quarter of the machine's RAM."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 4
    except (ValueError, OSError, AttributeError):
        return 4 * 2 ** 30


_UNITS = {"": 1, "b": 1, "k": 2 ** 10, "kb": 2 ** 10, "m": 2 ** 20, "mb": 2 ** 20, "g": 2 ** 30,
          "gb": 2 ** 30, "t": 2 ** 40, "tb": 2 ** 40}


def parse_memory(text: str) -> int:
    """'8G', '512MB', '1.5g', '1000000' -> bytes (binary units)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"'{text}' is not an amount of memory; give e.g. 8G, 512M or a number of bytes.")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise ValueError(f"--max-memory must be more than 0, got '{text}'.")
    return value


def flat_bytes(n: int, d: int) -> int:
    return 4 * n * d


def hnsw_bytes(n: int, d: int, m: int = HNSW_M) -> int:
    return n * (4 * d + 2 * m * 4)  # float32 vectors + the base layer's 2M neighbour ids


def ivf_bytes(n: int, d: int, nlist: int, code: int) -> int:
    return n * (code + 8) + nlist * d * 4  # codes + 64-bit ids, + the centroids


def ivf_lists(n: int) -> int:
    """sqrt(n) rounded to a power of two (faiss's guide says 4-16 sqrt(n) for speed on many
    cores; fewer lists keep k-means affordable on a few, and the re-rank's candidate list makes
    up for a coarser partition); never more than the training points allow."""
    nlist = 2 ** round(math.log2(max(n, 1)) / 2)
    return max(1, min(nlist, n // IVF_TRAIN_PER_LIST))


def ivf_probes(nlist: int) -> int:
    return min(nlist, max(IVF_MIN_PROBE, round(nlist * IVF_PROBE_SHARE)))


def ivf_spec(n: int, d: int, max_memory: int, reason: str = "") -> IndexSpec:
    nlist = ivf_lists(n)
    if ivf_bytes(n, d, nlist, d) <= max_memory:
        codes = "SQ8"
    else:
        fits = [m for m in PQ_SIZES if d % m == 0 and m < d and ivf_bytes(n, d, nlist, m) <= max_memory]
        if not fits:
            least = min((m for m in PQ_SIZES if d % m == 0), default=d)
            raise ValueError(f"An IVF index of {n} x {d} vectors needs at least "
                             f"{_human(ivf_bytes(n, d, nlist, least))}, more than --max-memory "
                             f"{_human(max_memory)}; raise --max-memory.")
        codes = f"PQ{fits[0]}"
    train = min(n, max(IVF_TRAIN_PER_LIST * nlist, PQ_TRAIN_MIN if codes.startswith("PQ") else 0))
    # "np": no polysemous training (minutes of annealing for codes the re-rank re-scores anyway)
    factory = f"IVF{nlist},{codes}" + ("np" if codes.startswith("PQ") else "")
    return IndexSpec("ivf", factory, {"nlist": nlist, "nprobe": ivf_probes(nlist),
                                                     "codes": codes, "train_rows": train}, reason)


def hnsw_spec(reason: str = "") -> IndexSpec:
    return IndexSpec("hnsw", f"HNSW{HNSW_M}", {"M": HNSW_M, "efSearch": HNSW_EF_SEARCH}, reason)


def choose(kind: str, n: int, d: int, max_memory: int | None = None) -> IndexSpec:
    """The index for `n` vectors of `d` dimensions: `kind` is auto, flat, hnsw, ivf or a faiss
    factory string. ValueError for a factory string faiss does not know."""
    budget = max_memory if max_memory is not None else default_max_memory()
    if kind == "flat":
        return FLAT
    if kind == "hnsw":
        return hnsw_spec()
    if kind == "ivf":
        return ivf_spec(n, d, budget)
    if kind != "auto":
        return factory_spec(kind, n, d)
    if n * d <= FLAT_MAX_SCAN and flat_bytes(n, d) <= budget:
        return IndexSpec("flat", "Flat", {}, f"{n} x {d} is at most {FLAT_MAX_SCAN} numbers: an exact scan is fast")
    if n <= HNSW_MAX_ROWS and hnsw_bytes(n, d) <= budget:
        return hnsw_spec(f"{n} rows, at most {HNSW_MAX_ROWS}, and the graph ({_human(hnsw_bytes(n, d))}) "
                         f"fits in {_human(budget)}")
    why = (f"more than {HNSW_MAX_ROWS} rows" if n > HNSW_MAX_ROWS else
           f"the graph ({_human(hnsw_bytes(n, d))}) does not fit in {_human(budget)}")
    return ivf_spec(n, d, budget, f"{why}: inverted lists over compressed codes")


def factory_spec(factory: str, n: int, d: int) -> IndexSpec:
    """A faiss factory string, checked by building an empty index of it; IVF lists get the probe
    count of `ivf`, graphs the efSearch of `hnsw`."""
    import faiss

    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "not understood"
        raise ValueError(f"--kind '{factory}' is neither auto, flat, hnsw, ivf nor a faiss factory "
                         f"string faiss accepts for {d} dimensions ({first}).") from None
    if factory.strip() == "Flat":
        return FLAT
    params: dict[str, Any] = {}
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        params.update(nlist=int(ivf.nlist), nprobe=ivf_probes(int(ivf.nlist)),
                      train_rows=min(n, max(IVF_TRAIN_PER_LIST * int(ivf.nlist), PQ_TRAIN_MIN)))
    elif not index.is_trained:
        params["train_rows"] = min(n, PQ_TRAIN_MIN * 4)
    if "HNSW" in factory:
        params["efSearch"] = HNSW_EF_SEARCH
    return IndexSpec("factory", factory.strip(), params)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
