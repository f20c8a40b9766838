"""Ranking at CIRCO's size: 1000 queries against a synthetic 123,403 x 768 gallery, top 50.

Runs zscir's ranking function (`index.search.rank`: exact inner product with faiss, a top-k heap
per query, queries in batches) and, for comparison, a full score matrix with a full sort, in
separate child processes so that each one's peak memory (max RSS) is its own. Prints time and
peak memory of each; the gallery alone is 123,403 x 768 x 4 bytes = 379 MB.

    python benchmarks/rank_circo.py [--queries 1000] [--gallery 123403] [--dim 768]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import time


def _data(n_gallery: int, n_queries: int, dim: int):
    import numpy as np

    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((n_gallery, dim), dtype=np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = gallery[rng.choice(n_gallery, n_queries, replace=False)] + 0.1 * rng.standard_normal(
        (n_queries, dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return gallery, queries


def _run(which: str, args: dict, out) -> None:
    import numpy as np

    gallery, queries = _data(args["gallery"], args["queries"], args["dim"])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    if which == "zscir":
        from zscir_cli.index.search import build_faiss, rank

        index = build_faiss(gallery)
        built = time.perf_counter() - t
        idx, _ = rank(index, queries, 50)
    else:  # the naive way: a full (Q, N) score matrix and a full sort
        import torch

        built = 0.0
        scores = torch.from_numpy(queries) @ torch.from_numpy(gallery).T
        idx = torch.argsort(scores, dim=1, descending=True)[:, :50].numpy()
    took = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.put({"which": which, "seconds": took, "build_seconds": built, "peak_mb": peak / 1024,
             "extra_mb": (peak - base) / 1024, "first": np.asarray(idx[0, :5]).tolist()})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--gallery", type=int, default=123403)
    ap.add_argument("--dim", type=int, default=768)
    args = vars(ap.parse_args())
    ctx = mp.get_context("spawn")
    results = []
    for which in ("zscir", "full-sort"):
        q = ctx.Queue()
        p = ctx.Process(target=_run, args=(which, args, q))
        p.start()
        results.append(q.get())
        p.join()
    print(f"{args['queries']} queries x {args['gallery']} x {args['dim']} gallery, top 50")
    for r in results:
        print(f"{r['which']:>10}: {r['seconds']:6.2f} s ({args['queries'] / r['seconds']:7.0f} queries/s), "
              f"peak RSS {r['peak_mb']:7.0f} MB, of which {r['extra_mb']:6.0f} MB above the data")
    print("same top 5 for the first query: " + json.dumps(results[0]["first"] == results[1]["first"]))


if __name__ == "__main__":
    main()
