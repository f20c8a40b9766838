"""`zscir cache ls|rm`: inspect and prune the artifact cache."""

from __future__ import annotations

import shutil
import time
from typing import Annotated

import typer

from zscir_cli.cli.common import human_size, print_json
from zscir_cli.cli.console import err, out
from zscir_cli.cli.options import CacheDir, Json

app = typer.Typer(help="Inspect and prune the artifact cache.", no_args_is_help=True)


def _age(seconds: float) -> str:
    s = max(0, int(time.time() - seconds))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


@app.command("ls")
def ls(
    kind: Annotated[str | None, typer.Option(help="Only this kind (dataset, backbone, index).")] = None,
    json_out: Json = False,
    cache_dir: CacheDir = None,
) -> None:
    """List cached artifacts, newest first."""
    from zscir_cli.core.cache import ArtifactStore

    store = ArtifactStore(cache_dir)
    arts = store.list(kind)
    if json_out:
        print_json([{"kind": a.kind, "key": a.key, "size": a.size_bytes(), "created": a.manifest.get("created"),
                     "description": a.description, "path": str(a.path)} for a in arts])
        return
    err.print(f"cache root: {store.root}", highlight=False)
    from rich.table import Table

    table = Table()
    for col in ("kind", "key", "size", "age", "description"):
        table.add_column(col, justify="right" if col in ("size", "age") else "left")
    for a in arts:
        table.add_row(a.kind, a.key, human_size(a.size_bytes()), _age(a.created), a.description)
    out.print(table)
    if store.incomplete():
        err.print(f"{len(store.incomplete())} incomplete write(s) under {store.root / '.tmp'}: "
                  "'zscir cache rm --incomplete' removes them.")


@app.command("rm")
def rm(
    keys: Annotated[list[str] | None, typer.Argument(help="Keys (or unique prefixes, or KIND/KEY).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Remove every artifact.")] = False,
    kind: Annotated[str | None, typer.Option(help="With --all: only this kind.")] = None,
    incomplete: Annotated[bool, typer.Option("--incomplete", help="Remove leftovers of interrupted writes.")] = False,
    cache_dir: CacheDir = None,
) -> None:
    """Remove artifacts."""
    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.core.errors import UserError

    store = ArtifactStore(cache_dir)
    if not keys and not all_ and not incomplete:
        raise UserError("Nothing to remove.", "Name keys, or pass --all or --incomplete.")
    targets = store.list(kind) if all_ else [store.resolve(k) for k in keys or []]
    for a in targets:
        store.remove(a)
        typer.echo(f"removed {a.ref}")
    if incomplete:
        for p in store.incomplete():
            shutil.rmtree(p, ignore_errors=True)
            typer.echo(f"removed {p}")
