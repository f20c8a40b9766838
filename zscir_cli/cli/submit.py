"""`zscir submit` and `zscir score`: test-server files, and scoring them offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from zscir_cli.cli.common import make_context, print_json
from zscir_cli.cli.console import out, warn
from zscir_cli.cli.options import CacheDir, Device, Json, Model, Pretrained


def submit(
    dataset: Annotated[str, typer.Argument(help="cirr or circo (fashioniq: our own format, see the README).")],
    split: Annotated[str | None, typer.Option(help="Split [default: the test split].", show_default=False)] = None,
    method: Annotated[str, typer.Option(help="Method, as in query.")] = "tscir",
    run: Annotated[str | None, typer.Option(help="Trained run [default: the newest].", show_default=False)] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the files.")] = Path("submission"),
    model: Model = None,
    pretrained: Pretrained = None,
    device: Device = "auto",
    cache_dir: CacheDir = None,
) -> None:
    """Write the test-server prediction files, validated before they are written."""
    from zscir_cli.core.errors import UserError
    from zscir_cli.data.public_trees import SPLITS
    from zscir_cli.jobs.backbones import open_backbone, resolve_spec
    from zscir_cli.jobs.protocols.predictions import read_predictions, submission
    from zscir_cli.jobs.protocols.trees import open_split
    from zscir_cli.jobs.protocols.ranking import rank_split
    from zscir_cli.jobs.retrieval.methods import check_method, load_method
    from zscir_cli.core.outputs import check_output_dir

    if dataset not in SPLITS:
        raise UserError(f"No submission format for '{dataset}'.", "Choose cirr, circo or fashioniq.")
    check_method(method)
    ctx = make_context(cache_dir, device)
    split = split or SPLITS[dataset][-1]
    data = open_split(ctx, dataset, split)
    out_dir = check_output_dir(out_dir)  # before any encoding
    backbone = open_backbone(ctx, resolve_spec(ctx, model, pretrained))
    files = submission(data, rank_split(ctx, backbone, load_method(ctx, method, backbone, run), data))
    tmp_paths = []
    for kind, obj in files.items():
        tmp = out_dir / f".{dataset}_{split}_{method}_{kind}.json.incomplete"
        tmp.write_text(json.dumps(obj))
        tmp_paths.append(tmp)
    try:
        for tmp in tmp_paths:  # what the server would check, before anything is in place
            read_predictions(data, [tmp])
    except UserError:
        for tmp in tmp_paths:
            tmp.unlink(missing_ok=True)
        raise
    for tmp in tmp_paths:
        final = tmp.with_name(tmp.name[1:].removesuffix(".incomplete"))
        tmp.replace(final)
        typer.echo(str(final))
    if data.excluded:
        warn(f"{data.excluded} queries were excluded for missing images: the server will count "
             "them as failures")


def score(
    dataset: Annotated[str, typer.Argument(help="fashioniq, cirr or circo.")],
    predictions: Annotated[list[Path], typer.Argument(help="Prediction files in the submission formats.")],
    root: Annotated[Path | None, typer.Option(help="The data set's folder (annotations are enough) "
                                                 "[default: the prepared data set].", show_default=False)] = None,
    split: Annotated[str, typer.Option(help="A split with ground truth.")] = "val",
    json_out: Json = False,
    cache_dir: CacheDir = None,
) -> None:
    """Score prediction files offline, as the test server would, against a split with ground truth."""
    from zscir_cli.core.errors import UserError
    from zscir_cli.data.public_trees import SPLITS
    from zscir_cli.jobs.protocols.predictions import score_files
    from zscir_cli.jobs.protocols.trees import open_split, split_from_root

    if dataset not in SPLITS:
        raise UserError(f"Unknown benchmark '{dataset}'.", "Choose fashioniq, cirr or circo.")
    ctx = make_context(cache_dir)
    data = split_from_root(dataset, root, split) if root else open_split(ctx, dataset, split)
    metrics = score_files(data, list(predictions))
    if json_out:
        print_json({k: round(v, 4) for k, v in metrics.items()})
        return
    from rich.table import Table

    table = Table()
    table.add_column("metric")
    table.add_column("%", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.2f}")
    out.print(table)
