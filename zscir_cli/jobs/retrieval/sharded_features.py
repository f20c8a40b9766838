"""Stage I's feature cache under torchrun: every process encodes its parts of the images, once.

The images' rows are cut into parts (at most `MAX_PART_ROWS`, at least `MIN_PARTS` of them when
the gallery allows, each a multiple of the batch size, so every batch holds the images it holds
in one process and the features are the same numbers). The cut depends on the gallery and the
batch size only, never on the number of processes, so a rerun with another number reuses the
parts already written. Rank 0 lists the parts not yet written and deals them out in turn; each
process writes a part's global features and pooled visual tokens (fp16, as the features artifact
stores them) into `<cache>/.parts/features-<key>/`, each file under a temporary name and then
renamed, its log last. Rank 0 waits for the last part by watching the files (no collective, so
a long part never trips a process-group timeout), copies the parts in row order into the
ordinary features artifact (the bytes one process writes) and removes the parts; the other ranks
watch the cache until the artifact is there.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zscir_cli.core import faults
from zscir_cli.core.cache import Artifact, fsync_path
from zscir_cli.core.errors import UserError
from zscir_cli.data.galleries import Gallery
from zscir_cli.core.arrays import NpyAppender
from zscir_cli.model.backbone import Backbone
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.distributed import Dist
from zscir_cli.jobs.retrieval.encoder import GalleryRows, RunStats, run_encoder
from zscir_cli.jobs.retrieval.encodings import (
    FEATURES,
    check_failures,
    features_config,
    features_manifest,
)

PARTS = ".parts"
LAYOUT = "layout.json"
FAILED = "failed.json"  # rank 0's user error, for the ranks that watch for the artifact
MAX_PART_ROWS = 100_000
MIN_PARTS = 64  # enough parts to keep 64 processes busy, when the gallery has the rows
COPY_ROWS = 4096  # rows copied at a time into the artifact: a part's tokens never sit in memory whole
POLL_S = 0.5


def parts_folder(root: Path, key: str) -> Path:
    return Path(root) / PARTS / f"features-{key}"


def part_rows_for(n: int, batch_size: int) -> int:
    rows = min(MAX_PART_ROWS, math.ceil(n / MIN_PARTS))
    return max(1, math.ceil(rows / batch_size)) * batch_size


@dataclass
class Plan:
    action: str  # found | encode | error
    pending: list[int] = field(default_factory=list)  # parts to write, in order
    count: int = 0
    part_rows: int = 0
    error: tuple[str, str] | None = None


def sharded_features(ctx: Context, backbone: Backbone, gallery: Gallery, d: Dist, grid: int,
                     batch_size: int = 64) -> Artifact:
    """The features artifact of `gallery` with visual tokens pooled to `grid` (the key one process
    gives it), found in the cache or built with every process of the group; on every rank."""
    n = len(gallery)
    if n == 0:
        raise UserError("The gallery has no images.", "Give a folder or data set that holds images.")
    fcfg = features_config(backbone, gallery.identity(), grid)
    key = ctx.store.key_for(FEATURES, fcfg)
    folder = parts_folder(ctx.store.root, key)
    plan = d.share(_plan(ctx, n, key, folder, part_rows_for(n, batch_size)) if d.main else None)
    if plan.action == "error":
        raise UserError(*plan.error)
    if plan.action == "encode":
        for k in plan.pending[d.rank::d.world]:
            _write_part(ctx, backbone, gallery, folder, k, plan, grid, batch_size, d.rank)
            faults.point("features:after-part")
        if d.main:
            _finish(ctx, backbone, gallery, folder, key, fcfg, plan, d)
        else:
            _wait_for_artifact(ctx, folder, key, d)
    art = ctx.store.get(FEATURES, key)
    assert art is not None
    return art


def _plan(ctx: Context, n: int, key: str, folder: Path, part_rows: int) -> Plan:
    """Rank 0's decision, shared with every rank (a user error too, so that all stop alike)."""
    try:
        if ctx.store.get(FEATURES, key) is not None:
            return Plan("found")
        ctx.store.ensure_writable()
        count = math.ceil(n / part_rows)
        layout = {"rows": n, "part_rows": part_rows, "parts": count}
        if (folder / LAYOUT).is_file() and json.loads((folder / LAYOUT).read_text()) != layout:
            ctx.reporter.info(f"discarding the parts in {folder}: they were cut with another batch size")
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / FAILED).unlink(missing_ok=True)  # a previous run's verdict; this run decides again
        (folder / LAYOUT).write_text(json.dumps(layout))
        pending = [k for k in range(count) if not _log_path(folder, k).is_file()]
        if len(pending) < count:
            ctx.reporter.info(f"resuming: {count - len(pending)} of {count} feature parts are already written "
                              f"in {folder}")
        return Plan("encode", pending, count, part_rows)
    except UserError as e:
        return Plan("error", error=(e.message, e.hint))


def _name(k: int) -> str:
    return f"part_{k:06d}"


def _log_path(folder: Path, k: int) -> Path:
    """Written last, once the part's arrays are in place: a part is done when its log is there."""
    return folder / f"{_name(k)}.json"


class _PartWriter:
    """One part's global features and visual tokens, fp16, into memory-mapped .npy files."""

    def __init__(self, tmp: Path, name: str, capacity: int):
        self.paths = {a: tmp / f"{name}.{a}.{os.getpid()}.npy" for a in ("image", "tokens")}
        self.image, self.tokens = NpyAppender(self.paths["image"], capacity), NpyAppender(self.paths["tokens"], capacity)

    def write(self, rows: list[int], v: np.ndarray, tokens: np.ndarray | None) -> None:
        assert tokens is not None
        self.image.append(v)
        self.tokens.append(tokens)

    def publish(self, folder: Path, name: str) -> None:
        self.image.close()
        self.tokens.close()
        for array, path in self.paths.items():
            if path.is_file():  # absent when no image of the part could be read (the run stops then)
                fsync_path(path)
                os.replace(path, folder / f"{name}.{array}.npy")


def _write_part(ctx: Context, backbone: Backbone, gallery: Gallery, folder: Path, k: int, plan: Plan, grid: int,
                batch_size: int, rank: int) -> None:
    rows = range(k * plan.part_rows, min(len(gallery), (k + 1) * plan.part_rows))
    tmp = folder / "tmp"
    tmp.mkdir(exist_ok=True)
    writer = _PartWriter(tmp, _name(k), len(rows))
    stats = run_encoder(ctx, backbone, GalleryRows(gallery, rows), writer, grid=grid, batch_size=batch_size,
                        description=f"features, part {k + 1}/{plan.count}: {len(rows)} images")
    writer.publish(folder, _name(k))
    log = {"rows": [rows[0], rows[-1] + 1], "written": [rows[i] for i in stats.rows],
           "failures": [[rows[i], e] for i, e in stats.failures], "timings_s": stats.timings.as_dict(),
           "rank": rank}
    log_tmp = tmp / f"{_name(k)}.{os.getpid()}.json"
    log_tmp.write_text(json.dumps(log))
    fsync_path(log_tmp)
    os.replace(log_tmp, _log_path(folder, k))
    fsync_path(folder)


def _finish(ctx: Context, backbone: Backbone, gallery: Gallery, folder: Path, key: str, fcfg: dict[str, Any],
            plan: Plan, d: Dist) -> None:
    """Rank 0: wait for every part, then the artifact, or the user error every rank raises."""
    _wait_for_parts(ctx, folder, plan)
    logs = [json.loads(_log_path(folder, k).read_text()) for k in range(plan.count)]
    stats = RunStats()
    for log in logs:
        stats.rows.extend(log["written"])
        stats.failures.extend((int(r), str(e)) for r, e in log["failures"])
        for stage, s in log["timings_s"].items():
            setattr(stats.timings, stage, getattr(stats.timings, stage) + float(s))
    try:
        check_failures(gallery, stats, strict=True, index=False)
    except UserError as e:  # the data set must be prepared again: its parts are of no further use
        tmp = folder / f"{FAILED}.tmp"
        tmp.write_text(json.dumps({"message": e.message, "hint": e.hint}))
        os.replace(tmp, folder / FAILED)
        d.barrier()  # the other ranks have read it
        shutil.rmtree(folder, ignore_errors=True)
        raise
    writers = sorted({int(log["rank"]) for log in logs})
    ctx.reporter.info(f"features: {plan.count} part(s), {len(plan.pending)} written now, by rank(s) "
                      f"{', '.join(map(str, writers))} ({plan.count - len(plan.pending)} reused)")
    _assemble(ctx, backbone, gallery, folder, key, fcfg, plan, stats, d.world, [int(log["rank"]) for log in logs])


def _wait_for_parts(ctx: Context, folder: Path, plan: Plan) -> None:
    """Until every part is written. A process that dies takes the group down with it (torchrun
    stops the rest), so this never waits for a dead writer."""
    waiting = [k for k in plan.pending if not _log_path(folder, k).is_file()]
    if not waiting:
        return
    with ctx.reporter.task(f"waiting for {len(waiting)} feature part(s) from the other processes",
                           total=len(waiting)) as task:
        while waiting:
            time.sleep(POLL_S)
            left = [k for k in waiting if not _log_path(folder, k).is_file()]
            task.advance(len(waiting) - len(left))
            waiting = left


def _assemble(ctx: Context, backbone: Backbone, gallery: Gallery, folder: Path, key: str, fcfg: dict[str, Any],
              plan: Plan, stats: RunStats, world: int, ranks: list[int]) -> None:
    """Rank 0: the parts, in row order, into the features artifact (as one process writes it)."""
    n = len(gallery)
    with ctx.store.lock(FEATURES, key, on_wait=ctx.reporter.info):
        if ctx.store.get(FEATURES, key) is None:  # else another command finished it first
            t = time.perf_counter()
            with ctx.store.create(FEATURES, key, config=fcfg, model=fcfg["model"]) as out:
                for array in ("image", "tokens"):
                    dst = NpyAppender(out.path / f"{array}.npy", n)
                    for k in range(plan.count):
                        src = np.load(folder / f"{_name(k)}.{array}.npy", mmap_mode="r")
                        for s in range(0, len(src), COPY_ROWS):
                            dst.append(np.asarray(src[s:s + COPY_ROWS]))
                    dst.close()
                (out.path / "ids.json").write_text(json.dumps([gallery.ids[r] for r in stats.rows]))
                timings = {**stats.timings.as_dict(), "assemble": round(time.perf_counter() - t, 3)}
                out.manifest.update(features_manifest(out, n, backbone.spec.label(), timings))
                out.manifest.update({"parts": plan.count, "processes": world, "part_ranks": ranks})
    shutil.rmtree(folder, ignore_errors=True)


def _wait_for_artifact(ctx: Context, folder: Path, key: str, d: Dist) -> None:
    """The other ranks: until rank 0 has published the artifact, or stopped with a user error."""
    while ctx.store.get(FEATURES, key) is None:
        failed = folder / FAILED
        if failed.is_file():
            err = json.loads(failed.read_text())
            d.barrier()
            raise UserError(err["message"], err["hint"])
        time.sleep(POLL_S)
