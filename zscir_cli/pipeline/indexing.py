"""`zscir index`: embed a gallery with a backbone and store features + a faiss index."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from zscir_cli.core.cache import Artifact
from zscir_cli.core.errors import UserError
from zscir_cli.data.images import FolderGallery, Gallery
from zscir_cli.index import search
from zscir_cli.model.backbone import Backbone, ModelSpec
from zscir_cli.pipeline.context import Context
from zscir_cli.pipeline.encode import encode_gallery

KIND = "index"
MAX_NAMED_FAILURES = 20


def gallery_identity(gallery: Gallery) -> dict[str, Any]:
    """What makes two galleries the same: for a folder, its files' names, sizes and times."""
    if isinstance(gallery, FolderGallery):
        h = hashlib.sha256()
        for rel, p in zip(gallery.ids, gallery.files):
            st = p.stat()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return {**gallery.source, "files": len(gallery.ids), "digest": h.hexdigest()[:16]}
    return dict(gallery.source)


@dataclass
class IndexResult:
    artifact: Artifact
    built: bool
    skipped: int


def build_index(ctx: Context, backbone: Backbone, gallery: Gallery, *, batch_size: int = 64,
                skip_bad: bool = False, force: bool = False) -> IndexResult:
    model_id = backbone.spec.identity()
    config = {"gallery": gallery_identity(gallery), "model": model_id, "skip_bad": skip_bad}
    key = ctx.store.key_for(KIND, config)
    found = ctx.store.get(KIND, key)
    if found is not None and not force:
        return IndexResult(found, False, len(found.manifest.get("skipped", [])))
    ctx.store.ensure_writable()  # fail before encoding, not after
    enc = encode_gallery(ctx, backbone, gallery, batch_size=batch_size,
                         description=f"indexing {len(gallery)} images")
    bad = [(gallery.ids[i], err) for i, err in enc.failures]
    if bad and not skip_bad:
        shown = "; ".join(f"{name} ({err})" for name, err in bad[:MAX_NAMED_FAILURES])
        more = f" and {len(bad) - MAX_NAMED_FAILURES} more" if len(bad) > MAX_NAMED_FAILURES else ""
        raise UserError(f"{len(bad)} image(s) could not be read: {shown}{more}.",
                        "Fix or remove them, or pass --skip-bad to index the rest.")
    if not enc.rows:
        raise UserError("No image of the gallery could be read.", "Check the gallery's files.")
    if found is not None:
        ctx.store.remove(found)
    ids = [gallery.ids[i] for i in enc.rows]
    with ctx.store.create(KIND, key, config=config, model=model_id,
                          description=f"{len(ids)} images of {describe_source(gallery.source)} "
                                      f"with {backbone.spec.label()}") as out:
        search.save(out.path, enc.features, ids)
        out.manifest["count"] = len(ids)
        out.manifest["dim"] = int(enc.features.shape[1])
        out.manifest["gallery_source"] = gallery.source
        out.manifest["skipped"] = [{"id": n, "error": e} for n, e in bad]
    return IndexResult(ctx.store.get(KIND, key), True, len(bad))  # type: ignore[arg-type]


def describe_source(source: dict[str, Any]) -> str:
    if source.get("kind") == "folder":
        return source["root"]
    return f"{source.get('name')}:{source.get('split')}"


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
