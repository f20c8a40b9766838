"""`zscir map-train`: Stage I."""

from __future__ import annotations

from typing import Annotated

import typer

from zscir_cli.cli.common import make_context, print_run, rank
from zscir_cli.cli.console import warn
from zscir_cli.cli.options import (
    CacheDir,
    Device,
    Json,
    Model,
    Pretrained,
    Resume,
    Retrain,
    Seed,
    Workers,
    parse_layers,
)
from zscir_cli.jobs.training.config import Stage1Config as D


def map_train(
    data: Annotated[str, typer.Option(help="Prepared image(-caption) data set; trains on its train split.")] = D.data,
    epochs: Annotated[int, typer.Option(min=1)] = D.epochs,
    batch_size: Annotated[int, typer.Option(min=2, help="Global batch (split over torchrun processes).")] = D.batch_size,
    lr: Annotated[float, typer.Option(min=0.0, help="AdamW learning rate (cosine schedule).")] = D.lr,
    weight_decay: Annotated[float, typer.Option(min=0.0)] = D.weight_decay,
    seed: Seed = D.seed,
    model: Model = None,
    pretrained: Pretrained = None,
    vsi_layers: Annotated[str | None, typer.Option(
        help="Text blocks followed by a VSI block, 1-based, e.g. 3,6,9,12 [default: 4 spread over "
             "the depth].", show_default=False)] = None,
    vsi_grid: Annotated[int, typer.Option(min=1, help="Side of the grid the spatial map is pooled to: M = 1 + "
                                                      "grid^2 visual tokens.")] = D.vsi_grid,
    vsi_tokens: Annotated[int | None, typer.Option(min=1, hidden=True, help="Renamed --vsi-grid.")] = None,
    vsi_scope: Annotated[str, typer.Option(help="placeholder (only the pseudo-word's position) or all.")] = D.vsi_scope,
    no_vsi: Annotated[bool, typer.Option("--no-vsi", help="Turn visual semantic injection off.")] = False,
    no_sta: Annotated[bool, typer.Option("--no-sta", help="Turn soft text alignment off.")] = False,
    sta_weight: Annotated[float, typer.Option(min=0.0, help="Weight lambda of soft text alignment.")] = D.sta_weight,
    temperature: Annotated[float, typer.Option(min=1e-4, help="Temperature tau of both losses.")] = D.temperature,
    dropout: Annotated[float, typer.Option(min=0.0, max=0.99, help="Token learner dropout.")] = D.dropout,
    resume: Resume = False,
    force: Retrain = False,
    json_out: Json = False,
    device: Device = "auto",
    workers: Workers = None,
    cache_dir: CacheDir = None,
) -> None:
    """Stage I: learn to map a frozen image feature to a pseudo-word ('a photo of $').

    Works under torchrun for data-parallel training:
    torchrun --nproc_per_node N -m zscir_cli map-train ...
    """
    from zscir_cli.jobs.training.stage1 import map_train as run

    if vsi_tokens is not None:  # the old name, which read as M rather than the grid side
        warn(f"--vsi-tokens is renamed --vsi-grid (the grid side; M = 1 + grid^2 tokens): using "
             f"--vsi-grid {vsi_tokens}.")
        vsi_grid = vsi_tokens
    cfg = D(data=data, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
            temperature=temperature, vsi=not no_vsi and D.vsi, vsi_layers=parse_layers(vsi_layers), vsi_grid=vsi_grid,
            vsi_scope=vsi_scope, sta=not no_sta and D.sta, sta_weight=sta_weight, dropout=dropout, model=model,
            pretrained=pretrained)
    art = run(make_context(cache_dir, device, workers), None, cfg, resume=resume, force=force)
    if rank() == 0 and art is not None:  # under torchrun only rank 0 reports
        print_run(art, str(art.manifest.get("method")), {"json": json_out, "method": art.manifest.get("method")})
