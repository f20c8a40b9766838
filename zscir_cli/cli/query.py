"""`zscir query`: a reference image plus a modification text (or a file of them, --queries)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from zscir_cli.cli.common import make_context, print_hits, print_json
from zscir_cli.cli.options import METHODS_HELP, CacheDir, Device, IndexModel, Json, Pretrained, Weights
from zscir_cli.core.errors import UserError
from zscir_cli.jobs.retrieval.config import QueryRequest as D


def query(
    reference: Annotated[str | None, typer.Argument(
        help="Reference image: a file, or an id in the index.", show_default=False)] = None,
    text: Annotated[str | None, typer.Argument(
        help="Modification text, e.g. \"make it red\".", show_default=False)] = None,
    method: Annotated[str, typer.Option(help=f"{METHODS_HELP}.")] = D.method,
    run: Annotated[str | None, typer.Option(
        "--run", help="Trained run for tscir/stage1/pic2word [default: the newest for the model].",
        show_default=False)] = None,
    weights: Weights = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Results to show.")] = D.top_k,
    index: Annotated[str | None, typer.Option(
        "--index", help="Index key (from 'zscir index' or 'zscir cache ls') [default: the newest "
                        "index built with the model].", show_default=False)] = None,
    model: IndexModel = None,
    pretrained: Pretrained = None,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Also write a self-contained HTML page with thumbnails.")] = None,
    json_out: Json = False,
    queries: Annotated[Path | None, typer.Option(
        "--queries", help="Answer every line of a JSONL file ({\"reference\": ID or image path, \"text\": "
                          "..., \"k\": N}; paths relative to the file), one JSON line out per query, in "
                          "order, instead of REFERENCE TEXT.", show_default=False)] = None,
    skip_invalid: Annotated[bool, typer.Option(
        "--skip-invalid", help="With --queries: answer an invalid line with an error line and go on "
                               "(default: name it and stop before any query runs).")] = D.skip_invalid,
    device: Device = "auto",
    cache_dir: CacheDir = None,
) -> None:
    """Find the gallery images that show REFERENCE changed as TEXT says."""
    # a query is small forward passes: OpenMP's idle threads sleep rather than spin against other
    # work on the machine (read when torch first loads, below; a value the user set wins; the
    # results are the same). Thread counts stay the libraries' own.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if queries is not None and (html is not None or json_out):
        raise UserError("--queries writes JSON lines on stdout; --html and --json go with a single query.",
                        "Leave out --html/--json, or query one REFERENCE TEXT at a time.")
    if queries is None and (reference is None or text is None):
        raise UserError("query needs REFERENCE and TEXT, or --queries FILE.",
                        "e.g. zscir query test-g000000 \"make it green\", or zscir query --queries queries.jsonl.")
    if queries is not None and (reference is not None or text is not None):
        raise UserError("--queries FILE takes the place of REFERENCE and TEXT; give one or the other.",
                        "Put the query in the file, or leave out --queries.")
    req = D(reference=reference, text=text, queries=str(queries) if queries is not None else None, method=method,
            run=run, weights=weights, top_k=top_k, index=index, model=model, pretrained=pretrained,
            html=str(html) if html is not None else None, skip_invalid=skip_invalid)
    ctx = make_context(cache_dir, device)
    if queries is not None:
        from zscir_cli.jobs.retrieval.batch import answer_all

        for obj in answer_all(ctx, req):
            sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
            sys.stdout.flush()  # a reader of the pipe sees each answer as it comes
        return
    from zscir_cli.jobs.retrieval.query import answer

    res = answer(ctx, req)
    if json_out:
        print_json(res.to_json())
        return
    print_hits(res)
