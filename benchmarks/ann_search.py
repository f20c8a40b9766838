"""Approximate search with exact re-rank against flat search, at a million vectors.

A gallery of `--size` x `--dim` clustered vectors (a mixture of many Gaussians on the unit
sphere, their centres grouped in two levels above them, so that neighbours mean something) is written as an fp16
`.npy` in chunks, as `zscir index` stores features; `--queries` queries are drawn near it (new
draws from the gallery's components, 1.5 times wider). Then, each in a child process of its own so
that each peak memory (max RSS) is its own:

- flat: zscir's flat index (`IndexFlatIP` over the fp16 numbers) built chunk by chunk; its
  top-50 is the ground truth;
- auto (or `--kind`): the index `zscir index --kind auto` picks for this size and the default
  `--max-memory`, built from the fp16 file in chunks, then searched through `search.open_index`,
  which re-ranks `max(4k, 100)` candidates exactly against the memory-mapped fp16 vectors.

For each: build time, peak RSS of the build and of the search, index bytes, p50/p95 latency of
single queries, batched queries per second, recall@50 against flat. The last line sums it up:
`auto: recall@50 R, p50 T ms, flat p50 F ms, memory M GB`. Faiss uses its default thread count.

    python benchmarks/ann_search.py [--size 1000000] [--dim 768] [--queries 1000] [--kind auto]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import shutil
import tempfile
import time
from pathlib import Path

K = 50
CHUNK = 65536
GB = 1e9


def _peak() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # Linux: kilobytes


def _unit(x):
    import numpy as np

    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _mixture(d: int, n: int, seed: int = 0):
    """A three-level mixture: 64 top centres, n // 1000 middle ones around them, n // 10 leaf
    components around those (lognormal weights, spreads of 0.7-1.1 times the centre's norm), so
    that a query's 50 neighbours span several components and cross the index's cells."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def noise(k: int, scale: float):
        return scale * rng.standard_normal((k, d), dtype=np.float32) / np.sqrt(d)

    top = _unit(rng.standard_normal((64, d), dtype=np.float32))
    n_mid, n_leaf = max(4, n // 1000), max(16, n // 10)
    mid = _unit(top[rng.integers(0, 64, n_mid)] + noise(n_mid, 1.2))
    leaf = _unit(mid[rng.integers(0, n_mid, n_leaf)] + noise(n_leaf, 1.0))
    weights = rng.lognormal(0.0, 1.0, n_leaf)
    return leaf, rng.uniform(0.7, 1.1, n_leaf).astype(np.float32), weights / weights.sum()


def _draw(centres, spread, weights, count: int, seed: int, widen: float = 1.0):
    import numpy as np

    rng = np.random.default_rng(seed)
    comp = rng.choice(len(centres), count, p=weights)
    d = centres.shape[1]
    return _unit(centres[comp] + (widen * spread[comp])[:, None] * rng.standard_normal((count, d), dtype=np.float32)
                 / np.sqrt(d))


def generate(work: Path, n: int, d: int, n_q: int) -> None:
    """gallery.npy (fp16) written chunk by chunk with plain writes, and queries.npy (float32)."""
    import numpy as np

    centres, spread, weights = _mixture(d, n)
    with open(work / "gallery.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f2", "fortran_order": False, "shape": (n, d)})
        f.writelines(_draw(centres, spread, weights, min(CHUNK, n - start), seed=1000 + i).astype(np.float16).tobytes()
                     for i, start in enumerate(range(0, n, CHUNK)))
    np.save(work / "queries.npy", _draw(centres, spread, weights, n_q, seed=1, widen=1.5))


def _latencies(opened, queries, k: int, count: int) -> list[float]:
    out = []
    for i in range(count):
        t = time.perf_counter()
        opened.rank(queries[i:i + 1], k)
        out.append(time.perf_counter() - t)
    return out


def _run(which: str, work: str, args: dict, out) -> None:
    """Build (which = 'build:KIND') or search (which = 'search:KIND') one index kind."""
    import faiss
    import numpy as np

    from zscir_cli.index import ann, search

    folder = Path(work)
    stage, kind = which.split(":")
    (n, d), _, _ = search.npy_shape(folder / "gallery.npy")
    spec = ann.choose(kind, n, d, args["max_memory"])
    path = folder / f"{spec.kind}.faiss"
    if stage == "build":
        t = time.perf_counter()
        index = search.build_index(folder / "gallery.npy", spec)
        took = time.perf_counter() - t
        faiss.write_index(index, str(path))
        out.put({"build_s": took, "build_peak_gb": _peak(), "index_bytes": path.stat().st_size,
                 "spec": spec.to_json()})
        return
    base = _peak()  # the interpreter with numpy and faiss, before any data
    queries = np.load(folder / "queries.npy")
    opened = search.OpenIndex(faiss.read_index(str(path)), np.load(folder / "gallery.npy", mmap_mode="r"),
                              [], spec)
    singles = min(len(queries), args["flat_singles"] if spec.exact else len(queries))
    lat = _latencies(opened, queries, K, singles)
    t = time.perf_counter()
    ranked, _ = opened.rank(queries, K)
    batched = len(queries) / (time.perf_counter() - t)
    if spec.exact:
        np.save(folder / "truth.npy", ranked)
        recall = raw = 1.0
    else:
        truth = np.load(folder / "truth.npy").tolist()
        recall = _recall(ranked, truth)
        raw = _recall(opened.index.search(queries, K)[1], truth)  # the index alone, no re-rank
    out.put({"raw_recall": raw, "base_gb": base, "p50_ms": 1000 * float(np.percentile(lat, 50)),
             "p95_ms": 1000 * float(np.percentile(lat, 95)),
             "singles": singles, "batched_qps": batched, "recall": recall, "search_peak_gb": _peak()})


def _recall(ranked, truth) -> float:
    return float(sum(len(set(a) & set(b)) for a, b in zip(ranked.tolist(), truth)) / (K * len(truth)))


def _child(ctx, target, *a) -> dict:
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*a, q))
    p.start()
    res = q.get() if target is _run else {}
    p.join()
    if p.exitcode != 0:
        raise SystemExit(f"{a[0] if a else 'child'} failed with exit code {p.exitcode}")
    return res


def _gen(work: str, n: int, d: int, n_q: int, q) -> None:
    generate(Path(work), n, d, n_q)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--kind", default="auto", help="the kind to compare with flat (auto, hnsw, ivf, a factory string)")
    ap.add_argument("--max-memory", default=None, help="as zscir index --max-memory [default: a quarter of RAM]")
    ap.add_argument("--flat-singles", type=int, default=100, help="single flat queries timed (each scans it all)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the gallery is written [default: a temp dir]")
    args = ap.parse_args()
    from zscir_cli.index import ann

    budget = ann.parse_memory(args.max_memory) if args.max_memory else ann.default_max_memory()
    work = Path(tempfile.mkdtemp(prefix="ann-", dir=args.workdir))
    ctx = mp.get_context("spawn")
    opts = {"max_memory": budget, "flat_singles": args.flat_singles}
    try:
        t = time.perf_counter()
        _child(ctx, _gen, str(work), args.size, args.dim, args.queries)
        fp16 = (work / "gallery.npy").stat().st_size / GB
        print(f"gallery {args.size} x {args.dim}, a mixture of {max(16, args.size // 10)} Gaussians on the "
              f"sphere (3 levels), fp16 on disk {fp16:.2f} GB (written in {time.perf_counter() - t:.0f} s); "
              f"{args.queries} queries, top {K}", flush=True)
        rows = {}
        for kind in ("flat", args.kind):
            res = {**_child(ctx, _run, f"build:{kind}", str(work), opts),
                   **_child(ctx, _run, f"search:{kind}", str(work), opts)}
            res["peak_gb"] = max(res["build_peak_gb"], res["search_peak_gb"])
            rows[kind] = res
            spec = ann.IndexSpec.from_json(res["spec"])
            print(f"{kind:>5}: {spec.label()}{' - ' + spec.reason if spec.reason else ''}\n"
                  f"       build {res['build_s']:.1f} s, peak RSS build {res['build_peak_gb']:.2f} GB / search "
                  f"{res['search_peak_gb']:.2f} GB, index {res['index_bytes'] / GB:.2f} GB; single queries "
                  f"({res['singles']}) p50 {res['p50_ms']:.1f} ms, p95 {res['p95_ms']:.1f} ms; batched "
                  f"{res['batched_qps']:.0f} queries/s; recall@{K} {res['recall']:.3f} (the index alone: "
                  f"{res['raw_recall']:.3f}); interpreter alone {res['base_gb']:.2f} GB", flush=True)
        a, f = rows[args.kind], rows["flat"]
        ok = a["p50_ms"] <= 10 and a["recall"] >= 0.95 and a["peak_gb"] <= 1.5 * fp16
        print(f"target p50 <= 10 ms, recall@{K} >= 0.95, memory <= 1.5 x fp16 = {1.5 * fp16:.2f} GB: "
              f"{'met' if ok else 'NOT met'}")
        print(f"{args.kind}: recall@{K} {a['recall']:.3f}, p50 {a['p50_ms']:.1f} ms, flat p50 {f['p50_ms']:.1f} ms, "
              f"memory {a['peak_gb']:.2f} GB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
