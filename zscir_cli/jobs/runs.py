"""Trained runs, found and loaded: Stage I mappers (stage1, pic2word) and Stage II composing
adapters (tscir), by the backbone they were trained on. Training writes them
(`jobs.training`); every command that composes a query reads them here."""

from __future__ import annotations

from collections.abc import Callable

import torch

from zscir_cli.core.cache import Artifact
from zscir_cli.core.errors import UserError
from zscir_cli.jobs.context import Context
from zscir_cli.model.adapters import ComposingAdapters
from zscir_cli.model.backbone import ModelSpec
from zscir_cli.model.mapping import WEIGHTS, Mapper

STAGE1 = "stage1"  # artifact kind of Stage I runs (methods stage1 and pic2word)
STAGE2 = "stage2"  # artifact kind of Stage II runs (method tscir)


def find_run(ctx: Context, kind: str, spec: ModelSpec, run: str | None, where: Callable[[Artifact], bool],
             missing: UserError) -> Artifact:
    """The run named `run` (it must be of `spec`'s backbone), else the newest of `kind` for the
    backbone that `where(artifact)` accepts; `missing` is raised when there is none."""
    if run:
        art = ctx.store.resolve(run if "/" in run else f"{kind}/{run}")
        if art.manifest.get("model") != spec.identity():
            raise UserError(f"{kind} run {art.key} was trained on another backbone than {spec.label()}.",
                            "Use a run of the same --model/--pretrained, or train one for this backbone.")
        return art
    ident = spec.identity()
    found = ctx.store.find(kind, lambda a: a.manifest.get("model") == ident and where(a))
    if not found:
        raise missing
    return found[0]


def find_stage1(ctx: Context, spec: ModelSpec, method: str, run: str | None = None) -> Artifact:
    """The newest Stage I run of this backbone for `method` (pic2word: no VSI, no STA)."""
    flags = " --no-vsi --no-sta" if method == "pic2word" else ""
    missing = UserError(f"No {method} run (Stage I) trained on {spec.label()} in {ctx.store.root}.",
                        f"Train one: zscir map-train --model {spec.name} --pretrained ...{flags}")
    return find_run(ctx, STAGE1, spec, run, lambda a: a.manifest.get("method") == method, missing)


def find_stage2(ctx: Context, spec: ModelSpec, run: str | None = None) -> Artifact:
    missing = UserError(f"No tscir run (Stage II) trained on {spec.label()} in {ctx.store.root}.",
                        "Train one with 'zscir synth' then 'zscir compose-train --triplets FILE', "
                        "or choose another --method (sum, stage1, ...).")
    return find_run(ctx, STAGE2, spec, run, lambda a: True, missing)


def load_mapper(art: Artifact, device: torch.device | str) -> Mapper:
    """The Stage I mapper saved in `art` (a Stage I run, or a Stage II run that tuned it)."""
    try:
        return Mapper.load(art.path, device)
    except (ValueError, TypeError) as e:
        raise UserError(f"{art.kind} run {art.key} cannot be loaded: {e}", "Train it again.") from e


def load_adapters(art: Artifact, device: torch.device | str) -> ComposingAdapters:
    try:
        return ComposingAdapters.load(art.path, device)
    except (ValueError, TypeError) as e:
        raise UserError(f"{art.kind} run {art.key} cannot be loaded: {e}", "Train it again.") from e


def load_stage2(ctx: Context, art: Artifact, device: torch.device | str) -> tuple[Mapper, ComposingAdapters]:
    """A Stage II run's mapper and adapters: the mapper of its Stage I run, or its own tuned copy."""
    if (art.path / WEIGHTS).is_file():
        return load_mapper(art, device), load_adapters(art, device)
    key = art.manifest.get("stage1_run")
    s1 = ctx.store.get(STAGE1, key) if key else None
    if s1 is None:
        raise UserError(f"tscir run {art.key} composes Stage I run {key}, which is not in {ctx.store.root}.",
                        f"Restore stage1/{key} in the cache, or train Stage II again on an existing Stage I "
                        "run: zscir compose-train --triplets FILE.")
    return load_mapper(s1, device), load_adapters(art, device)
