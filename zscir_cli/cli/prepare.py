"""`zscir prepare ...`: turn data sets into cached, validated artifacts."""

from __future__ import annotations

from typing import Annotated

import typer

from zscir_cli.cli.common import make_context, print_json
from zscir_cli.cli.console import err
from zscir_cli.cli.options import CacheDir, Force, Json, Seed

app = typer.Typer(help="Prepare data sets: the embedded shapes world.", no_args_is_help=True)


@app.command("shapes")
def shapes_cmd(
    seed: Seed = 0,
    train_pairs: Annotated[int, typer.Option(min=1, help="Image-caption pairs for training.")] = 10000,
    val_pairs: Annotated[int, typer.Option(min=1, help="Image-caption pairs for validation.")] = 1000,
    queries: Annotated[int, typer.Option(min=1, help="Composed-retrieval queries per split (val, test).")] = 400,
    image_size: Annotated[int, typer.Option(min=16, help="Image side in pixels.")] = 64,
    force: Force = False,
    json_out: Json = False,
    cache_dir: CacheDir = None,
) -> None:
    """Generate the shapes world: image-caption pairs and a composed-retrieval benchmark."""
    from zscir_cli.data.shapes import WorldConfig
    from zscir_cli.pipeline.datasets import prepare_shapes

    ctx = make_context(cache_dir)
    cfg = WorldConfig(seed=seed, image_size=image_size, train_pairs=train_pairs,
                      val_pairs=val_pairs, cir_queries=queries)
    art, built = prepare_shapes(ctx, cfg, force=force)
    if json_out:
        print_json({"key": art.key, "path": str(art.path), "built": built, **art.manifest["counts"]})
        return
    err.print(("prepared" if built else "already prepared") + f" shapes in {art.path}")
    for name, n in art.manifest["counts"].items():
        typer.echo(f"{name}\t{n}")
