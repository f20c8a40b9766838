"""`zscir eval`: a benchmark's protocol for one or more methods."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from zscir_cli.cli.common import make_context, print_json
from zscir_cli.cli.console import err, out
from zscir_cli.cli.options import CacheDir, Device, Json, Model, Pretrained


def evaluate(
    dataset: Annotated[str, typer.Argument(help="Benchmark: shapes.")],
    split: Annotated[str, typer.Option(help="val or test.")] = "test",
    method: Annotated[Optional[list[str]], typer.Option(
        "--method", help="Method to evaluate (repeat the option for several) [default: every method with a "
                         "run for the model].", show_default=False)] = None,
    run: Annotated[Optional[str], typer.Option(
        "--run", help="Trained run for the (single) trained method given [default: the newest].",
        show_default=False)] = None,
    model: Model = None,
    pretrained: Pretrained = None,
    json_out: Json = False,
    device: Device = "auto",
    cache_dir: CacheDir = None,
) -> None:
    """Evaluate methods on a benchmark split, following its protocol exactly."""
    from zscir_cli.core.errors import UserError
    from zscir_cli.pipeline.backbones import open_backbone, resolve_spec
    from zscir_cli.pipeline.datasets import find_dataset
    from zscir_cli.pipeline.evaluate import evaluate_shapes
    from zscir_cli.pipeline.methods import TRAINED, available_methods, check_method

    ctx = make_context(cache_dir, device)
    name = dataset.split(":")[0]
    if name != "shapes" and find_dataset(ctx, name).manifest.get("name") != "shapes":
        raise UserError(f"'{dataset}' is not a composed-retrieval benchmark zscir can evaluate.",
                        "Evaluate 'shapes' (zscir prepare shapes).")
    if split not in ("val", "test"):
        raise UserError(f"Unknown split '{split}'.", "Use val or test.")
    for m in method or []:
        check_method(m)
    trained = [m for m in method or [] if m in TRAINED]
    if run and len(trained) != 1:
        raise UserError("--run names the run of one trained method.", "Give exactly one of tscir, stage1, pic2word.")
    backbone = open_backbone(ctx, resolve_spec(ctx, model, pretrained))
    methods = list(method) if method else available_methods(ctx, backbone)
    res = evaluate_shapes(ctx, backbone, methods, split=split, dataset=name,
                          runs={trained[0]: run} if run else None)
    if json_out:
        print_json({**{k: v for k, v in res.items() if k != "results"},
                    "results": {r.method: {**r.metrics, "by_edit_R@1": r.by_edit} for r in res["results"]}})
        return
    from rich.table import Table

    err.print(f"{res['protocol']}", highlight=False)
    out.print(f"{name} CIR, {split} split: {res['queries']} queries, gallery {res['gallery']}, model {res['model']}",
              highlight=False)
    table = Table()
    for col in ("method", "run", "R@1", "R@10", "R@50", "mAP@10"):
        table.add_column(col, justify="left" if col in ("method", "run") else "right")
    for r in res["results"]:
        table.add_row(r.method, res["runs"].get(r.method, "-"),
                      *(f"{r.metrics[m]:.1f}" for m in ("R@1", "R@10", "R@50", "mAP@10")))
    out.print(table)
