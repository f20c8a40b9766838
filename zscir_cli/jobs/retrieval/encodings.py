"""A gallery encoded once per model: its index and its feature artifacts.

Whatever asks first (`zscir index`, a feature cache for training, an evaluation), the pixels
of a (model, gallery) pair go through the image tower once:

- asked for the index and the visual tokens together, one pass writes both artifacts;
- asked for the index only, a features artifact of the same gallery and model (any grid) is
  reused (its global features are the numbers the encoder gave, rounded to fp16 as the index
  stores them), else one pass of global features only: an index never stores visual tokens;
- asked for tokens only, one pass writes the features artifact.

Keys name the gallery by `Gallery.identity()`: a prepared data set by artifact key, part and
split, files by their paths, sizes and times; never by the name the gallery was asked by.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zscir_cli.core.arrays import NpyAppender
from zscir_cli.core.cache import Artifact, Pending
from zscir_cli.core.errors import UserError
from zscir_cli.data.galleries import Gallery
from zscir_cli.index import search
from zscir_cli.index.ann import FLAT, IndexSpec
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.retrieval.encoder import RunStats, run_encoder
from zscir_cli.model.backbone import Backbone

INDEX = "index"
FEATURES = "features"
# beside ids.json in an index or features artifact: each row's `image_digest`, so that a query's
# reference file (or upload) is known to be an indexed image without reading the gallery again
DIGESTS = "digests.json"
MAX_NAMED_FAILURES = 20


@dataclass
class Encodings:
    index: Artifact | None = None
    features: Artifact | None = None
    built: list[str] = field(default_factory=list)  # refs of the artifacts made by this call

    @property
    def skipped(self) -> int:
        return len(self.index.manifest.get("skipped", [])) if self.index is not None else 0


def index_config(backbone: Backbone, ident: dict[str, Any], skip_bad: bool, kind: IndexSpec = FLAT) -> dict[str, Any]:
    cfg = {"gallery": ident, "model": backbone.spec.identity(), "skip_bad": skip_bad}
    if not kind.exact:  # a flat index keeps the key it had before index kinds
        cfg["index"] = kind.identity()
    return cfg


def index_description(count: int, source: str, label: str, kind: IndexSpec) -> str:
    return f"{count} images of {source} with {label}, {kind.kind} index ({kind.factory})"


def features_config(backbone: Backbone, ident: dict[str, Any], grid: int) -> dict[str, Any]:
    return {"model": backbone.spec.identity(), "source": ident, "grid": grid}


def describe_source(source: dict[str, Any]) -> str:
    if source.get("kind") in ("folder", "embeddings"):
        return source["root"]
    return f"{source.get('name', source.get('kind'))}:{source.get('split')}"


class _Writer:
    """Writes one pass into the index and/or the features artifact being created."""

    def __init__(self, n: int, index: Pending | None, features: Pending | None, kind: IndexSpec = FLAT,
                 log=None):
        self.index = search.IndexWriter(index.path, n, kind, log) if index is not None else None
        self.image = NpyAppender(features.path / "image.npy", n) if features is not None else None
        self.tokens = NpyAppender(features.path / "tokens.npy", n) if features is not None else None

    def write(self, rows: list[int], v: np.ndarray, tokens: np.ndarray | None) -> None:
        if self.index is not None:
            self.index.append(v)
        if self.image is not None and self.tokens is not None and tokens is not None:
            self.image.append(v)
            self.tokens.append(tokens)


def encode_once(ctx: Context, backbone: Backbone, gallery: Gallery, *, index: bool = True, grid: int | None = None,
                skip_bad: bool = False, force: bool = False, batch_size: int = 64, kind: IndexSpec = FLAT) -> Encodings:
    """The index of `gallery` (when `index`) and its features with visual tokens pooled to `grid`
    (when given), each found in the cache or built, the pixels encoded at most once. `kind`: the
    index's kind (`index.ann`), part of its key."""
    ident = gallery.identity()  # stats every file once
    icfg, fcfg = index_config(backbone, ident, skip_bad, kind), (features_config(backbone, ident, grid)
                                                            if grid is not None else None)
    ikey = ctx.store.key_for(INDEX, icfg)
    fkey = ctx.store.key_for(FEATURES, fcfg) if fcfg is not None else None
    found = _lookup(ctx, ikey if index else None, fkey)
    if (not index or (found.index is not None and not force)) and (fkey is None or found.features is not None):
        return found  # without a lock: a read-only cache serves what it holds
    ctx.store.ensure_writable()  # fail before taking locks or encoding, not after
    with contextlib.ExitStack() as held:  # check again, then build, under the locks (index first)
        if index:
            held.enter_context(ctx.store.lock(INDEX, ikey, on_wait=ctx.reporter.info))
        if fkey is not None:
            held.enter_context(ctx.store.lock(FEATURES, fkey, on_wait=ctx.reporter.info))
        out = _lookup(ctx, ikey if index else None, fkey)
        stale = out.index if force else None
        need_index = index and (out.index is None or force)
        need_features = fkey is not None and out.features is None
        if not need_index and not need_features:
            return out
        if need_index and not need_features and not force:
            source = out.features or features_of(ctx, backbone, ident)
            if source is not None:
                out.index = _index_from_features(ctx, gallery, source, icfg, ikey, backbone.spec.label(), kind)
                out.built.append(out.index.ref)
                return out
        if stale is not None:
            ctx.store.remove(stale)
        _encode_into(ctx, backbone, gallery, out, grid=grid, batch_size=batch_size, skip_bad=skip_bad,
                     index=(icfg, ikey) if need_index else None,
                     features=(fcfg, fkey) if need_features else None, kind=kind)
    return out


def _lookup(ctx: Context, ikey: str | None, fkey: str | None) -> Encodings:
    return Encodings(ctx.store.get(INDEX, ikey) if ikey is not None else None,
                     ctx.store.get(FEATURES, fkey) if fkey is not None else None)


def features_of(ctx: Context, backbone: Backbone, ident: dict[str, Any]) -> Artifact | None:
    """A current features artifact (any grid) of this gallery and model."""
    model = backbone.spec.identity()
    for art in ctx.store.list(FEATURES):
        cfg = art.manifest.get("config", {})
        if cfg.get("source") == ident and cfg.get("model") == model and \
                art.key == ctx.store.key_for(FEATURES, cfg):  # same library versions too
            return art
    return None


def _index_from_features(ctx: Context, gallery: Gallery, source: Artifact, icfg: dict, ikey: str,
                         label: str, kind: IndexSpec = FLAT) -> Artifact:
    t = time.perf_counter()
    ids = json.loads((source.path / "ids.json").read_text())
    image = np.load(source.path / "image.npy", mmap_mode="r")
    with ctx.store.create(INDEX, ikey, config=icfg, model=icfg["model"], inputs=[{"kind": source.kind, "key": source.key}],
                          description=index_description(len(ids), describe_source(gallery.source), label, kind)) as out:
        writer = search.IndexWriter(out.path, len(ids), kind, ctx.reporter.info)
        for s in range(0, len(ids), 65536):
            writer.append(np.asarray(image[s:s + 65536], dtype=np.float32))
        writer.close(ids)
        if (source.path / DIGESTS).is_file():
            shutil.copyfile(source.path / DIGESTS, out.path / DIGESTS)
        out.manifest.update({"count": len(ids), "dim": int(image.shape[1]), "gallery_source": gallery.source,
                             "skipped": [], "from_features": source.key, "index": kind.to_json(),
                             "timings_s": {"read_decode": 0.0, "encode": 0.0,
                                           "write": round(time.perf_counter() - t, 3)}})
    return ctx.store.get(INDEX, ikey)  # type: ignore[return-value]


def _encode_into(ctx: Context, backbone: Backbone, gallery: Gallery, out: Encodings, *, grid: int | None,
                 batch_size: int, skip_bad: bool, index: tuple[dict, str] | None,
                 features: tuple[dict, str] | None, kind: IndexSpec = FLAT) -> None:
    n = len(gallery)
    if n == 0:
        raise UserError("The gallery has no images.", "Give a folder or data set that holds images.")
    model, label = backbone.spec.identity(), backbone.spec.label()
    with contextlib.ExitStack() as pending:  # an exception removes both half-written artifacts
        ipend = pending.enter_context(ctx.store.create(INDEX, index[1], config=index[0], model=model)) \
            if index is not None else None
        fpend = pending.enter_context(ctx.store.create(FEATURES, features[1], config=features[0], model=model)) \
            if features is not None else None
        writer = _Writer(n, ipend, fpend, kind, ctx.reporter.info)
        what = "indexing" if ipend is not None else "caching features of"
        stats = run_encoder(ctx, backbone, gallery, writer, grid=grid if fpend is not None else None,
                            batch_size=batch_size, description=f"{what} {n} images")
        check_failures(gallery, stats, strict=fpend is not None or not skip_bad, index=ipend is not None)
        ids = [gallery.ids[i] for i in stats.rows]
        timings = stats.timings.as_dict()
        if ipend is not None and writer.index is not None:
            writer.index.close(ids)
            (ipend.path / DIGESTS).write_text(json.dumps(stats.digests))
            ipend.manifest.update({
                "description": index_description(len(ids), describe_source(gallery.source), label, kind),
                "index": kind.to_json(),
                "count": len(ids), "dim": int(writer.index.index.d), "gallery_source": gallery.source,
                "skipped": [{"id": gallery.ids[i], "error": e} for i, e in stats.failures], "timings_s": timings})
        if fpend is not None and writer.image is not None and writer.tokens is not None:
            writer.image.close()
            writer.tokens.close()
            (fpend.path / "ids.json").write_text(json.dumps(ids))
            (fpend.path / DIGESTS).write_text(json.dumps(stats.digests))
            fpend.manifest.update(features_manifest(fpend, n, label, timings))
    if index is not None:
        out.index = ctx.store.get(INDEX, index[1])
        out.built.append(out.index.ref)  # type: ignore[union-attr]
    if features is not None:
        out.features = ctx.store.get(FEATURES, features[1])
        out.built.append(out.features.ref)  # type: ignore[union-attr]


def features_manifest(pending: Pending, count: int, label: str, timings: dict[str, float]) -> dict[str, Any]:
    """The manifest fields of a features artifact whose image.npy and tokens.npy are written."""
    shape = np.load(pending.path / "tokens.npy", mmap_mode="r").shape
    return {"description": f"frozen features of {count} images, {label}", "count": count,
            "tokens": int(shape[1]), "dim": int(shape[2]), "timings_s": timings}


def check_failures(gallery: Gallery, stats: RunStats, *, strict: bool, index: bool) -> None:
    bad = [(gallery.ids[i], err) for i, err in stats.failures]
    if bad and strict:
        shown = "; ".join(f"{name} ({err})" for name, err in bad[:MAX_NAMED_FAILURES])
        more = f" and {len(bad) - MAX_NAMED_FAILURES} more" if len(bad) > MAX_NAMED_FAILURES else ""
        if index:
            raise UserError(f"{len(bad)} image(s) could not be read: {shown}{more}.",
                            "Fix or remove them, or pass --skip-bad to index the rest.")
        raise UserError(f"{len(bad)} image(s) of the data set could not be read: {shown}{more}.",
                        "Fix them and prepare the data set again.")
    if not stats.rows:
        raise UserError("No image of the gallery could be read.", "Check the gallery's files.")
