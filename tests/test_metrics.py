"""Metrics and the ranking function against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from zscir_cli.eval.metrics import average_precision_at_k, map_at_k, recall_at_k
from zscir_cli.index.search import build_faiss, rank


def test_average_precision_follows_circo():
    # 3 ground truths at ranks 1, 3 and 6; K = 5: (1/1 + 2/3) / min(5, 3)
    assert average_precision_at_k([7, 1, 8, 2, 3, 9], {7, 8, 9}, 5) == pytest.approx((1 + 2 / 3) / 3)
    # K = 10 reaches the third: (1 + 2/3 + 3/6) / 3
    assert average_precision_at_k([7, 1, 8, 2, 3, 9], {7, 8, 9}, 10) == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    # more ground truths than K: normalised by K
    assert average_precision_at_k([1, 2], set(range(1, 20)), 2) == pytest.approx(1.0)
    assert average_precision_at_k([5, 6], {1}, 2) == 0.0


def test_recall_and_map_in_percent():
    ranked = np.array([[3, 1, 2], [0, 2, 1], [1, 0, 3]])
    positives = [{1}, {1}, {4}]
    assert recall_at_k(ranked, positives, 1) == 0.0
    assert recall_at_k(ranked, positives, 2) == pytest.approx(100 / 3)
    assert recall_at_k(ranked, positives, 3) == pytest.approx(200 / 3)
    assert map_at_k(ranked, positives, 3) == pytest.approx(100 * (0.5 + 1 / 3 + 0) / 3)


def test_rank_is_exact_top_k_and_excludes():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(50, 8)).astype(np.float32)
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries = gallery[[3, 7]] + 0.01
    idx, scores = rank(gallery, queries, 5)
    full = np.argsort(-(queries @ gallery.T), axis=1)[:, :5]
    assert (idx == full).all()
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    idx2, _ = rank(build_faiss(gallery), queries, 5, exclude=[[3], [7, int(full[1, 1])]])
    assert 3 not in idx2[0] and idx2[0].tolist() == full[0, 1:].tolist() + [idx2[0, 4]]
    assert 7 not in idx2[1] and int(full[1, 1]) not in idx2[1]


def test_rank_pads_when_gallery_is_smaller_than_k():
    gallery = np.eye(3, dtype=np.float32)
    idx, scores = rank(gallery, gallery[:1], 5, exclude=[[0]])
    assert idx[0].tolist()[2:] == [-1, -1, -1]
    assert np.isinf(scores[0, 2:]).all()
