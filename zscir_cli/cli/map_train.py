"""`zscir map-train`: Stage I."""

from __future__ import annotations

from typing import Annotated

import typer

from zscir_cli.cli.common import make_context, print_json
from zscir_cli.cli.console import err, out, warn
from zscir_cli.cli.options import CacheDir, Device, Json, Model, Pretrained, Seed, Workers


def _layers(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(x) for x in value.replace(" ", "").split(",") if x]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated block numbers such as 3,6,9,12, got {value!r}")


def map_train(
    data: Annotated[str, typer.Option(help="Prepared image(-caption) data set; trains on its train split.")] = "shapes",
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=2, help="Global batch (split over torchrun processes).")] = 256,
    lr: Annotated[float, typer.Option(min=0.0, help="AdamW learning rate (cosine schedule).")] = 1e-4,
    weight_decay: Annotated[float, typer.Option(min=0.0)] = 0.01,
    seed: Seed = 0,
    model: Model = None,
    pretrained: Pretrained = None,
    vsi_layers: Annotated[str | None, typer.Option(
        help="Text blocks followed by a VSI block, 1-based, e.g. 3,6,9,12 [default: 4 spread over "
             "the depth].", show_default=False)] = None,
    vsi_grid: Annotated[int, typer.Option(min=1, help="Side of the grid the spatial map is pooled to: M = 1 + "
                                                      "grid^2 visual tokens.")] = 4,
    vsi_tokens: Annotated[int | None, typer.Option(min=1, hidden=True, help="Renamed --vsi-grid.")] = None,
    vsi_scope: Annotated[str, typer.Option(help="placeholder (only the pseudo-word's position) or all.")] = "placeholder",
    no_vsi: Annotated[bool, typer.Option("--no-vsi", help="Turn visual semantic injection off.")] = False,
    no_sta: Annotated[bool, typer.Option("--no-sta", help="Turn soft text alignment off.")] = False,
    sta_weight: Annotated[float, typer.Option(min=0.0, help="Weight lambda of soft text alignment.")] = 1.0,
    temperature: Annotated[float, typer.Option(min=1e-4, help="Temperature tau of both losses.")] = 0.07,
    dropout: Annotated[float, typer.Option(min=0.0, max=0.99, help="Token learner dropout.")] = 0.5,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run with these settings.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Train again even if the cache holds this run.")] = False,
    json_out: Json = False,
    device: Device = "auto",
    workers: Workers = None,
    cache_dir: CacheDir = None,
) -> None:
    """Stage I: learn to map a frozen image feature to a pseudo-word ('a photo of $').

    Works under torchrun for data-parallel training:
    torchrun --nproc_per_node N -m zscir_cli map-train ...
    """
    from zscir_cli.jobs.backbones import resolve_spec
    from zscir_cli.jobs.training.stage1 import Stage1Config
    from zscir_cli.jobs.training.stage1 import map_train as run

    if vsi_tokens is not None:  # the old name, which read as M rather than the grid side
        warn(f"--vsi-tokens is renamed --vsi-grid (the grid side; M = 1 + grid^2 tokens): using "
             f"--vsi-grid {vsi_tokens}.")
        vsi_grid = vsi_tokens
    ctx = make_context(cache_dir, device, workers)
    cfg = Stage1Config(data=data, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                       seed=seed, temperature=temperature, vsi=not no_vsi, vsi_layers=_layers(vsi_layers),
                       vsi_grid=vsi_grid, vsi_scope=vsi_scope, sta=not no_sta, sta_weight=sta_weight,
                       dropout=dropout)
    art = run(ctx, resolve_spec(ctx, model, pretrained), cfg, resume=resume, force=force)
    if _rank() != 0 or art is None:  # under torchrun only rank 0 reports
        return
    final = art.manifest.get("final", {})
    if json_out:
        print_json({"run": art.key, "built": art.built, "path": str(art.path), "method": art.manifest.get("method"), **final})
        return
    err.print(f"{art.manifest.get('method')} run {art.key}: {art.path}", highlight=False)
    shown = {k: v for k, v in final.items() if k != "lr"}
    out.print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items()),
              highlight=False)


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))
