"""`zscir index`: embed a gallery into a faiss index."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zscir_cli.cli.common import make_context, print_json
from zscir_cli.cli.console import err, warn
from zscir_cli.cli.options import CacheDir, Device, Force, Json, Model, Pretrained, Workers
from zscir_cli.jobs.retrieval.config import IndexRequest as D


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
    preprocess: Annotated[str, typer.Option(
        help="How images are read: clip (the model's own transform) or targetpad (SEARLE's: an image "
             "longer than 1.25:1 padded to that ratio first, as its release was evaluated).")] = D.preprocess,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = D.batch_size,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Index the readable images and "
                                           "record the unreadable ones, instead of failing.")] = D.skip_bad,
    part_size: Annotated[int, typer.Option(min=1, help="Under torchrun: images per part (rounded up to "
                                           "a multiple of --batch-size); a rerun skips written parts.")] = D.part_size,
    kind: Annotated[str, typer.Option(
        "--kind", help="Index kind: auto (by gallery size and --max-memory), flat (exact), hnsw, ivf, "
                       "or a faiss factory string such as IVF4096,PQ64. Approximate kinds re-rank "
                       "their candidates exactly against the stored vectors.")] = D.kind,
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
    from zscir_cli.jobs.retrieval.build import build_index

    req = D(gallery=gallery, embeddings=str(embeddings) if embeddings is not None else None, model=model,
            pretrained=pretrained, preprocess=preprocess, batch_size=batch_size, skip_bad=skip_bad,
            part_size=part_size, kind=kind, max_memory=max_memory, force=force)
    done = build_index(make_context(cache_dir, device, workers), req)
    if done is None:  # a torchrun process other than rank 0: its parts are written, rank 0 reports
        return
    res, manifest = done.result, done.result.artifact.manifest
    info = {"index": res.artifact.key, "path": str(res.artifact.path), "images": manifest["count"],
            "skipped": res.skipped, "model": done.model, "built": res.built, "timings_s": res.timings,
            "kind": manifest.get("index", {"kind": "flat"}), **done.extra}
    if json_out:
        print_json(info)
        return
    if res.skipped:
        warn(f"skipped {res.skipped} unreadable image(s); they are listed in {res.artifact.path / 'manifest.json'}")
    err.print(("built" if res.built else "already built") + f" index {res.artifact.key}: "
              f"{info['images']} images, {info['model']}, {_kind_label(manifest)}")
    if done.extra.get("parts_reused"):
        err.print(f"resumed: {done.extra['parts_reused']} of {done.extra['parts']} parts were already written")
    if res.built and res.timings:
        err.print("seconds: " + ", ".join(f"{k.replace('_', '/')} {v:.1f}" for k, v in res.timings.items()))
    typer.echo(res.artifact.key)


def _kind_label(manifest: dict) -> str:
    from zscir_cli.index.ann import IndexSpec

    spec = IndexSpec.from_json(manifest.get("index"))
    return f"{spec.label()} index" + (f": {spec.reason}" if spec.reason else "")
