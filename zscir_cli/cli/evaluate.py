"""`zscir eval`: a benchmark's protocol for one or more methods."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zscir_cli.cli.common import make_context, print_json
from zscir_cli.cli.console import err, out
from zscir_cli.cli.options import METHODS_HELP, CacheDir, Device, Json, ManyWeights, Pretrained, SplitModel
from zscir_cli.jobs.protocols.config import EvalRequest as D


def evaluate(
    dataset: Annotated[str, typer.Argument(help="Benchmark: shapes, fashioniq, cirr or circo (prepared first).")],
    split: Annotated[str, typer.Option(help="Split: val (every benchmark), test (shapes).")] = D.split,
    method: Annotated[list[str] | None, typer.Option(
        "--method", help=f"Method to evaluate ({METHODS_HELP}; repeat the option for several) [default: every "
                         "method with a run for the model, and those --weights names].", show_default=False)] = None,
    run: Annotated[str | None, typer.Option(
        "--run", help="Trained run for the (single) trained method given [default: the newest].",
        show_default=False)] = None,
    weights: ManyWeights = None,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Also write a page of the first method's worst queries, with thumbnails.",
        show_default=False)] = None,
    model: SplitModel = None,
    pretrained: Pretrained = None,
    kind: Annotated[str, typer.Option(
        "--kind", help="Index kind of the galleries (see 'zscir index --kind'): flat ranks exactly, as "
                       "the protocols are defined; the others re-rank their candidates exactly.")] = D.kind,
    target_caption: Annotated[bool, typer.Option(
        "--target-caption/--no-target-caption",
        help="shapes: also rank each query by its target's caption through the base CLIP: a reference point "
             "(no query offers it, and it is no ceiling).")] = D.target_caption,
    oracle: Annotated[bool | None, typer.Option("--oracle/--no-oracle", hidden=True,
                                                 help="The old name of --target-caption.")] = None,
    wording: Annotated[str | None, typer.Option(
        help="shapes: ask the same queries in a phrasing family (train, val or test), one phrasing per query "
             "and family, drawn from the query's id: for the split's own family, another draw than the split's "
             "stored texts [default: the stored texts].", show_default=False)] = None,
    texts: Annotated[Path | None, typer.Option(
        "--texts", help="shapes: ask the same queries with these texts, a JSONL file of {\"query_id\": ..., "
                        "\"modification\": ...}, one line per query of the split.", show_default=False)] = None,
    json_out: Json = False,
    device: Device = "auto",
    cache_dir: CacheDir = None,
) -> None:
    """Evaluate methods on a benchmark split, following its protocol exactly."""
    from zscir_cli.jobs.protocols.evaluate import evaluate_request

    req = D(dataset=dataset, split=split, methods=list(method or []), run=run, weights=list(weights or []),
            model=model, pretrained=pretrained,
            kind=kind, target_caption=oracle if oracle is not None else target_caption, wording=wording,
            texts=str(texts) if texts is not None else None, html=str(html) if html is not None else None)
    res = evaluate_request(make_context(cache_dir, device), req)
    if json_out:
        print_json(res.to_json())
        return
    if res.dataset != "shapes":
        _print_benchmark(res)
        return
    err.print(f"{res.protocol}", highlight=False)
    out.print(f"{dataset.split(':')[0]} CIR, {split} split: {res.queries} queries ({res.wording} wording), gallery "
              f"{res.gallery}, model {res.model}", highlight=False)
    out.print(results_table(res, with_run=True))
    out.print(breakdown_table(res))


SHAPES_METRICS = ("R@1", "R@10", "R@50", "mAP@10")


def results_table(res, with_run: bool = False):
    """Every row with its recipe (and run), then the target-caption reference row apart."""
    from rich.table import Table

    table = Table()
    cols = ("method", "recipe", *(["run"] if with_run else []), *SHAPES_METRICS)
    for col in cols:
        table.add_column(col, justify="right" if col in SHAPES_METRICS else "left")
    for r in res.results:
        table.add_row(r.method, r.recipe, *([r.run or "-"] if with_run else []),
                      *(f"{r.metrics[m]:.1f}" for m in SHAPES_METRICS))
    if res.target_caption is not None:
        from zscir_cli.jobs.protocols.results import TARGET_CAPTION_LABEL

        table.add_section()
        table.add_row(TARGET_CAPTION_LABEL, "no training", *(["-"] if with_run else []),
                      *(f"{res.target_caption.metrics[m]:.1f}" for m in SHAPES_METRICS))
    return table


def breakdown_table(res):
    """R@1 of every method (and the target-caption row) by edit type, by objects in the reference
    scene and (test) by whether the target holds a held-out colour-shape pair, each column headed
    by its group and query count."""
    from rich.table import Table

    table = Table(title="R@1 by edit type | by objects in the reference | by pair", title_justify="left")
    table.add_column("method")
    cols = [(name, g) for name, by in res.group_queries.items() for g in by]
    for name, g in cols:
        label = f"{g} obj" if name == "by_objects_R@1" else g
        table.add_column(f"{label} ({res.group_queries[name][g]})", justify="right")
    rows = [(r.method, r.groups) for r in res.results]
    if res.target_caption is not None:
        rows.append(("target caption", res.target_caption.groups))
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
