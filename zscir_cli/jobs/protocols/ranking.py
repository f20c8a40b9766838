"""The one ranking path: every query of a suite, encoded by a query method and ranked against
each gallery's index under the suite's protocol. Every benchmark's metrics and submission files
are built on its `Rankings`."""

from __future__ import annotations

import hashlib

import numpy as np

from zscir_cli.core.errors import UserError
from zscir_cli.index import search
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.protocols.predictions import Rankings
from zscir_cli.jobs.protocols.suites import PathGallery, Suite, SuiteImages, benchmark_suite
from zscir_cli.jobs.protocols.trees import PreparedSplit
from zscir_cli.jobs.retrieval.encoder import encode_gallery
from zscir_cli.jobs.retrieval.encodings import encode_once
from zscir_cli.jobs.retrieval.features import FeatureSet, cached_features
from zscir_cli.jobs.retrieval.indexing import index_spec
from zscir_cli.jobs.retrieval.methods import QueryMethod
from zscir_cli.model.backbone import Backbone

DEPTH = 50  # every protocol needs at most the top 50
# Above this many images, the visual tokens of the references alone are stored, not the whole
# gallery's (CIRCO: 123k images x 17 tokens would take gigabytes for a few hundred references).
MAX_TOKEN_GALLERY = 20_000


def _reference_features(ctx: Context, backbone: Backbone, suite: Suite, group: str, refs: list[str],
                        gal_row: dict[str, int], gal_feats: np.ndarray, tokens: FeatureSet | None,
                        grid: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(Q, D) global features of the references, taken from the gallery's index when they are in
    it, and their (Q, M, D) visual tokens when `grid` is given."""
    apart = sorted({r for r in refs if r not in gal_row or (grid is not None and tokens is None)})
    own = None
    if apart:  # references outside the gallery, or tokens of the references alone
        own = cached_features(ctx, backbone, PathGallery(apart, suite.references, {
            "kind": "dataset", "dataset": suite.dataset_key, "part": f"references/{group}", "split": suite.split,
            "ids": _digest(apart)}), grid=grid or 4)
    own_row = {r: i for i, r in enumerate(own.ids)} if own is not None else {}
    v = np.stack([np.asarray(gal_feats[gal_row[r]] if r in gal_row else own.image[own_row[r]],  # type: ignore[union-attr]
                             dtype=np.float32) for r in refs]) if refs else np.zeros((0, gal_feats.shape[1]), np.float32)
    if grid is None:
        return v, None
    if tokens is not None:
        row = {g: i for i, g in enumerate(tokens.ids)}
        return v, np.asarray(tokens.tokens[[row[r] for r in refs]], dtype=np.float32)
    return v, np.asarray(own.tokens[[own_row[r] for r in refs]], dtype=np.float32)  # type: ignore[union-attr]


def _digest(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def _raw_reference_features(ctx: Context, backbone: Backbone, suite: Suite, refs: list[str]) -> np.ndarray:
    """(Q, D) the references' image features before normalisation, encoded again (an index
    keeps normalised features only): what a released mapper takes."""
    unique = sorted(set(refs))
    images = SuiteImages(suite, unique)
    encoded = encode_gallery(ctx, backbone, images, description=f"encoding {len(unique)} references", raw=True)
    if encoded.failures:
        row, err = encoded.failures[0]
        raise UserError(f"Reference image {unique[row]} could not be read ({err}).", "Fix the file and run again.")
    row_of = {unique[r]: i for i, r in enumerate(encoded.rows)}
    return encoded.features[[row_of[r] for r in refs]] if refs else encoded.features[:0]


def rank_split(ctx: Context, method: QueryMethod, suite: Suite | PreparedSplit, kind: str = "flat") -> Rankings:
    """Rank every query of the split with `method`, following the benchmark's protocol, against
    each gallery's index of `kind` (flat: exact, as the protocols are defined), encoded by the
    method's backbone (with its preprocessing)."""
    if isinstance(suite, PreparedSplit):
        suite = benchmark_suite(suite)
    backbone = method.backbone
    top: list[list[str]] = [[] for _ in suite.queries]
    index: list[str] = []
    subset: list[list[str]] | None = [[] for _ in suite.queries] if suite.name == "cirr" else None
    grid = method.grid if method.needs_tokens else None
    for group, gallery in suite.galleries.items():
        rows = [i for i, q in enumerate(suite.queries) if q.group == group]
        if not rows:
            continue
        whole = grid is not None and (suite.name == "shapes" or len(gallery) <= MAX_TOKEN_GALLERY)
        spec = index_spec(kind, len(gallery), backbone.embed_dim)
        enc = encode_once(ctx, backbone, gallery, index=True, grid=grid if whole else None, kind=spec)
        index.append(enc.index.key)  # type: ignore[union-attr]
        opened = search.open_index(enc.index.path)  # type: ignore[union-attr]
        gal_feats, gal_ids = opened.features, opened.ids
        gal_row = {g: i for i, g in enumerate(gal_ids)}
        qs = [suite.queries[i] for i in rows]
        refs = [q.reference for q in qs]
        if method.raw_reference:
            v, t = _raw_reference_features(ctx, backbone, suite, refs), None
        else:
            tokens = FeatureSet.open(enc.features) if enc.features is not None else None
            v, t = _reference_features(ctx, backbone, suite, group, refs, gal_row, gal_feats, tokens, grid)
        asked = [method.captions(suite.name, q.texts) for q in qs]  # several: their features averaged
        feats = method.encode(v, [a[0] for a in asked], t)
        if asked and len(asked[0]) > 1:
            for j in range(1, len(asked[0])):
                feats = feats + method.encode(v, [a[j] for a in asked], t)
            feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        exclude = [[gal_row[q.reference]] if suite.remove_reference and q.reference in gal_row else [] for q in qs]
        ranked, _ = search.rank(opened, feats, DEPTH, exclude=exclude)
        for j, i in enumerate(rows):
            top[i] = [gal_ids[r] for r in ranked[j] if r >= 0]
            if subset is not None:
                members = [m for m in qs[j].subset if m != qs[j].reference and m in gal_row]
                if members:
                    sub = np.asarray(gal_feats[[gal_row[m] for m in members]], dtype=np.float32)
                    order, _ = search.rank(sub, feats[j:j + 1], len(members))
                    subset[i] = [members[r] for r in order[0] if r >= 0]
    return Rankings(top, subset, index)
