"""`zscir prepare webdataset|csv`: training data in shards, as data sets for map-train and synth."""

from __future__ import annotations

from typing import Annotated

import typer

from zscir_cli.cli.common import make_context, print_json
from zscir_cli.cli.console import err, warn
from zscir_cli.cli.options import CacheDir, Force, Json
from zscir_cli.jobs.datasets.config import CsvRequest, WebdatasetRequest

Name = Annotated[str | None, typer.Option(help="Name to use with --data [default: the shards' folder, or the "
                                               "file's name without suffix].", show_default=False)]
SkipBad = Annotated[bool, typer.Option("--skip-bad", help="Leave corrupt images (and the rest of a truncated "
                                                          "shard) out and count them, instead of failing.")]
MissingCaption = Annotated[str, typer.Option(
    "--missing-caption", help="A sample without a caption: skip (left out and counted) or keep (with an empty "
                              "caption: map-train then runs without soft text alignment).")]


def webdataset_cmd(
    shards: Annotated[str, typer.Argument(help="Tar shards: a brace pattern such as 'shards/{00000..00099}.tar' "
                                               "(quote it), or a folder of .tar files.")],
    name: Name = None,
    skip_bad: SkipBad = False,
    missing_caption: MissingCaption = CsvRequest.missing_caption,
    force: Force = False,
    json_out: Json = False,
    cache_dir: CacheDir = None,
) -> None:
    """Record webdataset tar shards (img2dataset's .jpg/.png + .txt per key) as a data set."""
    from zscir_cli.jobs.datasets.shards import prepare_webdataset

    art, built = prepare_webdataset(make_context(cache_dir), WebdatasetRequest(
        shards=shards, name=name, skip_bad=skip_bad, missing_caption=missing_caption, force=force))
    _report(art, built, json_out)


def csv_cmd(
    file: Annotated[str, typer.Argument(help="A CSV or TSV file with a header line; relative image paths are read "
                                             "from the file's folder.")],
    image_column: Annotated[str, typer.Option(
        help="The column of image paths (open_clip's --csv-img-key).")] = CsvRequest.image_column,
    caption_column: Annotated[str, typer.Option(
        help="The column of captions (open_clip's --csv-caption-key).")] = CsvRequest.caption_column,
    separator: Annotated[str | None, typer.Option(help="Field separator, e.g. ',' or '\\t' [default: tab for "
                                                       ".tsv, else comma].", show_default=False)] = None,
    name: Name = None,
    skip_bad: SkipBad = False,
    missing_caption: MissingCaption = CsvRequest.missing_caption,
    allow_outside_paths: Annotated[bool, typer.Option("--allow-outside-paths", help="Accept absolute image paths "
                                                      "and paths that leave the file's folder.")] = False,
    force: Force = False,
    json_out: Json = False,
    cache_dir: CacheDir = None,
) -> None:
    """Record a CSV/TSV file of image paths and captions (open_clip's convention) as a data set."""
    from zscir_cli.jobs.datasets.shards import prepare_csv

    art, built = prepare_csv(make_context(cache_dir), CsvRequest(
        file=file, image_column=image_column, caption_column=caption_column, separator=separator, name=name,
        skip_bad=skip_bad, missing_caption=missing_caption, allow_outside=allow_outside_paths, force=force))
    _report(art, built, json_out)


def _report(art, built: bool, json_out: bool) -> None:
    m = art.manifest
    info = {"name": m["name"], "key": art.key, "images": m["counts"]["pairs/train"], "captioned": m["captioned"],
            "bad_images": m["bad_images"], "uncaptioned": m["uncaptioned"], "missing_caption": m["missing_caption"],
            "no_image": m["no_image"], "broken_shards": len(m.get("broken_shards", [])), "built": built}
    if json_out:
        print_json(info)
        return
    if info["bad_images"]:
        warn(f"left out {info['bad_images']} unreadable image(s); see {art.path / 'manifest.json'}")
    if info["broken_shards"]:
        warn(f"{info['broken_shards']} shard(s) could not be read to their end; their samples before the damage are kept")
    if info["uncaptioned"]:
        what = "left out" if m["missing_caption"] == "skip" else "kept with an empty caption (no soft text alignment)"
        warn(f"{info['uncaptioned']} sample(s) without a caption: {what}")
    if info["no_image"]:
        warn(f"left out {info['no_image']} sample(s) without an image")
    err.print(("prepared" if built else "already prepared") + f" {m['name']}: use it with --data {m['name']}",
              highlight=False)
    typer.echo(f"images\t{info['images']}\ncaptioned\t{info['captioned']}")


def register(app: typer.Typer) -> None:
    app.command("webdataset")(webdataset_cmd)
    app.command("csv")(csv_cmd)
