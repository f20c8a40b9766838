"""`zscir index`: the one entry point of the command. A gallery is embedded in one process, or
in parts by every process of a torchrun group (`sharded_index`); embeddings made elsewhere are
indexed as they are (`embeddings`)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from zscir_cli.core.errors import UserError
from zscir_cli.jobs.backbones import open_backbone, resolve_spec
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.datasets.store import resolve_gallery
from zscir_cli.jobs.distributed import start_run, world_size
from zscir_cli.jobs.retrieval.config import IndexRequest
from zscir_cli.jobs.retrieval.embeddings import index_from_embeddings
from zscir_cli.jobs.retrieval.indexing import IndexResult, index_gallery, index_spec
from zscir_cli.jobs.retrieval.sharded_index import index_sharded
from zscir_cli.model.backbone import PREPROCESSING


@dataclass
class IndexOutcome:
    result: IndexResult
    model: str  # the backbone's label
    extra: dict[str, Any] = field(default_factory=dict)  # sharded: parts, parts_reused, processes


def build_index(ctx: Context, req: IndexRequest) -> IndexOutcome | None:
    """The index `req` asks for, found or built; None on a torchrun process other than rank 0
    (its parts are written; rank 0 reports)."""
    if (req.gallery is None) == (req.embeddings is None):
        raise UserError("Give a gallery or --embeddings DIR, not both." if req.gallery else
                        "Give a gallery to index, or --embeddings DIR.",
                        "e.g. zscir index photos/, or zscir index --embeddings out/ --model ViT-L-14 "
                        "--pretrained openai.")
    if req.max_memory is not None:  # before any model or gallery is loaded
        index_spec("flat", 1, 1, req.max_memory)
    if req.preprocess not in PREPROCESSING:
        raise UserError(f"Unknown --preprocess '{req.preprocess}'.", f"Use {' or '.join(PREPROCESSING)}.")
    if req.embeddings is not None and req.preprocess != "clip":
        raise UserError("--preprocess says how images are read; --embeddings were made elsewhere.",
                        "Leave --preprocess out with --embeddings.")
    options = {"force": req.force, "kind": req.kind, "max_memory": req.max_memory}
    spec = replace(resolve_spec(ctx, req.model, req.pretrained), preprocess=req.preprocess)
    if req.embeddings is not None:
        backbone = open_backbone(ctx, spec)
        return IndexOutcome(index_from_embeddings(ctx, backbone, Path(req.embeddings), **options), backbone.spec.label())
    if world_size() > 1:  # under torchrun
        ctx, device, d = start_run(ctx)
        gallery = resolve_gallery(ctx, req.gallery)  # type: ignore[arg-type]
        backbone = open_backbone(ctx, spec, device)
        sharded = index_sharded(ctx, backbone, gallery, d, part_size=req.part_size, batch_size=req.batch_size,
                                skip_bad=req.skip_bad, **options)
        if sharded is None:
            return None
        return IndexOutcome(sharded.index, backbone.spec.label(), {
            "parts": sharded.parts, "parts_reused": sharded.reused, "processes": sharded.processes})
    gallery = resolve_gallery(ctx, req.gallery)  # type: ignore[arg-type]
    backbone = open_backbone(ctx, spec)
    res = index_gallery(ctx, backbone, gallery, batch_size=req.batch_size, skip_bad=req.skip_bad, **options)
    return IndexOutcome(res, backbone.spec.label())
