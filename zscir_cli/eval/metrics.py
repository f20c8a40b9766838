"""Retrieval metrics, in percent, as the public protocols define them.

`ranked` is a (Q, K) array of gallery rows (best first, -1 for none); `positives[q]` is the
set of rows that count as correct for query q.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def recall_at_k(ranked: np.ndarray, positives: Sequence[set[int]], k: int) -> float:
    """Share of queries with at least one positive among the top k (CIRR, FashionIQ)."""
    if len(positives) == 0:
        return float("nan")
    hits = [bool(positives[q] & set(ranked[q, :k].tolist())) for q in range(len(positives))]
    return 100.0 * float(np.mean(hits))


def average_precision_at_k(row: Sequence[int], positives: set[int], k: int) -> float:
    """AP@K = sum over ranks r <= K holding a positive of precision@r, / min(K, #positives).

    This is CIRCO's definition: a query with 3 ground truths that puts all three at ranks
    1, 2, 3 scores 1; one that finds only one of them at rank 1 scores 1/3.
    """
    if not positives:
        return 0.0
    hits, total = 0, 0.0
    for r, item in enumerate(list(row)[:k], start=1):
        if item in positives:
            hits += 1
            total += hits / r
    return total / min(k, len(positives))


def map_at_k(ranked: np.ndarray, positives: Sequence[set[int]], k: int) -> float:
    if len(positives) == 0:
        return float("nan")
    return 100.0 * float(np.mean([average_precision_at_k(ranked[q].tolist(), positives[q], k)
                                  for q in range(len(positives))]))
