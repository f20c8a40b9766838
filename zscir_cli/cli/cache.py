"""`zscir cache ls|rm`: inspect and prune the artifact cache.

Nothing a live process is writing or training is ever removed: every entry has an
inter-process lock (`core.locks`), held by the process that writes it, and `rm` takes that lock
without waiting before it deletes anything; an entry whose lock is held is kept, and `rm` says
by whom.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from zscir_cli.cli.common import human_size, print_json
from zscir_cli.cli.console import err, out
from zscir_cli.cli.options import CacheDir, Json

app = typer.Typer(help="Inspect and prune the artifact cache.", no_args_is_help=True)

PARTIAL = ".partial"  # where training runs in progress live (pipeline.training)
RESUME = {"stage1": "zscir map-train", "stage2": "zscir compose-train", "backbone": "zscir pretrain"}


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


def interrupted(store) -> list[dict[str, Any]]:
    """Training runs stopped before their last epoch, each with `live` (a process is training it
    now) and `resume` (how to continue it)."""
    from zscir_cli.core import locks

    part = store.root / PARTIAL
    if not part.is_dir() or not any(part.iterdir()):
        return []  # spares the torch import that reading a run's state needs
    from zscir_cli.jobs.training.loop import interrupted_runs

    runs = []
    for run in interrupted_runs(store.root):
        name = f"{run['kind']}-{run['key']}"
        command = run.get("command") or RESUME.get(run["kind"], "zscir")
        runs.append({**run, "path": Path(run["path"]), "live": locks.is_held(store.root, name),
                     "holder": locks.holder(store.root, name),
                     "resume": f"rerun the same '{command}' command with --resume"})
    return runs


@app.command("ls")
def ls(
    kind: Annotated[str | None, typer.Option(help="Only this kind (dataset, backbone, index).")] = None,
    json_out: Json = False,
    cache_dir: CacheDir = None,
) -> None:
    """List cached artifacts (newest first), interrupted training runs and unfinished writes."""
    from zscir_cli.core.cache import ArtifactStore

    store = ArtifactStore(cache_dir)
    arts = store.list(kind)
    runs = [r for r in interrupted(store) if kind in (None, r["kind"])]
    left = [x for x in store.leftovers() if kind in (None, x.kind)]
    if json_out:
        print_json([{"kind": a.kind, "key": a.key, "state": "complete", "size": a.size_bytes(),
                     "created": a.manifest.get("created"), "description": a.description,
                     "path": str(a.path)} for a in arts]
                   + [{"kind": r["kind"], "key": r["key"], "state": "interrupted", "epoch": r["epoch"],
                       "epochs": r["epochs"], "live": r["live"], "resume": r["resume"],
                       "description": r.get("description", ""), "path": str(r["path"])} for r in runs]
                   + [{"kind": x.kind, "key": x.key, "state": "incomplete", "live": x.live,
                       "pid": x.pid, "path": str(x.path)} for x in left])
        return
    err.print(f"cache root: {store.root}", highlight=False)
    from rich.table import Table

    table = Table()
    for col in ("kind", "key", "size", "age", "description"):
        table.add_column(col, justify="right" if col in ("size", "age") else "left")
    for a in arts:
        table.add_row(a.kind, a.key, human_size(a.size_bytes()), _age(a.created), a.description)
    out.print(table)
    _print_unfinished(runs, left)


def _print_unfinished(runs: list[dict[str, Any]], left: list) -> None:
    for r in runs:
        state = f"training now ({r['holder']})" if r["live"] else f"stopped; {r['resume']}"
        out.print(f"interrupted run {r['kind']}/{r['key']} at epoch {r['epoch']}/{r['epochs'] or '?'}: "
                  f"{state}", highlight=False)
    for x in left:
        state = ("being written now" if x.live
                 else f"left by pid {x.pid}, which stopped before finishing" if x.pid
                 else "left by a process that stopped before finishing")
        out.print(f"incomplete write {x.ref} ({x.path}): {state}", highlight=False)
    dead = sum(not r["live"] for r in runs) + sum(not x.live for x in left)
    if dead:
        err.print(f"{dead} interrupted or incomplete entr{'y' if dead == 1 else 'ies'}: "
                  "'zscir cache rm --incomplete' removes those no process is working on "
                  "(an interrupted run can be resumed instead).", highlight=False)


@dataclass
class _Item:
    """One thing `rm` would delete: its label, its folder and the lock that guards it."""

    label: str
    path: Path
    lock: str | None
    delete: Callable[[], None]


def _plan(store, keys: list[str], all_: bool, kind: str | None,
          incomplete: bool) -> tuple[list[_Item], list[tuple[str, str]]]:
    """(what to remove, [(what is kept, why)])."""
    from zscir_cli.core import locks

    items: list[_Item] = []
    kept: list[tuple[str, str]] = []
    arts = store.list(kind) if all_ else [store.resolve(k) for k in keys]
    for a in arts:
        name = f"{a.kind}-{a.key}"
        if locks.is_held(store.root, name):
            kept.append((a.ref, f"{locks.holder(store.root, name)} is writing it"))
        else:
            items.append(_Item(a.ref, a.path, name, lambda a=a: store.remove(a)))
    if not incomplete:
        return items, kept
    for x in store.leftovers():
        label = f"incomplete write {x.ref} ({x.path.name})"
        name = f"{x.kind}-{x.key}" if x.kind else None
        if x.live:
            kept.append((label, f"{locks.holder(store.root, name)} is writing this artifact now"))
        else:
            items.append(_Item(label, x.path, name, lambda p=x.path: _delete(p)))
    for r in interrupted(store):
        label = f"interrupted run {r['kind']}/{r['key']} (epoch {r['epoch']}/{r['epochs'] or '?'})"
        if r["live"]:
            kept.append((label, f"{r['holder']} is training it"))
        else:
            items.append(_Item(label, r["path"], f"{r['kind']}-{r['key']}",
                               lambda p=r["path"]: _delete(p)))
    return items, kept


def _delete(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


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

    store = ArtifactStore(cache_dir)
    if not keys and not all_ and not incomplete:
        raise UserError("Nothing to remove.", "Name keys, or pass --all or --incomplete.")
    items, kept = _plan(store, keys or [], all_, kind, incomplete)
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
            with locks.hold(store.root, i.lock, wait=False) if i.lock else contextlib.nullcontext():
                i.delete()
        except locks.Busy as e:  # a process started on it since the plan was made
            err.print(f"kept {i.label}: {e.who} is working on it.", highlight=False)
            continue
        typer.echo(f"removed {i.label}")
