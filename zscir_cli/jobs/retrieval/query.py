"""`zscir query`: one reference image plus a modification text against an index."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zscir_cli.core.cache import Artifact
from zscir_cli.core.durable import write_atomically
from zscir_cli.core.errors import UserError
from zscir_cli.data.galleries import Gallery, image_digest
from zscir_cli.index import search
from zscir_cli.jobs.backbones import open_backbone, resolve_spec, spec_for_identity
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.datasets.store import gallery_from_source
from zscir_cli.jobs.pages import figure, score_labels, write_page
from zscir_cli.jobs.retrieval.config import QueryRequest
from zscir_cli.jobs.retrieval.encodings import DIGESTS
from zscir_cli.jobs.retrieval.features import encode_images_with_tokens
from zscir_cli.jobs.retrieval.indexing import KIND as INDEX_KIND
from zscir_cli.jobs.retrieval.indexing import find_index
from zscir_cli.jobs.retrieval.methods import QueryMethod, check_method, load_method
from zscir_cli.jobs.retrieval.references import ID, Reference, reference_arg, resolve
from zscir_cli.model.backbone import ModelSpec, identity_label


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


def check_query_text(text: str, method: str) -> None:
    if not text.strip() and method != "image":
        raise UserError("The modification text is empty.",
                        "Say what to change, e.g. \"make it red\" (or use --method image).")


@dataclass
class LoadedIndex:
    """An index read once (opened for `search.rank`, features, ids) with its gallery re-opened:
    what every query of `zscir query`, `query --queries` and `zscir serve` ranks against."""
    ctx: Context
    artifact: Artifact
    faiss: Any  # search.OpenIndex
    features: np.ndarray
    ids: list[str]
    gallery: Gallery | None
    rows: dict[str, int] = field(default_factory=dict)  # id -> index row (the first, as ids.index finds)
    # id -> the gallery's own row: a folder re-listed since indexing, or images left out with
    # --skip-bad, make the two differ
    gallery_rows: dict[str, int] = field(default_factory=dict)
    _digests: dict[str, int] | None = field(default=None, repr=False)

    def digests(self) -> dict[str, int]:
        """image digest -> index row (`references.resolve` reads it), from the index's digests
        file; an index built before digests were kept gets one, from its gallery, once."""
        if self._digests is None:
            self._digests = {}
            for row, digest in enumerate(index_digests(self.ctx, self.artifact, self.gallery, self.ids,
                                                       self.gallery_rows)):
                if digest:
                    self._digests.setdefault(digest, row)
        return self._digests


def load_index(ctx: Context, index: Artifact) -> LoadedIndex:
    opened = search.open_index(index.path)  # flat: exact; other kinds: candidates re-ranked exactly
    features, ids = opened.features, opened.ids
    gallery = gallery_from_source(ctx, index.manifest.get("gallery_source", {}))
    rows: dict[str, int] = {}
    for r, i in enumerate(ids):
        rows.setdefault(i, r)
    own = {i: r for r, i in reversed(list(enumerate(gallery.ids)))} if gallery is not None else {}
    return LoadedIndex(ctx, index, opened, features, ids, gallery, rows, own)


def index_digests(ctx: Context, index: Artifact, gallery: Gallery | None, ids: list[str],
                  gallery_rows: dict[str, int]) -> list[str | None]:
    """Each index row's image digest. An index made before they were kept (no digests file) has
    its gallery's images hashed once and the file added to it (said in one line); with the
    gallery gone, or embeddings made elsewhere, no image can be recognised."""
    path = index.path / DIGESTS
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    if gallery is None:
        return []
    ctx.reporter.info(f"index {index.key} predates image digests: hashing its {len(ids)} images once, to "
                      "recognise a reference that is one of them (rebuilding it with --force does the same)")
    out = [image_digest(gallery.raw(gallery_rows[i])) if i in gallery_rows else None
           for i in ctx.reporter.track(ids, "hashing the indexed images")]
    try:
        write_atomically(path, json.dumps(out).encode())
    except OSError:  # a read-only cache: this process keeps them in memory
        pass
    return out


def run_query(ctx: Context, method: QueryMethod, loaded: LoadedIndex, ref: Reference, text: str,
              k: int = 10) -> QueryResult:
    """Rank the index for (reference, text); the reference itself is never among the results."""
    backbone = method.backbone
    check_query_text(text, method.name)
    if k < 1:
        raise UserError(f"--top-k must be at least 1, got {k}.", "Pass --top-k 10, say.")
    exclude = [ref.row] if ref.row is not None else []
    if ref.arg.kind != ID and ref.row is not None:
        ctx.reporter.info(f"the reference is the indexed image {loaded.ids[ref.row]}: it is left out of the results")
    ref_tokens = None
    if method.raw_reference:  # a released mapper: the feature before normalisation, which no index keeps
        image = ref.image()
        if image is None:
            raise UserError(f"The gallery of index {loaded.artifact.key} is gone, so reference '{ref.name}' "
                            f"cannot be re-read for {method.name}.", "Give the reference as an image file.")
        ref_feat = backbone.encode_images(backbone.preprocess(image).unsqueeze(0), normalise=False).cpu().numpy()
    elif ref.arg.kind == ID and not method.needs_tokens:
        ref_feat = np.asarray(loaded.features[ref.row:ref.row + 1], dtype=np.float32)  # type: ignore[operator]
    else:
        image = ref.image()
        if image is None:
            raise UserError(f"The gallery of index {loaded.artifact.key} is gone, so reference '{ref.name}' "
                            "cannot be re-read for its spatial tokens.", "Give the reference as an image file.")
        if method.needs_tokens:
            ref_feat, ref_tokens = encode_images_with_tokens(backbone, [image], method.grid)
        else:
            ref_feat = backbone.encode_images(backbone.preprocess(image).unsqueeze(0)).cpu().numpy()
    query = method.encode(ref_feat, [text], ref_tokens)
    rows, scores = search.rank(loaded.faiss, query, k, exclude=[exclude])
    hits = [Hit(r + 1, loaded.ids[i], float(s)) for r, (i, s) in enumerate(zip(rows[0], scores[0])) if i >= 0]
    res = QueryResult(ref.name, text, method.name, loaded.artifact, backbone.spec.label(), hits, ref.image(),
                      loaded.gallery)
    res.run = method.run.key if method.run is not None else None
    res.excluded_reference = loaded.ids[ref.row] if ref.row is not None else None
    return res


def answer(ctx: Context, req: QueryRequest) -> QueryResult:
    """`zscir query REFERENCE TEXT`: everything the user typed checked before an index or a model
    is opened, then ranked (and, with `req.html`, a page written)."""
    check_method(req.method, req.weights)
    check_query_text(req.text or "", req.method)
    arg = reference_arg(req.reference or "")
    art, spec = index_and_model(ctx, req.model, req.pretrained, req.index)
    loaded = load_index(ctx, art)
    ref = resolve(arg, loaded)  # an id the index lacks fails here, before the model loads
    if req.index is not None or req.model is not None or req.pretrained is not None:
        ctx.reporter.info(f"using index {art.key} ({art.description})")
    qm = load_method(ctx, req.method, open_backbone(ctx, spec), req.run, req.weights)
    say_method(ctx, qm, art)
    res = run_query(ctx, qm, loaded, ref, req.text or "", k=req.top_k)
    if req.html is not None:
        write_html([res], Path(req.html), title=f"zscir: {req.text}")
        ctx.reporter.info(f"wrote {req.html}")
    return res


def say_method(ctx: Context, method: QueryMethod, index: Artifact) -> None:
    """One line on the run or file behind the method, and one when the index read its images
    otherwise than the method's release did."""
    if method.run is not None:
        ctx.reporter.info(f"using {method.name} run {method.run.key}")
    if method.released is not None and method.weights is not None:
        ctx.reporter.info(f"using released {method.released.release.title} weights {method.weights['name']}")
        wanted = method.backbone.spec.preprocess
        had = (index.manifest.get("model") or {}).get("preprocess", "clip")
        if had != wanted:
            ctx.reporter.info(f"index {index.key} read its images with {had} preprocessing; "
                              f"{method.released.release.title} reads them with {wanted}: for its published setting, "
                              f"index the gallery with 'zscir index ... --preprocess {wanted}'")


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
