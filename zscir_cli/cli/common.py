"""Small helpers the command modules share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zscir_cli.cli.console import RichReporter, out
from zscir_cli.core.cache import ArtifactStore
from zscir_cli.jobs.context import Context


def make_context(cache_dir: Path | None = None, device: str = "auto",
                 workers: int | None = None) -> Context:
    return Context(store=ArtifactStore(cache_dir), reporter=RichReporter(), device=device, workers=workers)


def print_json(obj: Any) -> None:
    out.print_json(json.dumps(obj, default=str))


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def print_hits(result) -> None:
    """A query's results: a heading line, then rank / id / score."""
    from rich.table import Table

    out.print(f"\n{result.reference} + \"{result.text}\" (method {result.method})", highlight=False)
    table = Table()
    table.add_column("rank", justify="right")
    table.add_column("id")
    table.add_column("score", justify="right")
    for hit in result.hits:
        table.add_row(str(hit.rank), hit.id, f"{hit.score:.4f}")
    out.print(table)


def rank() -> int:
    """This process's rank under torchrun (0 without it): only rank 0 reports."""
    import os

    return int(os.environ.get("RANK", "0"))


def print_run(art, label: str, extra: dict[str, Any], note: str = "") -> None:
    """A finished training run: its key and path on stderr, its final metrics on stdout (or all
    of it as JSON with `extra`)."""
    final = art.manifest.get("final", {})
    if extra.get("json"):
        print_json({"run": art.key, "built": art.built, "path": str(art.path),
                    **{k: v for k, v in extra.items() if k != "json"}, **final})
        return
    from zscir_cli.cli.console import err

    err.print(f"{label} run {art.key}{note}: {art.path}", highlight=False)
    out.print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in final.items() if k != "lr"), highlight=False)
