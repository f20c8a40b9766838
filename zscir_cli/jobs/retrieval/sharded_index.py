"""`zscir index` under torchrun: every process embeds its parts of the gallery, rank 0 indexes them.

The gallery's rows are cut into parts of `part_size` rows, rounded up to a multiple of the batch
size: every batch then holds the images it holds in one process, so the features are the same
numbers. Rank 0 lists the parts not yet written and deals them out in turn; each process writes
its parts in clip-retrieval's layout (`pipeline.embeddings`) into `<cache>/.parts/index-<key>/`
as they finish, each file under a temporary name and then renamed. A rerun after a crash, with
any number of processes, skips the parts already written. Rank 0 waits for the last part by
watching the files (no collective, so a long part never trips a process-group timeout), builds
the index from the parts and hard-links (or copies) them into the index artifact (`embeddings/`), where autofaiss
and clip-retrieval's tools read them. Several machines need the cache on a shared file system.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zscir_cli.core import faults
from zscir_cli.core.arrays import NpyAppender
from zscir_cli.core.errors import UserError
from zscir_cli.data.galleries import Gallery
from zscir_cli.index.ann import IndexSpec
from zscir_cli.model.backbone import Backbone
from zscir_cli.jobs.retrieval import embeddings as emb
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.retrieval.encoder import GalleryRows, RunStats, run_encoder
from zscir_cli.jobs.retrieval.encodings import (
    INDEX,
    check_failures,
    describe_source,
    encode_once,
    features_of,
    index_config,
    index_description,
)
from zscir_cli.jobs.retrieval.indexing import IndexResult, index_spec

if TYPE_CHECKING:
    from zscir_cli.jobs.training.loop import Dist

PARTS = ".parts"
LAYOUT = "layout.json"
LOG_DIR = "log"  # per part: unreadable images and timings, written before the part's files
EMBEDDINGS = "embeddings"  # the parts' folder inside the index artifact
POLL_S = 0.5


def parts_folder(root: Path, key: str) -> Path:
    return Path(root) / PARTS / f"index-{key}"


@dataclass
class Plan:
    action: str  # found | features | encode | error
    pending: list[int] = field(default_factory=list)  # parts to write, in order
    count: int = 0  # parts of the gallery
    part_rows: int = 0
    error: tuple[str, str] | None = None


@dataclass
class ShardedResult:
    index: IndexResult
    parts: int
    reused: int  # parts a previous run had written
    processes: int


class _PartWriter:
    """One part's features, fp16 (as the index stores them), into a memory-mapped .npy under a
    temporary name."""

    def __init__(self, path: Path, capacity: int, dim: int):
        self.npy, self.path, self.dim = NpyAppender(path, capacity, np.float16), path, dim

    def write(self, rows: list[int], v: np.ndarray, tokens: np.ndarray | None) -> None:
        self.npy.append(v)

    def close(self) -> None:
        self.npy.close()
        if self.npy.count == 0:  # no readable image in the part: an empty part keeps the numbering
            np.save(self.path, np.zeros((0, self.dim), np.float16))


def index_sharded(ctx: Context, backbone: Backbone, gallery: Gallery, d: Dist, *, part_size: int = 100_000,
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
    folder = parts_folder(ctx.store.root, key)
    part_rows = math.ceil(part_size / batch_size) * batch_size
    plan = d.share(_plan(ctx, backbone, len(gallery), ident, key, folder, force, part_rows) if d.main else None)
    if plan.action == "error":
        raise UserError(*plan.error)
    if plan.action != "encode":
        if not d.main:
            return None
        res = _reuse(ctx, backbone, gallery, key, plan.action, batch_size, spec, skip_bad)
        return ShardedResult(res, 0, 0, d.world)
    mine = plan.pending[d.rank::d.world]
    for k in mine:
        _write_part(ctx, backbone, gallery, folder, k, plan, batch_size)
        faults.point("index:after-part")
    if not d.main:
        return None
    _wait_for_parts(ctx, folder, plan)
    stats = _collect_logs(folder, plan)
    check_failures(gallery, stats, strict=not skip_bad, index=True)
    art = _assemble(ctx, gallery, folder, key, icfg, plan, stats, backbone.spec.label(), d.world, spec)
    return ShardedResult(IndexResult(art, True, len(stats.failures), dict(art.manifest.get("timings_s", {}))),
                         plan.count, plan.count - len(plan.pending), d.world)


def _plan(ctx: Context, backbone: Backbone, n: int, ident: dict[str, Any], key: str, folder: Path,
          force: bool, part_rows: int) -> Plan:
    """Rank 0's decision, shared with every rank (a user error too, so that all stop alike)."""
    try:
        found = ctx.store.get(INDEX, key)
        if found is not None and not force:
            return Plan("found")
        if found is None and not force and features_of(ctx, backbone, ident) is not None:
            return Plan("features")  # the cached features hold the numbers: no encoding
        ctx.store.ensure_writable()
        if force:
            if found is not None:
                ctx.store.remove(found)
            shutil.rmtree(folder, ignore_errors=True)
        count = math.ceil(n / part_rows)
        layout = {"rows": n, "part_rows": part_rows, "parts": count}
        if (folder / LAYOUT).is_file() and json.loads((folder / LAYOUT).read_text()) != layout:
            ctx.reporter.info(f"discarding the parts in {folder}: they were cut with another part size")
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / LAYOUT).write_text(json.dumps(layout))
        pending = [k for k in range(count) if not _done(folder, k, count)]
        if len(pending) < count:
            ctx.reporter.info(f"resuming: {count - len(pending)} of {count} parts are already written in {folder}")
        return Plan("encode", pending, count, part_rows)
    except UserError as e:
        return Plan("error", error=(e.message, e.hint))


def _done(folder: Path, k: int, count: int) -> bool:
    name = emb.part_name(k, count)
    return (folder / LOG_DIR / f"part_{name}.json").is_file() and emb.part_done(folder, name)


def _reuse(ctx: Context, backbone: Backbone, gallery: Gallery, key: str, action: str, batch_size: int,
           spec: IndexSpec, skip_bad: bool) -> IndexResult:
    if action == "found":
        art = ctx.store.get(INDEX, key)
        assert art is not None
        return IndexResult(art, False, len(art.manifest.get("skipped", [])), dict(art.manifest.get("timings_s", {})))
    enc = encode_once(ctx, backbone, gallery, index=True, batch_size=batch_size, kind=spec, skip_bad=skip_bad)
    assert enc.index is not None
    return IndexResult(enc.index, enc.index.ref in enc.built, enc.skipped, dict(enc.index.manifest.get("timings_s", {})))


def _write_part(ctx: Context, backbone: Backbone, gallery: Gallery, folder: Path, k: int, plan: Plan,
                batch_size: int) -> None:
    rows = range(k * plan.part_rows, min(len(gallery), (k + 1) * plan.part_rows))
    part = GalleryRows(gallery, rows)
    name = emb.part_name(k, plan.count)
    tmp = folder / "tmp"
    tmp.mkdir(exist_ok=True)
    writer = _PartWriter(tmp / f"img_emb_{name}.{os.getpid()}.npy", len(part), backbone.embed_dim)
    stats = run_encoder(ctx, backbone, part, writer, batch_size=batch_size,
                        description=f"part {k + 1}/{plan.count}: {len(part)} images")
    writer.close()
    log = {"rows": [rows[0], rows[-1] + 1], "written": len(stats.rows),
           "failures": [[rows[i], e] for i, e in stats.failures], "timings_s": stats.timings.as_dict()}
    (folder / LOG_DIR).mkdir(exist_ok=True)
    log_tmp = tmp / f"part_{name}.{os.getpid()}.json"
    log_tmp.write_text(json.dumps(log))
    os.replace(log_tmp, folder / LOG_DIR / f"part_{name}.json")
    emb.publish_part(folder, name, writer.path, [part.ids[i] for i in stats.rows],
                     [_path_of(gallery, rows[i]) for i in stats.rows], tmp)


def _path_of(gallery: Gallery, row: int) -> str:
    """The image's file when the gallery has files (what clip-retrieval's image_path holds), else its id."""
    files = getattr(gallery, "files", None)
    return str(files[row]) if files is not None else gallery.ids[row]


def _wait_for_parts(ctx: Context, folder: Path, plan: Plan) -> None:
    """Until every part is written (the other processes' too). A process that dies takes the
    group down with it (torchrun stops the rest), so this never waits for a dead writer."""
    waiting = [k for k in plan.pending if not _done(folder, k, plan.count)]
    if not waiting:
        return
    with ctx.reporter.task(f"waiting for {len(waiting)} part(s) from the other processes", total=len(waiting)) as task:
        while waiting:
            time.sleep(POLL_S)
            left = [k for k in waiting if not _done(folder, k, plan.count)]
            task.advance(len(waiting) - len(left))
            waiting = left


def _collect_logs(folder: Path, plan: Plan) -> RunStats:
    """Unreadable images and timings of every part (this run's and a previous one's)."""
    stats = RunStats()
    for k in range(plan.count):
        log = json.loads((folder / LOG_DIR / f"part_{emb.part_name(k, plan.count)}.json").read_text())
        stats.failures.extend((int(r), str(e)) for r, e in log["failures"])
        stats.rows.extend(range(log["written"]))  # counts only: the ids come from the metadata
        for stage, s in log["timings_s"].items():
            setattr(stats.timings, stage, getattr(stats.timings, stage) + float(s))
    return stats


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link (no second copy on disk; the parts stay until the index is published), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _assemble(ctx: Context, gallery: Gallery, folder: Path, key: str, icfg: dict[str, Any], plan: Plan,
              stats: RunStats, label: str, world: int, spec: IndexSpec):
    """Rank 0: the index from the parts, with the parts hard-linked (or copied) into it."""
    with ctx.store.lock(INDEX, key, on_wait=ctx.reporter.info):
        found = ctx.store.get(INDEX, key)
        if found is not None:  # another group finished first
            return found
        parts = emb.scan_parts(folder)
        ids = [i for p in parts for i in emb.read_ids(p)]
        t = time.perf_counter()
        with ctx.store.create(INDEX, key, config=icfg, model=icfg["model"],
                              description=index_description(len(ids), describe_source(gallery.source), label,
                                                            spec)) as out:
            emb.build_index(out.path, parts, ids, len(ids), ctx, spec, normalise=False)
            (out.path / EMBEDDINGS).mkdir()
            for sub in (emb.IMG_DIR, emb.META_DIR):
                shutil.copytree(folder / sub, out.path / EMBEDDINGS / sub, copy_function=_link_or_copy)
            timings = {**stats.timings.as_dict(), "index": round(time.perf_counter() - t, 3)}
            out.manifest.update({"count": len(ids), "dim": parts[0].dim, "gallery_source": gallery.source,
                                 "skipped": [{"id": gallery.ids[i], "error": e} for i, e in stats.failures],
                                 "parts": plan.count, "processes": world, "embeddings": EMBEDDINGS,
                                 "index": spec.to_json(),
                                 "timings_s": timings})
    shutil.rmtree(folder, ignore_errors=True)
    art = ctx.store.get(INDEX, key)
    assert art is not None
    return art
