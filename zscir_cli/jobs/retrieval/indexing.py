"""`zscir index`: a gallery's features and faiss index of some kind, and finding indexes again.

An index's kind (`index.ann`: flat, hnsw, ivf, a factory string, or auto's choice) is part of its
key, so one gallery can have a flat and an hnsw index side by side; asked for a kind it lacks,
a gallery that has an index of another kind gets the new one from the stored fp16 vectors,
without encoding its images again.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from zscir_cli.core.cache import Artifact
from zscir_cli.core.errors import UserError
from zscir_cli.data.galleries import Gallery
from zscir_cli.index import ann, search
from zscir_cli.index.ann import IndexSpec
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.retrieval.encodings import (
    DIGESTS,
    describe_source,
    encode_once,
    index_config,
    index_description,
)
from zscir_cli.jobs.retrieval.encodings import INDEX as KIND
from zscir_cli.model.backbone import Backbone, ModelSpec

__all__ = ["KIND", "IndexResult", "describe_source", "find_index", "index_gallery", "index_spec"]


@dataclass
class IndexResult:
    artifact: Artifact
    built: bool
    skipped: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage of the pass that built it


def index_spec(kind: str | IndexSpec, n: int, dim: int, max_memory: str | int | None = None) -> IndexSpec:
    """The index kind for `n` vectors of `dim` dimensions (`ann.choose`), as a user error when
    the kind or the memory is not understood."""
    if isinstance(kind, IndexSpec):
        return kind
    try:
        budget = ann.parse_memory(max_memory) if isinstance(max_memory, str) else max_memory
        return ann.choose(kind, n, dim, budget)
    except ValueError as e:
        raise UserError(str(e), "Use --kind auto, flat, hnsw or ivf, or a faiss factory string such as "
                                "IVF4096,PQ64; --max-memory takes e.g. 8G or 512M.") from None


def index_gallery(ctx: Context, backbone: Backbone, gallery: Gallery, *, batch_size: int = 64,
                  skip_bad: bool = False, force: bool = False, grid: int | None = None,
                  kind: str | IndexSpec = "flat", max_memory: str | int | None = None) -> IndexResult:
    """The gallery's index of `kind` (see `index_spec`), built once per (model, gallery, kind);
    with `grid`, the visual tokens of the same pass are kept as a features artifact too (what
    trained query methods need)."""
    spec = index_spec(kind, len(gallery), backbone.embed_dim, max_memory)
    if not spec.exact and not force and grid is None:
        derived = _from_sibling(ctx, backbone, gallery, spec, skip_bad)
        if derived is not None:
            return derived
    enc = encode_once(ctx, backbone, gallery, index=True, grid=grid, skip_bad=skip_bad, force=force,
                      batch_size=batch_size, kind=spec)
    art = enc.index
    assert art is not None
    return IndexResult(art, art.ref in enc.built, enc.skipped, dict(art.manifest.get("timings_s", {})))


def _from_sibling(ctx: Context, backbone: Backbone, gallery: Gallery, spec: IndexSpec,
                  skip_bad: bool) -> IndexResult | None:
    """The index of `spec` made from the vectors of an index of another kind of the same gallery
    and model (None when there is none, or when the wanted one exists already)."""
    icfg = index_config(backbone, gallery.identity(), skip_bad, spec)
    key = ctx.store.key_for(KIND, icfg)
    base = {k: v for k, v in icfg.items() if k != "index"}
    if ctx.store.get(KIND, key) is not None:
        return None
    siblings = [a for a in ctx.store.list(KIND) if a.key != key and
                {k: v for k, v in a.manifest.get("config", {}).items() if k != "index"} == base and
                a.key == ctx.store.key_for(KIND, a.manifest.get("config", {}))]  # same library versions too
    if not siblings:
        return None
    source = siblings[0]
    ctx.store.ensure_writable()
    with ctx.store.lock(KIND, key, on_wait=ctx.reporter.info):
        if ctx.store.get(KIND, key) is None:
            _derive(ctx, source, icfg, key, spec, backbone.spec.label())
    art = ctx.store.get(KIND, key)
    assert art is not None
    return IndexResult(art, True, len(art.manifest.get("skipped", [])), dict(art.manifest.get("timings_s", {})))


def _derive(ctx: Context, source: Artifact, icfg: dict[str, Any], key: str, spec: IndexSpec, label: str) -> None:
    t = time.perf_counter()
    m = source.manifest
    ctx.reporter.info(f"building a {spec.kind} index from the vectors of index {source.key}")
    with ctx.store.create(KIND, key, config=icfg, model=icfg["model"], inputs=[{"kind": KIND, "key": source.key}],
                          description=index_description(m["count"], describe_source(m.get("gallery_source", {})),
                                                        label, spec)) as out:
        for name in (search.FEATURES, search.IDS, DIGESTS):  # artifacts never change: a hard link is a copy
            if not (source.path / name).is_file():  # an index made before digests were kept
                continue
            try:
                os.link(source.path / name, out.path / name)
            except OSError:
                shutil.copyfile(source.path / name, out.path / name)
        search.index_folder(out.path, spec, ctx.reporter.info)
        out.manifest.update({k: m[k] for k in ("count", "dim", "gallery_source", "skipped") if k in m})
        out.manifest.update({"from_index": source.key, "index": spec.to_json(),
                             "timings_s": {"read_decode": 0.0, "encode": 0.0,
                                           "write": round(time.perf_counter() - t, 3)}})


def index_of_dataset(ctx: Context, dataset_key: str) -> Artifact | None:
    """The newest index built on a gallery of the prepared data set `dataset_key` (any split)."""
    def key_of(source: dict[str, Any]) -> str | None:
        d = source.get("dataset")
        return d.get("key") if isinstance(d, dict) else d

    found = ctx.store.find(KIND, lambda a: key_of(a.manifest.get("gallery_source", {})) == dataset_key)
    return found[0] if found else None


def find_index(ctx: Context, spec: ModelSpec | None, ref: str | None = None) -> Artifact:
    """The index named by `ref`, else the newest one built with `spec`'s model, of any kind."""
    if ref:
        art = ctx.store.resolve(ref if "/" in ref else f"{KIND}/{ref}")
        if spec is not None and art.manifest.get("model") != spec.identity():
            raise UserError(
                f"Index {art.key} was built with {_label(art.manifest.get('model'))}, "
                f"not {spec.label()}.",
                "Query it with the model it was built with (leave out --model), or build an index "
                "with this model: zscir index GALLERY --model ... --pretrained ...")
        return art
    assert spec is not None
    ident = spec.identity()
    found = ctx.store.find(KIND, lambda a: a.manifest.get("model") == ident)
    if not found:
        others = ctx.store.list(KIND)
        extra = (f" The cache has indexes for: {', '.join(sorted({_label(a.manifest.get('model')) for a in others}))}."
                 if others else "")
        raise UserError(f"No index built with {spec.label()}.{extra}",
                        "Build one with 'zscir index GALLERY' and the same --model/--pretrained, "
                        "or name one with --index.")
    return found[0]


def _label(model: dict | None) -> str:
    if not model:
        return "an unknown model"
    return ModelSpec(model["name"], model.get("pretrained")).label()
