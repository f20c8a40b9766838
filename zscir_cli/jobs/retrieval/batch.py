"""`zscir query --queries FILE.jsonl`: many queries in one process, one JSON line out per query.

Each line of the file is {"reference": ..., "text": ..., "k": ...}: the reference is an id of the
index or an image file (a relative path is relative to the queries file's folder, as in triplet
files), `k` is optional. Every line is checked before the model is loaded: an invalid line is
named by its number, and is either fatal or (with skipping) answered by an error line in its
place, so the output has one line per query, in input order.
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zscir_cli.core.errors import UserError
from zscir_cli.core.text import read_text
from zscir_cli.jobs.backbones import open_backbone
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.retrieval.config import QueryRequest
from zscir_cli.jobs.retrieval.methods import QueryMethod, check_method, load_method
from zscir_cli.jobs.retrieval.query import (
    LoadedIndex,
    check_query_text,
    index_and_model,
    index_ids,
    load_index,
    run_query,
    say_method,
)
from zscir_cli.jobs.retrieval.references import ID, ReferenceArg, reference_arg, resolve

KEYS = ("reference", "text", "k")
EXPECTED = 'One JSON object a line: {"reference": "ID or image path", "text": "make it red", "k": 10}.'


@dataclass
class BatchQuery:
    line: int  # 1-based line number in the file
    reference: str = ""  # as written in the file
    text: str = ""
    k: int = 10
    arg: ReferenceArg | None = None  # the reference, checked (a file's header read)
    error: UserError | None = None
    where: str = ""  # "FILE, line N", for messages


def read_queries(path: Path, ids: Container[str], index_key: str, method: str,
                 default_k: int = 10) -> list[BatchQuery]:
    """Every non-blank line of `path`, checked against the index's ids (files by their header
    only: nothing is decoded yet). Invalid lines carry their error."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"Queries file not found: {path}.", "Check the path.")
    lines = read_text(path).splitlines()
    queries = [parse_line(path, n, raw, ids, index_key, method, default_k)
               for n, raw in enumerate(lines, 1) if raw.strip()]
    if not queries:
        raise UserError(f"{path} holds no query.", EXPECTED)
    return queries


def parse_line(path: Path, n: int, raw: str, ids: Container[str], index_key: str, method: str,
               default_k: int) -> BatchQuery:
    where = f"{path}, line {n}"
    q = BatchQuery(n, k=default_k, where=where)
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        q.error = UserError(f"{where}: not JSON ({e.msg}).", EXPECTED)
        return q
    try:
        q.reference, q.text, q.k = _fields(obj, where, default_k)
        check_query_text(q.text, method)
        q.arg = _reference(path, q.reference, ids, index_key, where)
    except UserError as e:
        q.error = e if e.message.startswith(where) else UserError(f"{where}: {e.message}", e.hint)
    return q


def _fields(obj: Any, where: str, default_k: int) -> tuple[str, str, int]:
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(obj).__name__}.", EXPECTED)
    unknown = sorted(set(obj) - set(KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key '{unknown[0]}'.", f"The keys are {', '.join(KEYS)}.")
    ref, text, k = obj.get("reference"), obj.get("text"), obj.get("k", default_k)
    if not isinstance(ref, str) or not ref:
        raise UserError(f"{where}: 'reference' must be a non-empty string (an id or an image path).", EXPECTED)
    if not isinstance(text, str):
        raise UserError(f"{where}: 'text' must be a string.", EXPECTED)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise UserError(f"{where}: 'k' must be a whole number >= 1, got {json.dumps(k)}.", "Write \"k\": 10, say.")
    return ref, text, k


def _reference(path: Path, reference: str, ids: Container[str], index_key: str, where: str) -> ReferenceArg:
    """An id of the index, or an image file relative to the queries file's folder, its header read."""
    if reference in ids and not (path.parent / Path(reference).expanduser()).is_file():
        return ReferenceArg(ID, reference)
    try:
        arg = reference_arg(reference, path.parent)
    except UserError as e:
        if e.message.startswith("Cannot read"):
            raise
        arg = ReferenceArg(ID, reference)
    if arg.kind == ID:
        raise UserError(f"{where}: '{reference}' is neither an id in index {index_key} nor an image file "
                        f"(looked for {path.parent / Path(reference).expanduser()}).",
                        "Relative paths are relative to the queries file's folder.")
    return arg


def run_queries(ctx: Context, method: QueryMethod, loaded: LoadedIndex, queries: list[BatchQuery],
                skip_invalid: bool = False) -> Iterator[dict[str, Any]]:
    """One JSON object per query, in order: the answer (as `zscir query --json`, plus its line),
    or, for an invalid line when skipping, {"line", "error", "hint"}."""
    for q in ctx.reporter.track(queries, "queries"):
        try:
            if q.error is not None:
                raise q.error
            assert q.arg is not None
            res = run_query(ctx, method, loaded, resolve(q.arg, loaded), q.text, k=q.k)
        except UserError as e:
            fresh = q.error is None  # failed only now (a file that does not decode)
            e = UserError(f"{q.where}: {e.message}", e.hint) if fresh else e
            if not skip_invalid:
                raise e from None
            if fresh:  # the lines found invalid beforehand were reported then
                ctx.reporter.info(f"{e} (answered with an error line)")
            yield {"line": q.line, "error": e.message, "hint": e.hint or ""}
            continue
        yield {"line": q.line, **res.to_json(), "reference": q.reference}


SKIP_HINT = "Fix the line(s), or pass --skip-invalid to answer each with an error line and go on."


def answer_all(ctx: Context, req: QueryRequest) -> Iterator[dict[str, Any]]:
    """`zscir query --queries`: every line of the file checked first (an invalid one stops
    everything before any model loads, unless skipping), then answered with one model and one
    index, one object per query in input order; a last line on stderr counts them."""
    check_method(req.method, req.weights)
    art, spec = index_and_model(ctx, req.model, req.pretrained, req.index)
    batch = read_queries(Path(req.queries), set(index_ids(art)), art.key, req.method, req.top_k)  # type: ignore[arg-type]
    bad = [q for q in batch if q.error is not None]
    if bad and not req.skip_invalid:
        first = bad[0].error
        assert first is not None
        more = (f" (invalid lines: {', '.join(str(q.line) for q in bad[:10])}"
                f"{f' and {len(bad) - 10} more' if len(bad) > 10 else ''})") if len(bad) > 1 else ""
        raise UserError(first.message + more, ((first.hint or "") + " " + SKIP_HINT).strip())
    for q in bad:
        ctx.reporter.info(f"{q.error} (answered with an error line)")
    qm = load_method(ctx, req.method, open_backbone(ctx, spec), req.run, req.weights)
    say_method(ctx, qm, art)
    answered = skipped = 0
    for obj in run_queries(ctx, qm, load_index(ctx, art), batch, req.skip_invalid):
        answered, skipped = (answered, skipped + 1) if "error" in obj else (answered + 1, skipped)
        yield obj
    ctx.reporter.info(f"{answered} queries answered" + (f", {skipped} skipped" if skipped else "")
                      + f" (index {art.key})")
