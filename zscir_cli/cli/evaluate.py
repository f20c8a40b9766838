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
    kind: Annotated[str, typer.Option(
        "--kind", help="Index kind of the galleries (see 'zscir index --kind'): flat ranks exactly, as "
                       "the protocols are defined; the others re-rank their candidates exactly.")] = "flat",
    oracle: Annotated[bool, typer.Option(
        "--oracle/--no-oracle", help="shapes: also rank each query by its target's caption through the base "
                                     "CLIP, a ceiling (not a method: no query offers it).")] = True,
    json_out: Json = False,
    device: Device = "auto",
    cache_dir: CacheDir = None,
) -> None:
    """Evaluate methods on a benchmark split, following its protocol exactly."""
    from zscir_cli.core.errors import UserError
    from zscir_cli.pipeline.backbones import open_backbone, resolve_spec
    from zscir_cli.pipeline.datasets import find_dataset
    from zscir_cli.pipeline.evaluate import evaluate as run_evaluation
    from zscir_cli.pipeline.evaluate import open_suite
    from zscir_cli.pipeline.methods import TRAINED, available_methods, check_method
    from zscir_cli.pipeline.report import check_output

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
    if html is not None:
        html = check_output(html)
    # a missing preparation or split, or a split without ground truth, is reported before any model loads
    suite = open_suite(ctx, name, split)
    backbone = open_backbone(ctx, resolve_spec(ctx, model, pretrained))
    methods = list(method) if method else available_methods(ctx, backbone)
    res, worst = run_evaluation(ctx, backbone, suite, methods, {trained[0]: run} if run else None, kind, oracle)
    if html is not None and worst is not None:
        worst.write(html, f"zscir eval {name} {split}: the worst queries of {worst.method} ({res.model})")
        err.print(f"wrote {html}")
    if json_out:
        print_json(res.to_json())
        return
    if benchmark:
        _print_benchmark(res)
        return
    from rich.table import Table

    err.print(f"{res.protocol}", highlight=False)
    out.print(f"{name} CIR, {split} split: {res.queries} queries, gallery {res.gallery}, model {res.model}",
              highlight=False)
    table = Table()
    for col in ("method", "run", "R@1", "R@10", "R@50", "mAP@10"):
        table.add_column(col, justify="left" if col in ("method", "run") else "right")
    for r in res.results:
        table.add_row(r.method, r.run or "-", *(f"{r.metrics[m]:.1f}" for m in SHAPES_METRICS))
    add_oracle_row(table, res, with_run=True)
    out.print(table)
    out.print(breakdown_table(res))


SHAPES_METRICS = ("R@1", "R@10", "R@50", "mAP@10")


def add_oracle_row(table, res, with_run: bool = False) -> None:
    """The target-caption ceiling below the methods, set apart from them."""
    from zscir_cli.pipeline.evaluate import ORACLE_LABEL

    if res.oracle is None:
        return
    table.add_section()
    table.add_row(ORACLE_LABEL, *(["-"] if with_run else []), *(f"{res.oracle.metrics[m]:.1f}" for m in SHAPES_METRICS))


def breakdown_table(res):
    """R@1 of every method (and the oracle) by edit type and by objects in the reference scene,
    each column headed by its group and query count."""
    from rich.table import Table

    table = Table(title="R@1 by edit type | by objects in the reference", title_justify="left")
    table.add_column("method")
    cols = [(name, g) for name, by in res.group_queries.items() for g in by]
    for name, g in cols:
        label = f"{g} obj" if name == "by_objects_R@1" else g
        table.add_column(f"{label} ({res.group_queries[name][g]})", justify="right")
    rows = [(r.method, r.groups) for r in res.results]
    if res.oracle is not None:
        rows.append(("oracle", res.oracle.groups))
    for method, groups in rows:
        table.add_row(method, *(f"{groups[n][g]:.1f}" if g in groups.get(n, {}) else "-" for n, g in cols))
    return table


def _print_benchmark(res) -> None:
    from rich.table import Table

    err.print(res.protocol, highlight=False)
    out.print(f"{res.dataset} {res.split}: {res.queries} queries ({res.excluded_queries} excluded for "
              f"missing images), model {res.model}", highlight=False)
    keys = list(res.results[0].metrics)
    table = Table()
    table.add_column("method")
    for k in keys:
        table.add_column(k, justify="right")
    for r in res.results:
        table.add_row(r.method, *(f"{r.metrics[k]:.2f}" for k in keys))
    out.print(table)
    aspects = {r.method: r.groups["map@10_by_aspect"] for r in res.results if "map@10_by_aspect" in r.groups}
    if aspects:
        names = sorted({a for per in aspects.values() for a in per})
        per_aspect = Table(title="mAP@10 by semantic aspect", title_justify="left")
        per_aspect.add_column("method")
        for a in names:
            per_aspect.add_column(a, justify="right")
        for m, per in aspects.items():
            per_aspect.add_row(m, *(f"{per[a]:.2f}" if a in per else "-" for a in names))
        out.print(per_aspect)
