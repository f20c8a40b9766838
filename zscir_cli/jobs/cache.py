"""`zscir cache ls|rm`: what the artifact cache holds, and what a removal would take.

Besides finished artifacts, a cache can hold what an interrupted process left: a training run
stopped before its last epoch (`.partial/`), a write never published (`.tmp/`), the parts of a
sharded build (`.parts/`). Each is `live` while a process holds its lock, and a live one is never
removed: `remove` takes the lock without waiting before it deletes anything.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zscir_cli.core import locks
from zscir_cli.core.cache import ArtifactStore

PARTIAL = ".partial"  # where training runs in progress live (jobs.training.loop)
PARTS = ".parts"  # where sharded builds keep their parts (jobs.retrieval.parts)
RESUME = {"stage1": "zscir map-train", "stage2": "zscir compose-train", "backbone": "zscir pretrain"}


def interrupted(store: ArtifactStore) -> list[dict[str, Any]]:
    """Training runs stopped before their last epoch, each with `live` (a process is training it
    now) and `resume` (how to continue it)."""
    part = store.root / PARTIAL
    if not part.is_dir() or not any(part.iterdir()):
        return []  # spares the torch import that reading a run's state needs
    from zscir_cli.jobs.training.loop import interrupted_runs  # torch: only when there are runs

    runs = []
    for run in interrupted_runs(store.root):
        name = f"{run['kind']}-{run['key']}"
        command = run.get("command") or RESUME.get(run["kind"], "zscir")
        runs.append({**run, "path": Path(run["path"]), "live": locks.is_held(store.root, name),
                     "holder": locks.holder(store.root, name),
                     "resume": f"rerun the same '{command}' command with --resume"})
    return runs


def unfinished_builds(store: ArtifactStore) -> list[dict[str, Any]]:
    """Sharded builds whose parts are still in `.parts/`: kind, key, parts written of the layout's,
    and `live` with its `holder` while a process works on it."""
    base = store.root / PARTS
    out = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []:
        kind, _, key = folder.name.partition("-")
        layout: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            layout = json.loads((folder / "layout.json").read_text())
        holder = locks.held_among(store.root, f"parts-{kind}-{key}-")
        out.append({"kind": kind, "key": key, "path": folder, "parts": layout.get("parts"),
                    "written": len(list((folder / "log").glob("part_*.json"))), "live": holder is not None,
                    "holder": holder})
    return out


@dataclass
class Removal:
    """One thing `rm` would delete: its label, its folder and the lock that guards it."""

    label: str
    path: Path
    lock: str | None
    delete: Callable[[], None]


def _delete(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def plan_removal(store: ArtifactStore, keys: list[str], all_: bool, kind: str | None,
                 incomplete: bool) -> tuple[list[Removal], list[tuple[str, str]]]:
    """(what to remove, [(what is kept, why)])."""
    items: list[Removal] = []
    kept: list[tuple[str, str]] = []
    arts = store.list(kind) if all_ else [store.resolve(k) for k in keys]
    for a in arts:
        name = f"{a.kind}-{a.key}"
        if locks.is_held(store.root, name):
            kept.append((a.ref, f"{locks.holder(store.root, name)} is writing it"))
        else:
            items.append(Removal(a.ref, a.path, name, lambda a=a: store.remove(a)))
    if not incomplete:
        return items, kept
    for x in store.leftovers():
        label = f"incomplete write {x.ref} ({x.path.name})"
        if x.live:
            kept.append((label, f"{locks.holder(store.root, f'{x.kind}-{x.key}')} is writing this artifact now"))
        else:
            items.append(Removal(label, x.path, f"{x.kind}-{x.key}" if x.kind else None, lambda p=x.path: _delete(p)))
    for r in interrupted(store):
        label = f"interrupted run {r['kind']}/{r['key']} (epoch {r['epoch']}/{r['epochs'] or '?'})"
        if r["live"]:
            kept.append((label, f"{r['holder']} is training it"))
        else:
            items.append(Removal(label, r["path"], f"{r['kind']}-{r['key']}", lambda p=r["path"]: _delete(p)))
    for b in unfinished_builds(store):
        label = f"unfinished build {b['kind']}/{b['key']} ({b['written']} of {b['parts'] or '?'} parts)"
        if b["live"]:
            kept.append((label, f"{b['holder']} is building it"))
        else:
            items.append(Removal(label, b["path"], f"parts-{b['kind']}-{b['key']}-0", lambda p=b["path"]: _delete(p)))
    return items, kept


def remove(store: ArtifactStore, item: Removal) -> None:
    """Delete `item` under its lock, taken without waiting (`locks.Busy` when a process has
    started on it since the plan was made)."""
    with locks.hold(store.root, item.lock, wait=False) if item.lock else contextlib.nullcontext():
        item.delete()
