"""`zscir serve`: a backbone, its query methods and one or more indexes loaded once, answering
composed queries over HTTP.

`Service` holds what was loaded and does the work (checks, ranking, thumbnails) without knowing
HTTP; `web.app.create_app` puts it behind FastAPI. Every query runs through `run_query`,
so an answer equals what `zscir query --json` prints for the same input. The model and faiss
calls are serialised by one lock (requests are decoded concurrently, ranked one at a time on
the server's event loop); gallery reads have their own lock and run in worker threads, so a
thumbnail waits for at most the query being ranked.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from PIL import UnidentifiedImageError

from zscir_cli.core.errors import UserError
from zscir_cli.data.pixels import ImageTooLarge, max_image_pixels
from zscir_cli.jobs.backbones import open_backbone
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.retrieval.indexing import find_index
from zscir_cli.jobs.retrieval.methods import BASELINES, METHODS, TRAINED, QueryMethod, load_method
from zscir_cli.jobs.retrieval.query import (
    LoadedIndex,
    QueryResult,
    load_index,
    resolve_query_index,
    run_query,
    say_method,
    spec_of_index,
)
from zscir_cli.jobs.retrieval.references import ID, Reference, ReferenceArg, resolve, upload_arg
from zscir_cli.jobs.retrieval.releases import parse_weights
from zscir_cli.model.backbone import Backbone

DEFAULT_METHODS = ("tscir", "stage1", "pic2word", "sum")  # the first one served is the default
THUMB_SIZES = (16, 1024)  # smallest and largest ?size= of a thumbnail
THUMB_CACHE = 512  # encoded thumbnails kept in memory


class ApiError(Exception):
    """A request the service refuses: HTTP status, one sentence, and what to do."""

    def __init__(self, status: int, message: str, hint: str | None = None):
        super().__init__(message)
        self.status, self.message, self.hint = status, message, hint

    def to_json(self) -> dict[str, Any]:
        return {"error": self.message, "hint": self.hint or ""}


@dataclass
class Limits:
    max_upload_mb: float = 20.0  # an uploaded image's bytes
    max_text_chars: int = 1000  # far beyond CLIP's 77 tokens; longer text is a mistake or abuse
    max_k: int = 100  # results per query

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


@dataclass
class Upload:
    """An uploaded reference image: its bytes and the file name the client gave."""
    data: bytes
    filename: str = ""


@dataclass
class Service:
    ctx: Context
    backbone: Backbone
    methods: dict[str, QueryMethod]
    indexes: dict[str, LoadedIndex]  # by key, the default first
    limits: Limits = field(default_factory=Limits)
    model_lock: threading.Lock = field(default_factory=threading.Lock)
    gallery_lock: threading.Lock = field(default_factory=threading.Lock)
    thumbs: OrderedDict = field(default_factory=OrderedDict)  # (index, id, size) -> PNG bytes

    @property
    def default_index(self) -> str:
        return next(iter(self.indexes))

    @property
    def default_method(self) -> str:
        return next((m for m in DEFAULT_METHODS if m in self.methods), "image")

    def info(self) -> dict[str, Any]:
        return {"model": self.backbone.spec.label(), "default_index": self.default_index,
                "default_method": self.default_method,
                "indexes": [{"key": key, "size": len(ix.ids), "kind": _kind(ix), "source": _source(ix),
                             "description": ix.artifact.description, "images": ix.gallery is not None}
                            for key, ix in self.indexes.items()],
                "methods": [{"name": name, "run": m.run.key if m.run is not None else None}
                            for name, m in self.methods.items()],
                "limits": {"max_k": self.limits.max_k, "max_text_chars": self.limits.max_text_chars,
                           "max_upload_mb": self.limits.max_upload_mb,
                           "max_image_pixels": max_image_pixels()}}

    # -- queries ---------------------------------------------------------------------------------

    def query(self, *, text: str, reference: str | None = None, upload: Upload | None = None,
              method: str | None = None, k: str | int | None = None,
              index: str | None = None) -> QueryResult:
        """Check a request, then rank. Every refusal is an ApiError raised before the model runs."""
        loaded = self.index(index)
        qm = self.method(method)
        top_k = self.top_k(k)
        self.check_text(text, qm.name)
        ref = self.reference(loaded, reference, upload)
        with self.model_lock:  # the model and faiss calls never race
            try:
                return run_query(self.ctx, qm, loaded, ref, text, k=top_k)
            except UserError as e:
                raise ApiError(400, e.message, e.hint) from e

    def index(self, key: str | None) -> LoadedIndex:
        key = key or self.default_index
        if key not in self.indexes:
            raise ApiError(400, f"Unknown index '{key}'.", f"This service serves: {', '.join(self.indexes)}.")
        return self.indexes[key]

    def method(self, name: str | None) -> QueryMethod:
        name = name or self.default_method
        if name not in METHODS:
            raise ApiError(400, f"Unknown method '{name}'.", f"Choose one of: {', '.join(self.methods)}.")
        if name not in self.methods and name not in TRAINED:
            raise ApiError(400, f"Method '{name}' is a released mapper that this service was not started with.",
                           f"Choose one of: {', '.join(self.methods)} (or restart it with --weights {name}=FILE).")
        if name not in self.methods:
            raise ApiError(400, f"Method '{name}' has no trained run for {self.backbone.spec.label()}.",
                           f"Choose one of: {', '.join(self.methods)} (or train it and restart the service).")
        return self.methods[name]

    def top_k(self, k: str | int | None) -> int:
        if k is None or k == "":
            return 10
        try:
            value = int(k)
        except (TypeError, ValueError):
            raise ApiError(400, f"k must be a whole number, got '{k}'.", "Send k=10, say.") from None
        if not 1 <= value <= self.limits.max_k:
            raise ApiError(400, f"k must be between 1 and {self.limits.max_k}, got {value}.", "Send k=10, say.")
        return value

    def check_text(self, text: str, method: str) -> None:
        if len(text) > self.limits.max_text_chars:
            raise ApiError(400, f"The modification text is {len(text)} characters long, over the limit of "
                                f"{self.limits.max_text_chars}.", "Say what to change in a sentence.")
        if not text.strip() and method != "image":
            raise ApiError(400, "The modification text is empty.",
                           "Say what to change, e.g. \"make it red\" (or choose the method image).")

    def reference(self, loaded: LoadedIndex, reference: str | None, upload: Upload | None) -> Reference:
        """The request's reference, resolved: an upload (decoded now, so that a bad one is refused
        before the model runs) or an id of the index."""
        if upload is not None and not upload.data and not upload.filename:
            upload = None  # a form's empty file field: no file chosen
        if upload is None and not reference:
            raise ApiError(400, "No reference: the request has neither an image nor a reference id.",
                           "Upload an image (field 'image') or give an id of the index (field 'reference').")
        if upload is not None and reference:
            raise ApiError(400, "Both an image and a reference id were given.", "Send one of them.")
        if upload is None:
            assert reference is not None
            if reference not in loaded.rows:
                raise ApiError(404, f"'{reference}' is not an id in index {loaded.artifact.key}.",
                               "Pick an image of the gallery, or use an id from an earlier answer.")
            return resolve(ReferenceArg(ID, reference), loaded)
        if len(upload.data) > self.limits.max_upload_bytes:
            raise too_large(len(upload.data), self.limits)
        ref = resolve(upload_arg(upload.data, upload_name(upload.filename)), loaded)
        try:
            ref.image()
        except ImageTooLarge as e:
            raise ApiError(413, e.message, "Send a smaller image.") from e
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
            raise ApiError(415, f"The upload '{ref.name}' is not an image that can be read.",
                           "Send a .jpg, .png or .webp file.") from e
        return ref

    # -- gallery images --------------------------------------------------------------------------

    def image_png(self, index: str | None, image_id: str, size: int | None = None) -> bytes:
        """A gallery image of a served index as PNG, whole or fitted into size x size. Only ids
        of the index are looked up; nothing is opened by a path the client gave."""
        loaded = self.index(index)
        if size is not None and not THUMB_SIZES[0] <= size <= THUMB_SIZES[1]:
            raise ApiError(400, f"size must be between {THUMB_SIZES[0]} and {THUMB_SIZES[1]}, got {size}.",
                           "Send size=256, say, or no size for the whole image.")
        if image_id not in loaded.rows:
            raise ApiError(404, f"'{image_id}' is not an id in index {loaded.artifact.key}.",
                           "Use an id from /api/ids or from a query's results.")
        gallery = loaded.gallery
        row = loaded.gallery_rows.get(image_id)
        if gallery is None or row is None:
            raise ApiError(404, f"The image of '{image_id}' is gone: the gallery of index "
                                f"{loaded.artifact.key} cannot be re-read.", "Rebuild the index.")
        key = (loaded.artifact.key, image_id, size)
        with self.gallery_lock:
            if key in self.thumbs:
                self.thumbs.move_to_end(key)
                return self.thumbs[key]
            img = gallery.image(row)
        if size is not None:
            img = img.copy()
            img.thumbnail((size, size))
        buf = io.BytesIO()
        img.save(buf, format="PNG", compress_level=1)
        with self.gallery_lock:
            self.thumbs[key] = buf.getvalue()
            while len(self.thumbs) > THUMB_CACHE:
                self.thumbs.popitem(last=False)
        return buf.getvalue()

    def ids(self, index: str | None, offset: int = 0, limit: int = 60) -> dict[str, Any]:
        loaded = self.index(index)
        if offset < 0 or not 1 <= limit <= 1000:
            raise ApiError(400, f"offset must be >= 0 and limit between 1 and 1000, got {offset} and {limit}.",
                           "Send offset=0&limit=60, say.")
        return {"index": loaded.artifact.key, "total": len(loaded.ids), "offset": offset,
                "ids": loaded.ids[offset:offset + limit]}


def upload_name(filename: str | None) -> str:
    """The base name of an uploaded file, as a label only (never opened): no folders, no control
    characters, at most 200 characters."""
    name = PureWindowsPath(PurePosixPath(filename or "").name).name
    name = "".join(c for c in name if c.isprintable())[:200]
    return name or "upload"


def too_large(size: int, limits: Limits) -> ApiError:
    return ApiError(413, f"The upload is {size / 2**20:.1f} MB, over the limit of {limits.max_upload_mb:g} MB.",
                    "Send a smaller image, or start the service with a larger --max-upload-mb.")


def _kind(loaded: LoadedIndex) -> str:
    """flat, hnsw, ivf or factory: what the index is."""
    return str(loaded.artifact.manifest.get("index", {}).get("kind", "flat"))


def _source(loaded: LoadedIndex) -> str:
    """folder, dataset or embeddings: what the index was built from."""
    return str(loaded.artifact.manifest.get("gallery_source", {}).get("kind", "unknown"))


def load_service(ctx: Context, index_refs: list[str] | None = None, limits: Limits | None = None,
                 weights: list[str] | None = None) -> Service:
    """The indexes named (default: the newest in the cache), their model, and every method that
    model has: baselines always, trained methods when a run exists for it, and the released
    mappers of `weights` (METHOD=FILE)."""
    released = parse_weights([], weights or [])  # checked before anything loads
    arts = [find_index(ctx, None, ref) for ref in index_refs] if index_refs else \
        [resolve_query_index(ctx, None, None)]
    models = {str(a.manifest.get("model")) for a in arts}
    if len(models) > 1:
        raise UserError(f"Indexes {', '.join(a.key for a in arts)} were built with different models; one "
                        "service serves one model.", "Start one service per model (with another --port).")
    backbone = open_backbone(ctx, spec_of_index(ctx, arts[0]))
    methods: dict[str, QueryMethod] = {}
    for name in BASELINES + TRAINED:
        try:
            methods[name] = load_method(ctx, name, backbone)
        except UserError:
            if name not in TRAINED:
                raise
    for name, source in released.items():
        methods[name] = load_method(ctx, name, backbone, weights=source)
        say_method(ctx, methods[name], arts[0])
    indexes: dict[str, LoadedIndex] = {}
    for art in arts:
        ctx.reporter.info(f"loading index {art.key} ({art.description})")
        indexes.setdefault(art.key, load_index(ctx, art))
    return Service(ctx, backbone, methods, indexes, limits or Limits())
