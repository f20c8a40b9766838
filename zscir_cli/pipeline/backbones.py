"""Turning --model/--pretrained into a loaded backbone, including our own trained ones."""

from __future__ import annotations

from zscir_cli.core.device import resolve_device
from zscir_cli.core.errors import UserError
from zscir_cli.model.backbone import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    Backbone,
    ModelSpec,
    check_spec,
    load_backbone,
)
from zscir_cli.pipeline.context import Context

LATEST = "latest"


def resolve_spec(ctx: Context, model: str | None, pretrained: str | None) -> ModelSpec:
    """Defaults: the paper's ViT-L-14/openai. `--pretrained latest` names the newest checkpoint
    that `zscir pretrain` made for `--model` in this cache."""
    from zscir_cli.pipeline.pretrain import KIND, WEIGHTS

    name = model or DEFAULT_MODEL
    check_spec(ModelSpec(name))  # an unknown name is reported before any default is chosen
    if pretrained is None:
        pretrained = DEFAULT_PRETRAINED if model is None else _default_pretrained(ctx, name)
    if pretrained == LATEST:
        found = ctx.store.find(KIND, lambda a: a.manifest["config"].get("model") == name)
        if not found:
            raise UserError(f"No checkpoint of {name} trained by 'zscir pretrain' in {ctx.store.root}.",
                            f"Run 'zscir pretrain --model {name}' (or 'zscir demo') first.")
        return ModelSpec(name, str(found[0].path / WEIGHTS))
    return ModelSpec(name, pretrained)


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


def open_backbone(ctx: Context, spec: ModelSpec) -> Backbone:
    device = resolve_device(ctx.device)
    return load_backbone(spec, cache_dir=ctx.store.root, device=device)
