"""`zscir submit` and `zscir score`: test-server files, and scoring them offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zscir_cli.cli.common import make_context, print_json
from zscir_cli.cli.console import out, warn
from zscir_cli.cli.options import CacheDir, Device, Json, Pretrained, SplitModel, Weights
from zscir_cli.jobs.protocols.config import ScoreRequest, SubmitRequest


def submit(
    dataset: Annotated[str, typer.Argument(help="cirr or circo (fashioniq: our own format, see the README).")],
    split: Annotated[str | None, typer.Option(help="Split [default: the test split].", show_default=False)] = None,
    method: Annotated[str, typer.Option(help="Method, as in query.")] = SubmitRequest.method,
    run: Annotated[str | None, typer.Option(help="Trained run [default: the newest].", show_default=False)] = None,
    weights: Weights = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the files.")] = Path(SubmitRequest.out),
    model: SplitModel = None,
    pretrained: Pretrained = None,
    device: Device = "auto",
    cache_dir: CacheDir = None,
) -> None:
    """Write the test-server prediction files, validated before they are written."""
    from zscir_cli.jobs.protocols.submit import write_submission

    done = write_submission(make_context(cache_dir, device), SubmitRequest(
        dataset=dataset, split=split, method=method, run=run, weights=weights, out=str(out_dir), model=model,
        pretrained=pretrained))
    for path in done.files:
        typer.echo(str(path))
    if done.excluded:
        warn(f"{done.excluded} queries were excluded for missing images: the server will count them as failures")


def score(
    dataset: Annotated[str, typer.Argument(help="fashioniq, cirr or circo.")],
    predictions: Annotated[list[Path], typer.Argument(help="Prediction files in the submission formats.")],
    root: Annotated[Path | None, typer.Option(help="The data set's folder (annotations are enough) "
                                                 "[default: the prepared data set].", show_default=False)] = None,
    split: Annotated[str, typer.Option(help="A split with ground truth.")] = ScoreRequest.split,
    json_out: Json = False,
    cache_dir: CacheDir = None,
) -> None:
    """Score prediction files offline, as the test server would, against a split with ground truth."""
    from zscir_cli.jobs.protocols.predictions import score as run

    metrics = run(make_context(cache_dir), ScoreRequest(dataset=dataset, predictions=[str(p) for p in predictions],
                                                        root=str(root) if root is not None else None, split=split))
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
