"""`zscir index`: a gallery's features and exact faiss index, and finding indexes again."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zscir_cli.core.cache import Artifact
from zscir_cli.core.errors import UserError
from zscir_cli.data.images import Gallery
from zscir_cli.model.backbone import Backbone, ModelSpec
from zscir_cli.pipeline.context import Context
from zscir_cli.pipeline.galleries import INDEX as KIND
from zscir_cli.pipeline.galleries import describe_source, encode_once

__all__ = ["KIND", "IndexResult", "describe_source", "find_index", "gallery_identity", "index_gallery"]


def gallery_identity(gallery: Gallery) -> dict[str, Any]:
    """What makes two galleries the same (see `Gallery.identity`)."""
    return gallery.identity()


@dataclass
class IndexResult:
    artifact: Artifact
    built: bool
    skipped: int
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage of the pass that built it


def index_gallery(ctx: Context, backbone: Backbone, gallery: Gallery, *, batch_size: int = 64,
                  skip_bad: bool = False, force: bool = False, grid: int | None = None) -> IndexResult:
    """The gallery's index, built once per (model, gallery); with `grid`, the visual tokens of the
    same pass are kept as a features artifact too (what trained query methods need)."""
    enc = encode_once(ctx, backbone, gallery, index=True, grid=grid, skip_bad=skip_bad, force=force,
                      batch_size=batch_size)
    art = enc.index
    assert art is not None
    return IndexResult(art, art.ref in enc.built, enc.skipped, dict(art.manifest.get("timings_s", {})))


def find_index(ctx: Context, spec: ModelSpec | None, ref: str | None = None) -> Artifact:
    """The index named by `ref`, else the newest one built with `spec`'s model."""
    if ref:
        art = ctx.store.resolve(ref if "/" in ref else f"{KIND}/{ref}")
        if spec is not None and art.manifest.get("model") != spec.identity():
            raise UserError(
                f"Index {art.key} was built with {_label(art.manifest.get('model'))}, "
                f"not {spec.label()}.",
                "Query it with the model it was built with (leave out --model), or build an index "
                "with this model: zscir index GALLERY --model ... --pretrained ...")
        return art
    assert spec is not None
    ident = spec.identity()
    found = ctx.store.find(KIND, lambda a: a.manifest.get("model") == ident)
    if not found:
        others = ctx.store.list(KIND)
        extra = (f" The cache has indexes for: {', '.join(sorted({_label(a.manifest.get('model')) for a in others}))}."
                 if others else "")
        raise UserError(f"No index built with {spec.label()}.{extra}",
                        "Build one with 'zscir index GALLERY' and the same --model/--pretrained, "
                        "or name one with --index.")
    return found[0]


def _label(model: dict | None) -> str:
    if not model:
        return "an unknown model"
    return ModelSpec(model["name"], model.get("pretrained")).label()
