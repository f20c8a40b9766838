"""`zscir eval`: a benchmark's protocol for one or more methods."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zscir_cli.cli.common import make_context, print_json
from zscir_cli.cli.console import err, out
from zscir_cli.cli.options import CacheDir, Device, Json, Model, Pretrained


def evaluate(
    dataset: Annotated[str, typer.Argument(help="Benchmark: shapes, fashioniq, cirr or circo (prepared first).")],
    split: Annotated[str, typer.Option(help="Split: val (every benchmark), test (shapes).")] = "val",
    method: Annotated[list[str] | None, typer.Option(
        "--method", help="Method to evaluate (repeat the option for several) [default: every method with a "
                         "run for the model].", show_default=False)] = None,
    run: Annotated[str | None, typer.Option(
        "--run", help="Trained run for the (single) trained method given [default: the newest].",
        show_default=False)] = None,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Also write a page of the first method's worst queries, with thumbnails.",
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
    benchmark = name in ("fashioniq", "cirr", "circo")
    if not benchmark and name != "shapes" and find_dataset(ctx, name).manifest.get("name") != "shapes":
        raise UserError(f"'{dataset}' is not a composed-retrieval benchmark zscir can evaluate.",
                        "Choose shapes, fashioniq, cirr or circo.")
    if not benchmark and split not in ("val", "test"):
        raise UserError(f"Unknown split '{split}'.", "Use val or test.")
    for m in method or []:
        check_method(m)
    trained = [m for m in method or [] if m in TRAINED]
    if run and len(trained) != 1:
        raise UserError("--run names the run of one trained method.", "Give exactly one of tscir, stage1, pic2word.")
    if benchmark:
        from zscir_cli.pipeline.benchmarks import open_split

        open_split(ctx, name, split)  # a missing preparation or split is reported before any model loads
    backbone = open_backbone(ctx, resolve_spec(ctx, model, pretrained))
    methods = list(method) if method else available_methods(ctx, backbone)
    runs = {trained[0]: run} if run else None
    if benchmark:
        from zscir_cli.pipeline.benchmarks import evaluate_benchmark

        res = evaluate_benchmark(ctx, backbone, name, split, methods, runs)
        _worst(res, html, f"{name} {split}")
        res = {k: v for k, v in res.items() if k not in ("scored", "image")}
        if json_out:
            print_json(res)
            return
        _print_benchmark(res)
        return
    res = evaluate_shapes(ctx, backbone, methods, split=split, dataset=name, runs=runs)
    _worst(res, html, f"shapes {split}")
    if json_out:
        print_json({**{k: v for k, v in res.items() if k not in ("results", "scored", "image")},
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


def _worst(res: dict, html: Path | None, where: str) -> None:
    if html is None:
        return
    from zscir_cli.pipeline.report import write_worst

    first = next(iter(res["results"])) if isinstance(res["results"], dict) else res["results"][0].method
    write_worst(html, f"zscir eval {where}: the worst queries of {first} ({res['model']})", res["scored"], res["image"])
    err.print(f"wrote {html}")


def _print_benchmark(res: dict) -> None:
    from rich.table import Table

    err.print(res["protocol"], highlight=False)
    out.print(f"{res['dataset']} {res['split']}: {res['queries']} queries ({res['excluded_queries']} excluded for "
              f"missing images), model {res['model']}", highlight=False)
    keys = list(next(iter(res["results"].values())))
    table = Table()
    table.add_column("method")
    for k in keys:
        table.add_column(k, justify="right")
    for m, metrics in res["results"].items():
        table.add_row(m, *(f"{metrics[k]:.2f}" for k in keys))
    out.print(table)
    aspects = res.get("map@10_by_aspect") or {}
    if aspects:
        names = sorted({a for per in aspects.values() for a in per})
        per_aspect = Table(title="mAP@10 by semantic aspect", title_justify="left")
        per_aspect.add_column("method")
        for a in names:
            per_aspect.add_column(a, justify="right")
        for m, per in aspects.items():
            per_aspect.add_row(m, *(f"{per[a]:.2f}" if a in per else "-" for a in names))
        out.print(per_aspect)
