"""`zscir query --queries FILE.jsonl`: the batch mode of `zscir query`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from zscir_cli.cli.common import make_context
from zscir_cli.cli.console import err, warn
from zscir_cli.core.errors import UserError

SKIP_HINT = "Fix the line(s), or pass --skip-invalid to answer each with an error line and go on."


def query_batch(queries: Path, *, method: str, run: str | None, top_k: int, index: str | None,
                model: str | None, pretrained: str | None, skip_invalid: bool, device: str,
                cache_dir: Path | None) -> None:
    """Every line of QUERIES checked first, then answered with one model and one index, one JSON
    line per query on stdout, in input order."""
    from zscir_cli.jobs.backbones import open_backbone
    from zscir_cli.jobs.retrieval.methods import check_method, load_method
    from zscir_cli.jobs.retrieval.query import index_and_model, index_ids, load_index
    from zscir_cli.jobs.retrieval.batch import read_queries, run_queries

    check_method(method)
    ctx = make_context(cache_dir, device)
    art, spec = index_and_model(ctx, model, pretrained, index)
    batch = read_queries(queries, set(index_ids(art)), art.key, method, top_k)
    bad = [q for q in batch if q.error is not None]
    if bad and not skip_invalid:  # before any model is loaded
        first = bad[0].error
        assert first is not None
        more = (f" (invalid lines: {', '.join(str(q.line) for q in bad[:10])}"
                f"{f' and {len(bad) - 10} more' if len(bad) > 10 else ''})") if len(bad) > 1 else ""
        raise UserError(first.message + more, ((first.hint or "") + " " + SKIP_HINT).strip())
    for q in bad:
        warn(f"{q.error} (answered with an error line)")
    backbone = open_backbone(ctx, spec)
    qm = load_method(ctx, method, backbone, run)
    if qm.run is not None:
        err.print(f"using {method} run {qm.run.key}", highlight=False, markup=False)
    loaded = load_index(ctx, art)
    answered = skipped = 0
    for obj in run_queries(ctx, qm, loaded, batch, skip_invalid):
        sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
        sys.stdout.flush()  # a reader of the pipe sees each answer as it comes
        answered, skipped = (answered, skipped + 1) if "error" in obj else (answered + 1, skipped)
    err.print(f"{answered} queries answered" + (f", {skipped} skipped" if skipped else "")
              + f" (index {art.key})", highlight=False, markup=False)
