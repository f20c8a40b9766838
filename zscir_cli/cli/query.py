"""`zscir query`: a reference image plus a modification text."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zscir_cli.cli.common import make_context, print_hits, print_json
from zscir_cli.cli.console import err
from zscir_cli.cli.options import CacheDir, Device, Json, Model, Pretrained
from zscir_cli.core.errors import UserError


def query(
    reference: Annotated[str | None, typer.Argument(
        help="Reference image: a file, or an id in the index.", show_default=False)] = None,
    text: Annotated[str | None, typer.Argument(
        help="Modification text, e.g. \"make it red\".", show_default=False)] = None,
    method: Annotated[str, typer.Option(help="tscir (both stages), stage1, pic2word, sum, image or text.")] = "tscir",
    run: Annotated[str | None, typer.Option(
        "--run", help="Trained run for tscir/stage1/pic2word [default: the newest for the model].",
        show_default=False)] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Results to show.")] = 10,
    index: Annotated[str | None, typer.Option(
        "--index", help="Index key (from 'zscir index' or 'zscir cache ls') [default: the newest "
                        "index built with the model].", show_default=False)] = None,
    model: Model = None,
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
                               "(default: name it and stop before any query runs).")] = False,
    device: Device = "auto",
    cache_dir: CacheDir = None,
) -> None:
    """Find the gallery images that show REFERENCE changed as TEXT says."""
    if queries is not None and (html is not None or json_out):
        raise UserError("--queries writes JSON lines on stdout; --html and --json go with a single query.",
                        "Leave out --html/--json, or query one REFERENCE TEXT at a time.")
    if queries is not None or reference is None or text is None:
        _batch_or_usage(queries, reference, text, method=method, run=run, top_k=top_k, index=index, model=model,
                        pretrained=pretrained, skip_invalid=skip_invalid, device=device, cache_dir=cache_dir)
        return
    from zscir_cli.jobs.backbones import open_backbone
    from zscir_cli.jobs.retrieval.methods import check_method, load_method
    from zscir_cli.jobs.retrieval.query import check_query_text, index_and_model, load_index, run_query, write_html
    from zscir_cli.jobs.retrieval.references import reference_arg, resolve

    # everything the user typed is checked before an index or a model is opened
    check_method(method)
    check_query_text(text, method)
    arg = reference_arg(reference)

    ctx = make_context(cache_dir, device)
    art, spec = index_and_model(ctx, model, pretrained, index)
    loaded = load_index(ctx, art)
    ref = resolve(arg, loaded)  # an id the index lacks fails here, before the model loads
    if index is not None or model is not None or pretrained is not None:
        err.print(f"using index {art.key} ({art.description})", highlight=False, markup=False)
    backbone = open_backbone(ctx, spec)
    qm = load_method(ctx, method, backbone, run)
    if qm.run is not None:
        err.print(f"using {method} run {qm.run.key}", highlight=False, markup=False)
    res = run_query(ctx, qm, loaded, ref, text, k=top_k)
    if html is not None:
        write_html([res], html, title=f"zscir: {text}")
        err.print(f"wrote {html}", highlight=False, markup=False)
    if json_out:
        print_json(res.to_json())
        return
    print_hits(res)


def _batch_or_usage(queries: Path | None, reference: str | None, text: str | None, **options) -> None:
    """--queries FILE alone runs the batch; anything else short of REFERENCE TEXT is a usage error."""
    from zscir_cli.cli.query_batch import query_batch
    from zscir_cli.core.errors import UserError

    if queries is None:
        raise UserError("query needs REFERENCE and TEXT, or --queries FILE.",
                        "e.g. zscir query test-g000000 \"make it green\", or zscir query --queries queries.jsonl.")
    if reference is not None or text is not None:
        raise UserError("--queries FILE takes the place of REFERENCE and TEXT; give one or the other.",
                        "Put the query in the file, or leave out --queries.")
    query_batch(queries, **options)
