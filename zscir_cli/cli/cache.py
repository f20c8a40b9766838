"""`zscir cache ls|rm`: inspect and prune the artifact cache.

Nothing a live process is writing or training is ever removed: every entry has an
inter-process lock (`core.locks`), held by the process that writes it, and `rm` takes that lock
without waiting before it deletes anything; an entry whose lock is held is kept, and `rm` says
by whom.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

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


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@app.command("ls")
def ls(
    kind: Annotated[str | None, typer.Option(help="Only this kind (dataset, backbone, index).")] = None,
    json_out: Json = False,
    cache_dir: CacheDir = None,
) -> None:
    """List cached artifacts (newest first), interrupted training runs, unfinished writes and the
    parts of unfinished sharded builds."""
    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.jobs.cache import interrupted, unfinished_builds

    store = ArtifactStore(cache_dir)
    arts = store.list(kind)
    runs = [r for r in interrupted(store) if kind in (None, r["kind"])]
    left = [x for x in store.leftovers() if kind in (None, x.kind)]
    builds = [b for b in unfinished_builds(store) if kind in (None, b["kind"])]
    if json_out:
        print_json([{"kind": a.kind, "key": a.key, "state": "complete", "size": a.size_bytes(),
                     "created": a.manifest.get("created"), "description": a.description,
                     "path": str(a.path)} for a in arts]
                   + [{"kind": r["kind"], "key": r["key"], "state": "interrupted", "epoch": r["epoch"],
                       "epochs": r["epochs"], "live": r["live"], "resume": r["resume"],
                       "description": r.get("description", ""), "path": str(r["path"])} for r in runs]
                   + [{"kind": x.kind, "key": x.key, "state": "incomplete", "live": x.live,
                       "pid": x.pid, "path": str(x.path)} for x in left]
                   + [{"kind": b["kind"], "key": b["key"], "state": "parts", "parts": b["parts"],
                       "written": b["written"], "live": b["live"], "path": str(b["path"])} for b in builds])
        return
    err.print(f"cache root: {store.root}", highlight=False)
    from rich.table import Table

    table = Table()
    for col in ("kind", "key", "size", "age", "description"):
        table.add_column(col, justify="right" if col in ("size", "age") else "left")
    for a in arts:
        table.add_row(a.kind, a.key, human_size(a.size_bytes()), _age(a.created), a.description)
    out.print(table)
    _print_unfinished(runs, left, builds)


def _print_unfinished(runs: list[dict[str, Any]], left: list, builds: list[dict[str, Any]]) -> None:
    for r in runs:
        state = f"training now ({r['holder']})" if r["live"] else f"stopped; {r['resume']}"
        out.print(f"interrupted run {r['kind']}/{r['key']} at epoch {r['epoch']}/{r['epochs'] or '?'}: "
                  f"{state}", highlight=False)
    for x in left:
        state = ("being written now" if x.live
                 else f"left by pid {x.pid}, which stopped before finishing" if x.pid
                 else "left by a process that stopped before finishing")
        out.print(f"incomplete write {x.ref} ({x.path}): {state}", highlight=False)
    for b in builds:
        state = f"being built now ({b['holder']})" if b["live"] else "stopped; the same command reuses its parts"
        out.print(f"unfinished build {b['kind']}/{b['key']}: {b['written']} of {b['parts'] or '?'} parts written "
                  f"({b['path']}): {state}", highlight=False)
    dead = sum(not r["live"] for r in runs) + sum(not x.live for x in left) + sum(not b["live"] for b in builds)
    if dead:
        err.print(f"{dead} interrupted or incomplete entr{'y' if dead == 1 else 'ies'}: "
                  "'zscir cache rm --incomplete' removes those no process is working on "
                  "(an interrupted run can be resumed instead).", highlight=False)


def _interactive() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, OSError, ValueError):
        return False


@app.command("rm")
def rm(
    keys: Annotated[list[str] | None, typer.Argument(help="Keys (or unique prefixes, or KIND/KEY).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Remove every artifact.")] = False,
    kind: Annotated[str | None, typer.Option(help="With --all: only this kind.")] = None,
    incomplete: Annotated[bool, typer.Option(
        "--incomplete", help="Remove what interrupted writes and training runs left behind "
                             "(never what a live process is working on).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed; remove "
                                                            "nothing.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Remove without asking.")] = False,
    cache_dir: CacheDir = None,
) -> None:
    """Remove artifacts, asking first (--yes does not ask; --dry-run only lists)."""
    from zscir_cli.core import locks
    from zscir_cli.core.cache import ArtifactStore
    from zscir_cli.core.errors import UserError
    from zscir_cli.jobs.cache import plan_removal, remove

    store = ArtifactStore(cache_dir)
    if not keys and not all_ and not incomplete:
        raise UserError("Nothing to remove.", "Name keys, or pass --all or --incomplete.")
    items, kept = plan_removal(store, keys or [], all_, kind, incomplete)
    for label, why in kept:
        err.print(f"kept {label}: {why}.", highlight=False)
    size = human_size(sum(_size(i.path) for i in items if i.path.exists()))
    if not items:
        err.print("nothing to remove.")
        return
    if dry_run:
        for i in items:
            typer.echo(f"would remove {i.label}")
        err.print(f"{len(items)} item(s), {size}; nothing was removed (--dry-run).")
        return
    if not yes:
        if not _interactive():
            raise UserError(f"Not removing {len(items)} item(s) ({size}) without confirmation, and "
                            "there is no terminal to ask on.",
                            "Pass --yes to remove them (--dry-run lists them).")
        for i in items:
            err.print(f"  {i.label}", highlight=False)
        if not typer.confirm(f"Remove these {len(items)} item(s) ({size})?", err=True):
            err.print("nothing was removed.")
            return
    for i in items:
        try:
            remove(store, i)
        except locks.Busy as e:  # a process started on it since the plan was made
            err.print(f"kept {i.label}: {e.who} is working on it.", highlight=False)
            continue
        typer.echo(f"removed {i.label}")
