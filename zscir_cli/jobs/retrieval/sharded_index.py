"""`zscir index` under torchrun: every process embeds its parts of the gallery (`parts`), rank 0
indexes them.

Each part is written in clip-retrieval's layout (`embeddings`) into `<cache>/.parts/index-<key>/`:
the fp16 features as `img_emb/img_emb_{i}.npy` and the ids and files as
`metadata/metadata_{i}.parquet`. Rank 0 builds the index from the parts and hard-links (or
copies) them into the index artifact (`embeddings/`), where autofaiss and clip-retrieval's tools
read them; the other ranks return once their parts are written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from zscir_cli.core.arrays import NpyAppender
from zscir_cli.core.cache import Artifact
from zscir_cli.core.errors import UserError
from zscir_cli.data.galleries import Gallery
from zscir_cli.index.ann import IndexSpec
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.distributed import Dist
from zscir_cli.jobs.retrieval import embeddings as emb
from zscir_cli.jobs.retrieval.encoder import RunStats, run_encoder
from zscir_cli.jobs.retrieval.encodings import (
    DIGESTS,
    INDEX,
    check_failures,
    describe_source,
    encode_once,
    features_of,
    index_config,
    index_description,
)
from zscir_cli.jobs.retrieval.indexing import IndexResult, index_spec
from zscir_cli.jobs.retrieval.parts import Part, PartsRun, Plan, log_fields

EMBEDDINGS = "embeddings"  # the parts' folder inside the index artifact


@dataclass
class ShardedResult:
    index: IndexResult
    parts: int
    reused: int  # parts a previous run had written
    processes: int


class _PartWriter:
    """One part's features, fp16 (as the index stores them), into a memory-mapped .npy under a
    temporary name."""

    def __init__(self, part: Part, dim: int):
        self.path, self.dim = part.tmp / f"img_emb_{part.name}.{os.getpid()}.npy", dim
        self.npy = NpyAppender(self.path, len(part.rows), np.float16)

    def write(self, rows: list[int], v: np.ndarray, tokens: np.ndarray | None) -> None:
        self.npy.append(v)

    def close(self) -> None:
        self.npy.close()
        if self.npy.count == 0:  # no readable image in the part: an empty part keeps the numbering
            np.save(self.path, np.zeros((0, self.dim), np.float16))


def index_sharded(ctx: Context, backbone, gallery: Gallery, d: Dist, *, part_size: int = 100_000,
                  batch_size: int = 64, skip_bad: bool = False, force: bool = False, kind: str | IndexSpec = "flat",
                  max_memory: str | int | None = None) -> ShardedResult | None:
    """The gallery's index of `kind`, its parts embedded by every process of the group; the result
    on rank 0 (None on the others, which return once their parts are written)."""
    n = len(gallery)
    if n == 0:
        raise UserError("The gallery has no images.", "Give a folder or data set that holds images.")
    spec = index_spec(kind, n, backbone.embed_dim, max_memory)
    ident = gallery.identity()  # stats every file once
    icfg = index_config(backbone, ident, skip_bad, spec)
    key = ctx.store.key_for(INDEX, icfg)
    run = PartsRun(ctx, d, INDEX, key, n, math.ceil(part_size / batch_size) * batch_size)
    with run.held():  # while this process works on the build

        def decide() -> str | None:
            found = ctx.store.get(INDEX, key)
            if found is not None and not force:
                return "found"
            if found is None and not force and features_of(ctx, backbone, ident) is not None:
                return "features"  # the cached features hold the numbers: no encoding
            if force:
                ctx.store.ensure_writable()
                if found is not None:
                    ctx.store.remove(found)
                shutil.rmtree(run.folder, ignore_errors=True)
            return None

        plan = run.plan(decide)
        if plan.action == "error":
            raise UserError(*plan.error)  # type: ignore[misc]
        if plan.action != "encode":
            if not d.main:
                return None
            return ShardedResult(_reuse(ctx, backbone, gallery, key, plan.action, batch_size, spec, skip_bad), 0, 0,
                                 d.world)

        def write_part(part: Part) -> dict[str, Any]:
            writer = _PartWriter(part, backbone.embed_dim)
            stats = run_encoder(ctx, backbone, part.gallery(gallery), writer, batch_size=batch_size,
                                description=f"part {part.number + 1}/{plan.count}: {len(part.rows)} images")
            writer.close()
            emb.publish_part(run.folder, part.name, writer.path, [gallery.ids[part.rows[i]] for i in stats.rows],
                             [_path_of(gallery, part.rows[i]) for i in stats.rows], part.tmp)
            return log_fields(stats, part.rows)

        run.write(plan, write_part, "index:after-part")
        if not d.main:
            return None
        art = run.finish(plan, lambda _logs, stats: _assemble(ctx, gallery, run, icfg, plan, stats,
                                                              backbone.spec.label(), spec),
                         lambda stats: check_failures(gallery, stats, strict=not skip_bad, index=True), waited_for=False)
        skipped = len(art.manifest.get("skipped", []))
        return ShardedResult(IndexResult(art, True, skipped, dict(art.manifest.get("timings_s", {}))),
                             plan.count, plan.count - len(plan.pending), d.world)


def _reuse(ctx: Context, backbone, gallery: Gallery, key: str, action: str, batch_size: int,
           spec: IndexSpec, skip_bad: bool) -> IndexResult:
    if action == "found":
        art = ctx.store.get(INDEX, key)
        assert art is not None
        return IndexResult(art, False, len(art.manifest.get("skipped", [])), dict(art.manifest.get("timings_s", {})))
    enc = encode_once(ctx, backbone, gallery, index=True, batch_size=batch_size, kind=spec, skip_bad=skip_bad)
    assert enc.index is not None
    return IndexResult(enc.index, enc.index.ref in enc.built, enc.skipped, dict(enc.index.manifest.get("timings_s", {})))


def _path_of(gallery: Gallery, row: int) -> str:
    """The image's file when the gallery has files (what clip-retrieval's image_path holds), else its id."""
    files = getattr(gallery, "files", None)
    return str(files[row]) if files is not None else gallery.ids[row]


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link (no second copy on disk; the parts stay until the index is published), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _assemble(ctx: Context, gallery: Gallery, run: PartsRun, icfg: dict[str, Any], plan: Plan, stats: RunStats,
              label: str, spec: IndexSpec) -> Artifact:
    """Rank 0, under the index's lock: the index from the parts, with the parts linked into it."""
    parts = emb.scan_parts(run.folder)
    ids = [i for p in parts for i in emb.read_ids(p)]
    t = time.perf_counter()
    with ctx.store.create(INDEX, run.key, config=icfg, model=icfg["model"],
                          description=index_description(len(ids), describe_source(gallery.source), label,
                                                        spec)) as out:
        emb.build_index(out.path, parts, ids, len(ids), ctx, spec, normalise=False)
        (out.path / DIGESTS).write_text(json.dumps(stats.digests))
        (out.path / EMBEDDINGS).mkdir()
        for sub in (emb.IMG_DIR, emb.META_DIR):
            shutil.copytree(run.folder / sub, out.path / EMBEDDINGS / sub, copy_function=_link_or_copy)
        timings = {**stats.timings.as_dict(), "index": round(time.perf_counter() - t, 3)}
        out.manifest.update({"count": len(ids), "dim": parts[0].dim, "gallery_source": gallery.source,
                             "skipped": [{"id": gallery.ids[i], "error": e} for i, e in stats.failures],
                             "parts": plan.count, "processes": run.d.world, "embeddings": EMBEDDINGS,
                             "index": spec.to_json(), "timings_s": timings})
    art = ctx.store.get(INDEX, run.key)
    assert art is not None
    return art
