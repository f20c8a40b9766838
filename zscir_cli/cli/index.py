"""`zscir index`: embed a gallery into a faiss index."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from zscir_cli.cli.common import make_context, print_json
from zscir_cli.cli.console import err, warn
from zscir_cli.cli.options import CacheDir, Device, Force, Json, Model, Pretrained, Workers
from zscir_cli.core.errors import UserError


def index(
    gallery: Annotated[str | None, typer.Argument(help="A folder of images (searched recursively; jpg, "
                                                       "png, webp), or a prepared data set's gallery: "
                                                       "NAME[:SPLIT], e.g. shapes or shapes:val.",
                                                  show_default=False)] = None,
    embeddings: Annotated[Path | None, typer.Option(
        "--embeddings", help="Instead of a gallery: a folder of image embeddings in clip-retrieval's "
                             "layout (img_emb/img_emb_N.npy, metadata/metadata_N.parquet) made with "
                             "--model.", show_default=False)] = None,
    model: Model = None,
    pretrained: Pretrained = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 64,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Index the readable images and "
                                           "record the unreadable ones, instead of failing.")] = False,
    part_size: Annotated[int, typer.Option(min=1, help="Under torchrun: images per part (rounded up to "
                                           "a multiple of --batch-size); a rerun skips written parts.")] = 100_000,
    kind: Annotated[str, typer.Option(
        "--kind", help="Index kind: auto (by gallery size and --max-memory), flat (exact), hnsw, ivf, "
                       "or a faiss factory string such as IVF4096,PQ64. Approximate kinds re-rank "
                       "their candidates exactly against the stored vectors.")] = "auto",
    max_memory: Annotated[str | None, typer.Option(
        "--max-memory", help="Memory the index may take, e.g. 8G or 512M; auto picks the kind that "
                             "fits [default: a quarter of the machine's RAM].", show_default=False)] = None,
    force: Force = False,
    json_out: Json = False,
    device: Device = "auto",
    workers: Workers = None,
    cache_dir: CacheDir = None,
) -> None:
    """Embed a gallery with a backbone: fp16 features, ids and a faiss index of --kind, cached.

    Under torchrun every process embeds its parts of the gallery:
    torchrun --nnodes N --nproc_per_node G -m zscir_cli index GALLERY ...
    """
    if (gallery is None) == (embeddings is None):
        raise UserError("Give a gallery or --embeddings DIR, not both." if gallery else
                        "Give a gallery to index, or --embeddings DIR.",
                        "e.g. zscir index photos/, or zscir index --embeddings out/ --model ViT-L-14 "
                        "--pretrained openai.")
    if max_memory is not None:  # before any model or gallery is loaded
        from zscir_cli.jobs.retrieval.indexing import index_spec

        index_spec("flat", 1, 1, max_memory)
    ctx = make_context(cache_dir, device, workers)
    built = _build(ctx, gallery, embeddings, model, pretrained, batch_size=batch_size, skip_bad=skip_bad,
                   force=force, part_size=part_size, kind=kind, max_memory=max_memory)
    if built is None:  # a torchrun process other than rank 0: its parts are written, rank 0 reports
        return
    res, label, extra = built
    info = {"index": res.artifact.key, "path": str(res.artifact.path), "images": res.artifact.manifest["count"],
            "skipped": res.skipped, "model": label, "built": res.built, "timings_s": res.timings,
            "kind": res.artifact.manifest.get("index", {"kind": "flat"}), **extra}
    if json_out:
        print_json(info)
        return
    if res.skipped:
        warn(f"skipped {res.skipped} unreadable image(s); they are listed in "
             f"{res.artifact.path / 'manifest.json'}")
    err.print(("built" if res.built else "already built") + f" index {res.artifact.key}: "
              f"{info['images']} images, {info['model']}, {_kind_label(res.artifact.manifest)}")
    if extra.get("parts_reused"):
        err.print(f"resumed: {extra['parts_reused']} of {extra['parts']} parts were already written")
    if res.built and res.timings:
        err.print("seconds: " + ", ".join(f"{k.replace('_', '/')} {v:.1f}" for k, v in res.timings.items()))
    typer.echo(res.artifact.key)


def _build(ctx, gallery: str | None, embeddings: Path | None, model: str | None, pretrained: str | None, *,
           batch_size: int, skip_bad: bool, force: bool, part_size: int, kind: str, max_memory: str | None):
    """(IndexResult, model label, extra JSON fields), or None on a torchrun process other than rank 0."""
    from zscir_cli.jobs.backbones import open_backbone, resolve_spec

    if embeddings is not None:
        from zscir_cli.jobs.retrieval.embeddings import index_from_embeddings

        backbone = open_backbone(ctx, resolve_spec(ctx, model, pretrained))
        res = index_from_embeddings(ctx, backbone, embeddings, force=force, kind=kind, max_memory=max_memory)
        return res, backbone.spec.label(), {}
    from zscir_cli.jobs.datasets.store import resolve_gallery

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # under torchrun
        from zscir_cli.jobs.retrieval.sharded_index import index_sharded
        from zscir_cli.jobs.distributed import start_run

        ctx, dev, d = start_run(ctx)
        images = resolve_gallery(ctx, gallery)
        backbone = open_backbone(ctx, resolve_spec(ctx, model, pretrained), dev)
        sharded = index_sharded(ctx, backbone, images, d, part_size=part_size, batch_size=batch_size,
                                skip_bad=skip_bad, force=force, kind=kind, max_memory=max_memory)
        if sharded is None:
            return None
        return sharded.index, backbone.spec.label(), {"parts": sharded.parts, "parts_reused": sharded.reused,
                                                      "processes": sharded.processes}
    from zscir_cli.jobs.retrieval.indexing import index_gallery

    images = resolve_gallery(ctx, gallery)
    backbone = open_backbone(ctx, resolve_spec(ctx, model, pretrained))
    res = index_gallery(ctx, backbone, images, batch_size=batch_size, skip_bad=skip_bad, force=force,
                        kind=kind, max_memory=max_memory)
    return res, backbone.spec.label(), {}


def _kind_label(manifest: dict) -> str:
    from zscir_cli.index.ann import IndexSpec

    spec = IndexSpec.from_json(manifest.get("index"))
    return f"{spec.label()} index" + (f": {spec.reason}" if spec.reason else "")
