"""`zscir query`: one reference image plus a modification text against an index."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zscir_cli.core.cache import Artifact
from zscir_cli.core.errors import UserError
from zscir_cli.data.galleries import Gallery
from zscir_cli.data.images import open_image_arg
from zscir_cli.index import search
from zscir_cli.model.backbone import ModelSpec, identity_label
from zscir_cli.jobs.backbones import resolve_spec, spec_for_identity
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.datasets.store import gallery_from_source
from zscir_cli.jobs.retrieval.features import encode_images_with_tokens
from zscir_cli.jobs.retrieval.indexing import KIND as INDEX_KIND
from zscir_cli.jobs.retrieval.indexing import find_index
from zscir_cli.jobs.retrieval.methods import QueryMethod
from zscir_cli.jobs.retrieval.references import gallery_row_of
from zscir_cli.jobs.pages import figure, score_labels, write_page


@dataclass
class Hit:
    rank: int
    id: str
    score: float


@dataclass
class QueryResult:
    reference: str
    text: str
    method: str
    index: Artifact
    model: str
    hits: list[Hit] = field(default_factory=list)
    reference_image: Any = None  # PIL image, for the HTML page
    gallery: Gallery | None = None
    run: str | None = None  # the trained run behind the method, if any
    excluded_reference: str | None = None  # the gallery id left out as being the reference itself

    def to_json(self) -> dict[str, Any]:
        return {"reference": self.reference, "text": self.text, "method": self.method,
                "index": self.index.key, "model": self.model, "run": self.run,
                "excluded_reference": self.excluded_reference,
                "results": [{"rank": h.rank, "id": h.id, "score": round(h.score, 6)}
                            for h in self.hits]}


def resolve_query_index(ctx: Context, spec: ModelSpec | None, index_ref: str | None) -> Artifact:
    """The index named by `index_ref`, else the newest built with `spec`, else (neither given)
    the newest in the cache."""
    if spec is None and not index_ref:
        found = ctx.store.list(INDEX_KIND)
        if not found:
            raise UserError(f"The cache at {ctx.store.root} holds no index.",
                            "Build one with 'zscir index GALLERY' (or run 'zscir demo').")
        art = found[0]
        ctx.reporter.info(f"using the newest index, {art.key} ({art.description}), built with "
                          f"{identity_label(art.manifest.get('model'))}")
        return art
    return find_index(ctx, spec, index_ref)


def index_ids(index: Artifact) -> list[str]:
    """The ids of an index, read without loading its features."""
    return json.loads((index.path / search.IDS).read_text(encoding="utf-8"))


def check_reference(reference: str, ids: list[str] | None = None):
    """The reference as a decoded image when it is a file, None when it is an id of `ids`;
    anything else is a user error, raised before any model is loaded."""
    path = Path(reference).expanduser()
    if path.is_file():
        return open_image_arg(path)
    if path.is_absolute() or reference.startswith(("~", "./", "../")):  # never an id
        raise UserError(f"Image not found: {path}.", "Check the path.")
    if ids is None or reference in ids:
        return None
    if any(s in reference for s in "/\\") or path.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"):
        raise UserError(f"Image not found: {path}.", "Check the path.")
    raise UserError(f"'{reference}' is neither an image file nor an id in the index.",
                    "Give an image path, or an id printed by an earlier query.")


def check_query_text(text: str, method: str) -> None:
    if not text.strip() and method != "image":
        raise UserError("The modification text is empty.",
                        "Say what to change, e.g. \"make it red\" (or use --method image).")


@dataclass
class LoadedIndex:
    """An index read once (opened for `search.rank`, features, ids) with its gallery re-opened, for
    a process that answers many queries (`zscir serve`, `zscir query --queries`)."""
    artifact: Artifact
    faiss: Any  # search.OpenIndex
    features: np.ndarray
    ids: list[str]
    gallery: Gallery | None
    rows: dict[str, int] = field(default_factory=dict)  # id -> row


def load_index(ctx: Context, index: Artifact) -> LoadedIndex:
    opened = search.open_index(index.path)  # flat: exact; other kinds: candidates re-ranked exactly
    features, ids = opened.features, opened.ids
    gallery = gallery_from_source(ctx, index.manifest.get("gallery_source", {}))
    rows: dict[str, int] = {}
    for r, i in enumerate(ids):
        rows.setdefault(i, r)  # the first row of an id, as ids.index finds it
    return LoadedIndex(index, opened, features, ids, gallery, rows)


def run_query(ctx: Context, method: QueryMethod, index: Artifact, reference: str, text: str,
              k: int = 10, reference_image: Any = None, loaded: LoadedIndex | None = None,
              reference_bytes: bytes | None = None) -> QueryResult:
    """Rank the index for (reference, text). `reference` is an image path or an id in the index;
    `reference_image`, when given, is its decoded image (see `check_reference`), and `reference`
    only its name (an upload's file name is never looked up as an id or a path). `loaded`: the
    index already read by `load_index`. `reference_bytes`: an upload's content, compared with the
    gallery's images instead of the file `reference` names."""
    backbone = method.backbone
    check_query_text(text, method.name)
    if k < 1:
        raise UserError(f"--top-k must be at least 1, got {k}.", "Pass --top-k 10, say.")
    loaded = loaded if loaded is not None else load_index(ctx, index)
    features, ids, gallery = loaded.features, loaded.ids, loaded.gallery
    exclude: list[int] = []
    if reference_image is None and reference in loaded.rows and not Path(reference).is_file():
        row = loaded.rows[reference]
        ref_feat = np.asarray(features[row:row + 1], dtype=np.float32)
        # the gallery's own row of the id: an index leaves out unreadable images (--skip-bad), and
        # a folder may have gained files since, so index rows and gallery rows can differ
        ref_img = gallery.image(gallery.ids.index(reference)) if gallery is not None and \
            reference in gallery.ids else None
        exclude = [row]  # never return the reference itself
        if method.needs_tokens and ref_img is None:
            raise UserError(f"The gallery of index {index.key} is gone, so reference '{reference}' "
                            "cannot be re-read for its spatial tokens.", "Give the reference as an image file.")
    else:
        if reference_image is None and not Path(reference).expanduser().exists() \
                and not any(s in reference for s in "/\\."):
            raise UserError(f"'{reference}' is neither an image file nor an id in index {index.key}.",
                            "Give an image path, or an id printed by an earlier query.")
        ref_img = reference_image if reference_image is not None else open_image_arg(reference)
        ref_feat = None
        # the file (or upload) is itself an indexed image
        same = gallery_row_of(reference if reference_bytes is None else reference_bytes, ids, gallery)
        if same is not None:
            exclude = [same]
            ctx.reporter.info(f"the reference is the indexed image {ids[same]}: it is left out of the results")
    ref_tokens = None
    if ref_feat is None or method.needs_tokens:
        v, t = encode_images_with_tokens(backbone, [ref_img], method.grid) if method.needs_tokens else \
            (backbone.encode_images(backbone.preprocess(ref_img).unsqueeze(0)).cpu().numpy(), None)
        ref_feat = v if ref_feat is None else ref_feat
        ref_tokens = t
    query = method.encode(ref_feat, [text], ref_tokens)
    rows, scores = search.rank(loaded.faiss, query, k, exclude=[exclude])
    hits = [Hit(r + 1, ids[i], float(s)) for r, (i, s) in enumerate(zip(rows[0], scores[0])) if i >= 0]
    res = QueryResult(reference, text, method.name, index, backbone.spec.label(), hits, ref_img, gallery)
    res.run = method.run.key if method.run is not None else None
    res.excluded_reference = ids[exclude[0]] if exclude else None
    return res


def index_and_model(ctx: Context, model: str | None, pretrained: str | None,
                    index_ref: str | None) -> tuple[Artifact, ModelSpec]:
    """The index to query and the model to encode with: without --model/--pretrained the index
    names its own model (the newest index when none is named), else the newest index of it."""
    if model is None and pretrained is None:
        art = resolve_query_index(ctx, None, index_ref)
        return art, spec_of_index(ctx, art)
    spec = resolve_spec(ctx, model, pretrained)
    return resolve_query_index(ctx, spec, index_ref), spec


def spec_of_index(ctx: Context, index: Artifact) -> ModelSpec:
    """The model an index was built with, its weights found by their content hash."""
    return spec_for_identity(ctx, index.manifest["model"])


# -- HTML ----------------------------------------------------------------------------------------

def write_html(results: list[QueryResult], path: Path, title: str = "zscir results") -> None:
    """One self-contained page: each query's reference, text and top-k thumbnails."""
    body = []
    for res in results:
        parts = [(f"<section><h2>{html.escape(res.text)}</h2><p>method <b>{html.escape(res.method)}</b>, "
                  f"model {html.escape(res.model)}, index {html.escape(res.index.key)}</p>")]
        if res.reference_image is not None:
            parts.append(figure(res.reference_image, f"reference {Path(res.reference).name}", "ref"))
        for hit, score in zip(res.hits, score_labels([h.score for h in res.hits])):
            img = None
            if res.gallery is not None and hit.id in res.gallery.ids:
                try:
                    img = res.gallery.image(res.gallery.ids.index(hit.id))
                except Exception:  # noqa: BLE001 - a vanished file only loses its thumbnail
                    img = None
            parts.append(figure(img, f"#{hit.rank} {hit.id} {score}"))
        body.append("".join(parts) + "</section>")
    write_page(path, title, body)
