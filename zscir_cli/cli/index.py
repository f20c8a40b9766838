"""`zscir index`: embed a gallery into a faiss index."""

from __future__ import annotations

from typing import Annotated

import typer

from zscir_cli.cli.common import make_context, print_json
from zscir_cli.cli.console import err, warn
from zscir_cli.cli.options import CacheDir, Device, Force, Json, Model, Pretrained, Workers


def index(
    gallery: Annotated[str, typer.Argument(help="A folder of images (searched recursively; jpg, "
                                                "png, webp), or a prepared data set's gallery: "
                                                "NAME[:SPLIT], e.g. shapes or shapes:val.")],
    model: Model = None,
    pretrained: Pretrained = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 64,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Index the readable images and "
                                           "record the unreadable ones, instead of failing.")] = False,
    force: Force = False,
    json_out: Json = False,
    device: Device = "auto",
    workers: Workers = None,
    cache_dir: CacheDir = None,
) -> None:
    """Embed a gallery with a backbone: fp16 features, ids and an exact faiss index, cached."""
    from zscir_cli.pipeline.backbones import open_backbone, resolve_spec
    from zscir_cli.pipeline.datasets import resolve_gallery
    from zscir_cli.pipeline.indexing import index_gallery

    ctx = make_context(cache_dir, device, workers)
    images = resolve_gallery(ctx, gallery)
    backbone = open_backbone(ctx, resolve_spec(ctx, model, pretrained))
    res = index_gallery(ctx, backbone, images, batch_size=batch_size, skip_bad=skip_bad, force=force)
    info = {"index": res.artifact.key, "path": str(res.artifact.path), "images": res.artifact.manifest["count"],
            "skipped": res.skipped, "model": backbone.spec.label(), "built": res.built,
            "timings_s": res.timings}
    if json_out:
        print_json(info)
        return
    if res.skipped:
        warn(f"skipped {res.skipped} unreadable image(s); they are listed in "
             f"{res.artifact.path / 'manifest.json'}")
    err.print(("built" if res.built else "already built") + f" index {res.artifact.key}: "
              f"{info['images']} images, {info['model']}")
    if res.built and res.timings:
        err.print("seconds: " + ", ".join(f"{k.replace('_', '/')} {v:.1f}" for k, v in res.timings.items()))
    typer.echo(res.artifact.key)
