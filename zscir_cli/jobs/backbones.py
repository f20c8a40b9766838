"""Turning --model/--pretrained into a loaded backbone, including our own trained ones.

The model layer raises `BackboneError` (a ValueError that knows which fix applies); this module
turns it into a `UserError` whose advice names the command-line options.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from zscir_cli.core.cache import Artifact
from zscir_cli.core.device import resolve_device
from zscir_cli.core.errors import UserError
from zscir_cli.jobs.context import Context
from zscir_cli.model.backbone import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    Backbone,
    BackboneError,
    ModelSpec,
    check_spec,
    identity_label,
    load_backbone,
    spec_from_identity,
)
from zscir_cli.model.text import TextEncoder

LATEST = "latest"
# a base CLIP that `zscir pretrain` trained: an artifact of this kind, an OpenCLIP checkpoint
KIND = "backbone"
WEIGHTS = "open_clip_model.safetensors"
CONFIG = "open_clip_config.json"
FETCH_HINT = ("Either pass a local checkpoint (--pretrained /path/to/weights.safetensors, or "
              "--model local-dir:/path), or run 'zscir demo', which trains a small CLIP offline.")


def as_user_error(e: BackboneError) -> UserError:
    """The model layer's error, with the options and commands that fix it."""
    if e.kind == "unknown_model":
        return UserError(str(e), "Run 'zscir models' to list every architecture.")
    if e.kind == "unknown_tag":
        return UserError(str(e), "Use one of its tags, a local weights file, or 'none' for random weights.")
    if e.kind == "missing_file":
        return UserError(f"--pretrained file not found: {e.subject}.",
                         "Give the path of a .safetensors, .pt or .bin checkpoint, or a zoo tag.")
    if e.kind == "local_dir":
        return UserError(f"--model {e}", "A local-dir: model is a folder with open_clip_config.json "
                                         "and its weights (open_clip_model.safetensors).")
    if e.kind == "unreachable":
        return UserError(f"{e} This machine cannot download them.", FETCH_HINT)
    if e.kind == "bad_file":
        return UserError(str(e))
    return UserError(str(e), "Check that the checkpoint matches the architecture named by --model.")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    try:
        yield
    except BackboneError as e:
        raise as_user_error(e) from e


def backbone_spec(artifact: Artifact, ctx: Context | None = None) -> ModelSpec:
    """The spec that loads a base CLIP trained by `zscir pretrain` (with `ctx`'s weights memo)."""
    return ModelSpec(artifact.manifest["config"]["model"], str(artifact.path / WEIGHTS), ctx.memo if ctx else None)


def resolve_spec(ctx: Context, model: str | None, pretrained: str | None) -> ModelSpec:
    """Defaults: the paper's ViT-L-14/openai. `--pretrained latest` names the newest checkpoint
    that `zscir pretrain` made for `--model` in this cache."""
    name = model or DEFAULT_MODEL
    with user_errors():
        check_spec(ModelSpec(name, memo=ctx.memo))  # an unknown name is reported before any default is chosen
    if pretrained is None:
        pretrained = DEFAULT_PRETRAINED if model is None else _default_pretrained(ctx, name)
    if pretrained == LATEST:
        found = ctx.store.find(KIND, lambda a: a.manifest["config"].get("model") == name)
        if not found:
            raise UserError(f"No checkpoint of {name} trained by 'zscir pretrain' in {ctx.store.root}.",
                            f"Run 'zscir pretrain --model {name}' (or 'zscir demo') first.")
        return ModelSpec(name, str(found[0].path / WEIGHTS), ctx.memo)
    spec = ModelSpec(name, pretrained, ctx.memo)
    with user_errors():
        check_spec(spec)
    return spec


def _default_pretrained(ctx: Context, name: str) -> str:
    """For our own architectures the natural weights are our own; for the zoo, 'openai'."""
    if name.startswith("zscir-"):
        return LATEST
    if name.startswith(("hf-hub:", "local-dir:")):
        return "none"
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(name)
    if DEFAULT_PRETRAINED in tags:
        return DEFAULT_PRETRAINED
    raise UserError(f"--model {name} needs --pretrained: it has no '{DEFAULT_PRETRAINED}' weights.",
                    (f"Its tags: {', '.join(tags)}; " if tags else "") +
                    "or give a local weights file, or 'none' for random weights.")


def open_backbone(ctx: Context, spec: ModelSpec, device: Any = None) -> Backbone:
    """Load `spec` on `device` (default: the context's), with user errors for bad weights."""
    device = resolve_device(ctx.device) if device is None else device
    with user_errors():
        return load_backbone(spec, cache_dir=ctx.store.root, device=device)


def spec_for_identity(ctx: Context, ident: dict[str, Any]) -> ModelSpec:
    """The spec that rebuilds an artifact's model. Weights files are found by their content:
    the files this machine has hashed before, then the checkpoints of 'zscir pretrain' in this
    cache (wherever the cache lies now)."""
    sha = ident.get("sha256")
    if not sha:
        return replace(spec_from_identity(ident), memo=ctx.memo)
    candidates = [a.path / WEIGHTS for a in ctx.store.find(KIND, lambda a: a.manifest.get(
        "config", {}).get("model") == ident["name"])]
    path = ctx.memo.find(str(sha), candidates)  # type: ignore[union-attr]
    if path is None:
        raise UserError(f"The weights of {identity_label(ident)} are neither in the cache at "
                        f"{ctx.store.root} nor in a file this machine has used before.",
                        "Name them with --model and --pretrained /path/to/weights.")
    return replace(spec_from_identity(ident, Path(path)), memo=ctx.memo)


def text_encoder(backbone: Backbone, placeholder_id: int) -> TextEncoder:
    try:
        return TextEncoder(backbone.model, placeholder_id)
    except ValueError as e:
        raise UserError(str(e), "Choose such an architecture with --model.") from e
