"""Stage I's feature cache under torchrun: every process encodes its parts of the images
(`parts`), once.

The cut depends on the gallery and the batch size only (at most `MAX_PART_ROWS` rows a part, at
least `MIN_PARTS` parts when the gallery has the rows), never on the number of processes, so a
rerun with another number reuses the parts written. Each part's global features and pooled
visual tokens (fp16, as the features artifact stores them) go into
`<cache>/.parts/features-<key>/`; rank 0 copies the parts in row order into the ordinary features
artifact (the bytes one process writes), and every rank then reads it.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from zscir_cli.core.arrays import NpyAppender
from zscir_cli.core.cache import Artifact
from zscir_cli.core.durable import publish
from zscir_cli.core.errors import UserError
from zscir_cli.data.galleries import Gallery
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.distributed import Dist
from zscir_cli.jobs.retrieval.encoder import RunStats, run_encoder
from zscir_cli.jobs.retrieval.encodings import DIGESTS, FEATURES, check_failures, features_config, features_manifest
from zscir_cli.jobs.retrieval.parts import Part, PartsRun, log_fields, part_name
from zscir_cli.model.backbone import Backbone

MAX_PART_ROWS = 100_000
MIN_PARTS = 64  # enough parts to keep 64 processes busy, when the gallery has the rows
COPY_ROWS = 4096  # rows copied at a time into the artifact: a part's tokens never sit in memory whole
ARRAYS = ("image", "tokens")


def part_rows_for(n: int, batch_size: int) -> int:
    rows = min(MAX_PART_ROWS, math.ceil(n / MIN_PARTS))
    return max(1, math.ceil(rows / batch_size)) * batch_size


class _PartWriter:
    """One part's global features and visual tokens, fp16, into memory-mapped .npy files."""

    def __init__(self, part: Part):
        self.paths = {a: part.tmp / f"part_{part.name}.{a}.{os.getpid()}.npy" for a in ARRAYS}
        self.arrays = {a: NpyAppender(p, len(part.rows)) for a, p in self.paths.items()}

    def write(self, rows: list[int], v: np.ndarray, tokens: np.ndarray | None) -> None:
        assert tokens is not None
        self.arrays["image"].append(v)
        self.arrays["tokens"].append(tokens)

    def publish(self, folder: Path, name: str) -> None:
        for array, path in self.paths.items():
            self.arrays[array].close()
            if path.is_file():  # absent when no image of the part could be read (the run stops then)
                publish(path, folder / f"part_{name}.{array}.npy")


def sharded_features(ctx: Context, backbone: Backbone, gallery: Gallery, d: Dist, grid: int,
                     batch_size: int = 64) -> Artifact:
    """The features artifact of `gallery` with visual tokens pooled to `grid` (the key one process
    gives it), found in the cache or built with every process of the group; on every rank."""
    n = len(gallery)
    if n == 0:
        raise UserError("The gallery has no images.", "Give a folder or data set that holds images.")
    fcfg = features_config(backbone, gallery.identity(), grid)
    key = ctx.store.key_for(FEATURES, fcfg)
    run = PartsRun(ctx, d, FEATURES, key, n, part_rows_for(n, batch_size))
    with run.held():  # while this process works on the build
        plan = run.plan(lambda: "found" if ctx.store.get(FEATURES, key) is not None else None)
        if plan.action == "error":
            raise UserError(*plan.error)  # type: ignore[misc]
        if plan.action == "found":
            art = ctx.store.get(FEATURES, key)
            assert art is not None
            return art

        def write_part(part: Part) -> dict[str, Any]:
            writer = _PartWriter(part)
            stats = run_encoder(ctx, backbone, part.gallery(gallery), writer, grid=grid, batch_size=batch_size,
                                description=f"features, part {part.number + 1}/{plan.count}: {len(part.rows)} images")
            writer.publish(run.folder, part.name)
            return log_fields(stats, part.rows)

        run.write(plan, write_part, "features:after-part")
        if not d.main:
            return run.wait_for_artifact()

        def assemble(logs: list[dict[str, Any]], stats: RunStats) -> Artifact:
            writers = sorted({int(log["rank"]) for log in logs})
            ctx.reporter.info(f"features: {plan.count} part(s), {len(plan.pending)} written now, by rank(s) "
                              f"{', '.join(map(str, writers))} ({plan.count - len(plan.pending)} reused)")
            return _assemble(ctx, backbone, gallery, run, fcfg, stats, [int(log["rank"]) for log in logs])

        # the data set must be prepared again when images are unreadable: its parts are of no use
        return run.finish(plan, assemble, lambda stats: check_failures(gallery, stats, strict=True, index=False),
                          waited_for=True)


def _assemble(ctx: Context, backbone: Backbone, gallery: Gallery, run: PartsRun, fcfg: dict[str, Any],
              stats: RunStats, ranks: list[int]) -> Artifact:
    """Rank 0, under the features' lock: the parts, in row order, into the features artifact."""
    t = time.perf_counter()
    with ctx.store.create(FEATURES, run.key, config=fcfg, model=fcfg["model"]) as out:
        for array in ARRAYS:
            dst = NpyAppender(out.path / f"{array}.npy", run.n)
            for k in range(run.count):
                src = np.load(run.folder / f"part_{part_name(k, run.count)}.{array}.npy", mmap_mode="r")
                for s in range(0, len(src), COPY_ROWS):
                    dst.append(np.asarray(src[s:s + COPY_ROWS]))
            dst.close()
        (out.path / "ids.json").write_text(json.dumps([gallery.ids[r] for r in stats.rows]))
        (out.path / DIGESTS).write_text(json.dumps(stats.digests))
        timings = {**stats.timings.as_dict(), "assemble": round(time.perf_counter() - t, 3)}
        out.manifest.update(features_manifest(out, run.n, backbone.spec.label(), timings))
        out.manifest.update({"parts": run.count, "processes": run.d.world, "part_ranks": ranks})
    art = ctx.store.get(FEATURES, run.key)
    assert art is not None
    return art
