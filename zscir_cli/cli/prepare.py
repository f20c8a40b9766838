"""`zscir prepare ...`: turn data sets into cached, validated artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zscir_cli.cli import prepare_shards
from zscir_cli.cli.common import make_context, print_json
from zscir_cli.cli.console import err, warn
from zscir_cli.cli.options import CacheDir, Force, Json, Seed
from zscir_cli.data.captions import FORMAT_HELP
from zscir_cli.data.public_trees import SPLITS
from zscir_cli.data.shapes.world import WorldConfig as W
from zscir_cli.jobs.datasets.config import FolderRequest
from zscir_cli.jobs.protocols.config import BenchmarkRequest

app = typer.Typer(help="Prepare data sets: the shapes world, image folders, FashionIQ, CIRR, CIRCO.",
                  no_args_is_help=True)


@app.command("shapes")
def shapes_cmd(
    seed: Seed = W.seed,
    train_pairs: Annotated[int, typer.Option(min=1, help="Image-caption pairs for training.")] = W.train_pairs,
    val_pairs: Annotated[int, typer.Option(min=1, help="Image-caption pairs for validation.")] = W.val_pairs,
    queries: Annotated[int, typer.Option(min=1, help="Composed-retrieval queries per split (val, test).")] = W.cir_queries,
    image_size: Annotated[int, typer.Option(min=16, help="Image side in pixels.")] = W.image_size,
    force: Force = False,
    json_out: Json = False,
    cache_dir: CacheDir = None,
) -> None:
    """Generate the shapes world: image-caption pairs and a composed-retrieval benchmark."""
    from zscir_cli.jobs.datasets.shapes import prepare_shapes

    ctx = make_context(cache_dir)
    cfg = W(seed=seed, image_size=image_size, train_pairs=train_pairs,
                      val_pairs=val_pairs, cir_queries=queries)
    art, built = prepare_shapes(ctx, cfg, force=force)
    if json_out:
        print_json({"key": art.key, "path": str(art.path), "built": built, **art.manifest["counts"]})
        return
    err.print(("prepared" if built else "already prepared") + f" shapes in {art.path}")
    for name, n in art.manifest["counts"].items():
        typer.echo(f"{name}\t{n}")


@app.command("imagefolder")
def imagefolder_cmd(
    folder: Annotated[str, typer.Argument(help="Folder of images, optionally with captions in its "
                                               "metadata.jsonl or metadata.csv (see --captions).")],
    name: Annotated[str | None, typer.Option(help="Name to use with --data [default: the folder's name].",
                                                show_default=False)] = None,
    captions: Annotated[Path | None, typer.Option(
        help=f"Captions file [default: FOLDER/metadata.jsonl or metadata.csv, if present]: {FORMAT_HELP}.",
        show_default=False)] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Leave unreadable images out instead of failing.")] = False,
    force: Force = False,
    json_out: Json = False,
    cache_dir: CacheDir = None,
) -> None:
    """Record a folder of images (and captions) as a data set for map-train."""
    from zscir_cli.jobs.datasets.folders import prepare_imagefolder

    art, built = prepare_imagefolder(make_context(cache_dir), FolderRequest(
        folder=folder, name=name, captions=str(captions) if captions is not None else None, skip_bad=skip_bad,
        force=force))
    m = art.manifest
    info = {"name": m["name"], "key": art.key, "images": m["counts"]["pairs/train"], "captioned": m["captioned"],
            "skipped": len(m["skipped"]), "built": built}
    if json_out:
        print_json(info)
        return
    if info["skipped"]:
        warn(f"left out {info['skipped']} unreadable image(s); see {art.path / 'manifest.json'}")
    if not info["captioned"]:
        err.print("no captions: map-train will run without soft text alignment")
    err.print(("prepared" if built else "already prepared") + f" {m['name']}: use it with --data {m['name']}")
    typer.echo(f"images\t{info['images']}\ncaptioned\t{info['captioned']}")


BenchRoot = Annotated[Path | None, typer.Argument(help="The data set's folder, in its public layout "
                                                          "[default: $ZSCIR_DATA/<name>].", show_default=False)]
SkipMissing = Annotated[bool, typer.Option("--skip-missing", help="Go on without missing images: the queries "
                                           "that need them are excluded and counted.")]


def _benchmark_command(name: str, title: str):
    def command(
        root: BenchRoot = None,
        split: list[str] | None = None,  # annotated below: its help names this benchmark's splits
        skip_missing: SkipMissing = False,
        force: Force = False,
        json_out: Json = False,
        cache_dir: CacheDir = None,
    ) -> None:
        from zscir_cli.jobs.protocols.trees import prepare_benchmark

        art, built = prepare_benchmark(make_context(cache_dir), BenchmarkRequest(
            name=name, root=str(root) if root is not None else None, splits=list(split or []),
            skip_missing=skip_missing, force=force))
        m = art.manifest
        absent = m.get("missing_splits", {})
        if json_out:
            print_json({"key": art.key, "built": built, "missing_images": m["missing_images"],
                        "missing_splits": sorted(absent), **m["counts"]})
            return
        for s, files in absent.items():
            warn(f"no {s} split: {', '.join(files)} not found; prepared {', '.join(m['splits'])} only")
        if m["missing_images"]:
            warn(f"{m['missing_images']} image(s) missing, e.g. {', '.join(m['missing_examples'][:5])}")
        err.print(("prepared" if built else "already prepared") + f" {name} from {m['root']}")
        for done, c in m["counts"].items():
            gallery = ", ".join(f"{g or 'all'} {n}" for g, n in c["gallery"].items())
            typer.echo(f"{done}\tqueries {c['queries']}\texcluded {c['excluded_queries']}\t{gallery}")

    command.__doc__ = f"Validate and record {title} (annotations and images in the public layout)."
    command.__annotations__["split"] = Annotated[list[str] | None, typer.Option(
        metavar="<split>", help=f"Prepare this split ({', '.join(SPLITS[name])}; repeatable) [default: every split whose "
             "annotation files are present].", show_default=False)]
    return command


for _name, _title in (("fashioniq", "FashionIQ"), ("cirr", "CIRR"), ("circo", "CIRCO")):
    app.command(_name)(_benchmark_command(_name, _title))
prepare_shards.register(app)  # webdataset, csv
