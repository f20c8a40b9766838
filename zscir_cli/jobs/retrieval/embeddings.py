"""Image embeddings in clip-retrieval's layout, and indexes built from them.

    FOLDER/img_emb/img_emb_{i}.npy          (rows, D) float16, L2-normalised, one row per image
    FOLDER/metadata/metadata_{i}.parquet    the same rows: image_path (and id, when zscir wrote it)

fp16 is what clip-retrieval writes and what every zscir index ranks (features.npy), so an index
built from parts equals the one a single process builds. float32 parts are read too.

`i` is zero-padded to the digits of the part count, as clip-retrieval pads it, so the order of
the file names is the order of the parts for autofaiss and embedding-reader too. A sharded
`zscir index` writes its parts this way; `zscir index --embeddings FOLDER` builds an index from
parts that clip-retrieval (or anything else) made elsewhere.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zscir_cli.core.durable import publish
from zscir_cli.core.errors import UserError
from zscir_cli.data.galleries import files_digest
from zscir_cli.index import search
from zscir_cli.index.ann import FLAT, IndexSpec
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.retrieval.encodings import INDEX, index_config
from zscir_cli.jobs.retrieval.indexing import IndexResult, index_spec
from zscir_cli.model.backbone import Backbone

IMG_DIR, META_DIR = "img_emb", "metadata"
ID_COLUMNS = ("id", "image_path", "url", "key", "__key__")  # the first one present names the rows
CHUNK = 65536  # rows read at once: a part of any size streams through bounded memory
_EMB = re.compile(r"^img_emb_(\d+)\.npy$")
_META = re.compile(r"^metadata_(\d+)\.parquet$")
LAYOUT_HINT = ("Point --embeddings at the folder that holds img_emb/ and metadata/ (the output folder "
               "of clip-retrieval inference).")


def publish_part(folder: Path, name: str, embeddings: Path, ids: list[str], paths: list[str], tmp: Path) -> None:
    """One part: `embeddings` (a finished .npy under a temporary name) renamed into place, then its
    metadata, written under a temporary name and renamed: a crash leaves whole files or none (the
    parts runner logs the part once both are in place)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for sub in (IMG_DIR, META_DIR):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    publish(embeddings, folder / IMG_DIR / f"img_emb_{name}.npy")
    meta_tmp = tmp / f"metadata_{name}.{os.getpid()}.parquet"
    pq.write_table(pa.table({"image_path": pa.array(paths, pa.string()), "id": pa.array(ids, pa.string())}),
                   meta_tmp)
    publish(meta_tmp, folder / META_DIR / f"metadata_{name}.parquet")


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(path).metadata.num_rows)


@dataclass
class Part:
    number: int
    embeddings: Path
    metadata: Path
    rows: int
    dim: int


def scan_parts(folder: Path) -> list[Part]:
    """The parts of an embeddings folder in part order, each checked: a 2-D float array, a
    metadata file with as many rows, and one dimension for all."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"Embeddings folder not found: {folder}.", LAYOUT_HINT)
    embs, metas = _numbered(folder / IMG_DIR, _EMB), _numbered(folder / META_DIR, _META)
    if not embs:
        raise UserError(f"{folder} has no {IMG_DIR}/img_emb_N.npy files (clip-retrieval's layout).", LAYOUT_HINT)
    parts, dims = [], set()
    for number, emb in sorted(embs.items()):
        meta = metas.get(number)
        if meta is None:
            raise UserError(f"{folder / META_DIR} has no metadata_{emb.stem.removeprefix('img_emb_')}.parquet, "
                            f"the metadata of {emb}.",
                            "Copy the metadata folder with the embeddings (clip-retrieval writes it "
                            "beside img_emb/).")
        shape, dtype = _array_header(emb)
        if len(shape) != 2 or dtype.kind != "f":
            raise UserError(f"{emb} holds a {dtype} array of shape {shape}, not (rows, dimension) float "
                            "embeddings.", "Give the img_emb files that clip-retrieval wrote.")
        try:
            rows = _parquet_rows(meta)
        except Exception as e:
            raise UserError(f"{meta} is not a readable parquet file ({type(e).__name__}: {e}).",
                            "Write the metadata part again.") from e
        if rows != shape[0]:
            raise UserError(f"{meta} has {rows} rows but {emb} holds {shape[0]} embeddings.",
                            "Each metadata row describes the embedding of the same row; write both files "
                            "of that part again.")
        parts.append(Part(number, emb, meta, rows, int(shape[1])))
        dims.add(int(shape[1]))
    extra = sorted(set(metas) - set(embs))
    if extra:
        raise UserError(f"{metas[extra[0]]} has no embeddings file ({IMG_DIR}/img_emb_{extra[0]}.npy is missing).",
                        "Copy the whole img_emb folder, or remove the metadata files of parts you left out.")
    if len(dims) > 1:
        raise UserError(f"The parts of {folder} mix dimensions {sorted(dims)}.",
                        "Keep the parts of one model in one folder.")
    return parts


def _numbered(folder: Path, pattern: re.Pattern) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        m = pattern.match(p.name)
        if m is None:
            continue
        n = int(m.group(1))
        if n in found:
            raise UserError(f"{found[n]} and {p} are both part {n}.", "Keep one of them.")
        found[n] = p
    return found


def _array_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable .npy array ({e}).", "Write that part again.") from e
    return tuple(arr.shape), arr.dtype


def read_ids(part: Part) -> list[str]:
    import pyarrow.parquet as pq

    columns = pq.ParquetFile(part.metadata).schema_arrow.names
    column = next((c for c in ID_COLUMNS if c in columns), None)
    if column is None:
        raise UserError(f"{part.metadata} has none of the columns {', '.join(ID_COLUMNS)} (it has: "
                        f"{', '.join(columns[:10])}).", "Add an image_path column naming each row's image.")
    return [str(v) for v in pq.read_table(part.metadata, columns=[column]).column(column).to_pylist()]


def iter_rows(parts: list[Part]) -> Iterator[tuple[Part, int, np.ndarray]]:
    """(part, first row, rows) of every part in order, CHUNK rows at a time, as float32."""
    for part in parts:
        arr = np.load(part.embeddings, mmap_mode="r")
        for s in range(0, part.rows, CHUNK):
            yield part, s, np.asarray(arr[s:s + CHUNK], dtype=np.float32)


def check_ids(parts: list[Part], ids: list[str]) -> None:
    """Every row's id is its own: one that repeats (within a part or across parts) would make two
    rows one image to every query and every page. A user error names both places."""
    first: dict[str, tuple[Part, int]] = {}
    at = [(p, r) for p in parts for r in range(p.rows)]
    for (part, row), i in zip(at, ids):
        if i in first:
            was, was_row = first[i]
            raise UserError(f"{part.metadata}: row {row} has id '{i}', as row {was_row} of {was.metadata} has.",
                            "Give every embedding its own id (image_path or id column).")
        first[i] = (part, row)


def check_rows(part: Part, start: int, x: np.ndarray, ids: list[str], offset: int) -> None:
    """A row that holds a value that is not a finite number, or is all zeros, ranks nothing: a user
    error naming the file, the row and its id (`offset`: the part's first row among `ids`)."""
    bad = ~np.isfinite(x).all(axis=1) | ~(np.abs(x) > 0).any(axis=1)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        what = "holds a value that is not a finite number" if not np.isfinite(x[r]).all() else "is all zeros"
        raise UserError(f"{part.embeddings}: row {start + r} (id '{ids[offset + start + r]}') {what}.",
                        "Write the embeddings of that part again; every row must be a non-zero vector.")


def embeddings_identity(folder: Path, parts: list[Part]) -> dict[str, Any]:
    root = Path(folder).expanduser().resolve()
    files = [p for part in parts for p in (part.embeddings, part.metadata)]
    names = [Path(os.path.relpath(p, root)).as_posix() for p in files]
    return {"kind": "embeddings", "root": str(root), "parts": len(parts), "digest": files_digest(names, files)}


def index_from_embeddings(ctx: Context, backbone: Backbone, folder: str | Path, *, force: bool = False,
                          kind: str | IndexSpec = "flat", max_memory: str | int | None = None) -> IndexResult:
    """An index of `kind` over the parts in `folder` (clip-retrieval's layout), made with
    `backbone`'s model: their dimension must be the model's, since queries are encoded with it."""
    parts = scan_parts(Path(folder))
    want = backbone.embed_dim
    if parts[0].dim != want:
        raise UserError(f"{parts[0].embeddings} holds {parts[0].dim}-dimensional embeddings, but "
                        f"{backbone.spec.label()} makes {want}-dimensional ones.",
                        "Pass the --model and --pretrained the embeddings were made with.")
    ident = embeddings_identity(Path(folder), parts)
    total = sum(p.rows for p in parts)
    spec = index_spec(kind, total, want, max_memory)
    icfg = index_config(backbone, ident, False, spec)
    key = ctx.store.key_for(INDEX, icfg)
    found = ctx.store.get(INDEX, key)
    if found is not None and not force:
        return IndexResult(found, False, 0, dict(found.manifest.get("timings_s", {})))
    ctx.store.ensure_writable()
    with ctx.store.lock(INDEX, key, on_wait=ctx.reporter.info):
        found = ctx.store.get(INDEX, key)
        if found is not None and force:
            ctx.store.remove(found)
        elif found is not None:
            return IndexResult(found, False, 0, dict(found.manifest.get("timings_s", {})))
        t = time.perf_counter()
        ids = [i for p in parts for i in read_ids(p)]  # every part's ids before any writing
        with ctx.store.create(INDEX, key, config=icfg, model=icfg["model"],
                              description=f"{total} embeddings from {ident['root']} with {backbone.spec.label()}, "
                                          f"{spec.kind} index ({spec.factory})") as out:
            renormalised = build_index(out.path, parts, ids, total, ctx, spec)
            out.manifest.update({"count": total, "dim": want, "gallery_source": ident, "skipped": [],
                                 "renormalised_rows": renormalised, "index": spec.to_json(),
                                 "timings_s": {"read_decode": 0.0, "encode": 0.0,
                                               "write": round(time.perf_counter() - t, 3)}})
    art = ctx.store.get(INDEX, key)
    assert art is not None
    return IndexResult(art, True, 0, dict(art.manifest["timings_s"]))


def build_index(path: Path, parts: list[Part], ids: list[str], total: int, ctx: Context,
                spec: IndexSpec = FLAT, normalise: bool = True) -> int:
    """Stream the parts into an index of `spec` at `path`, each row checked (`check_ids`,
    `check_rows`: a user error, and nothing is kept); rows whose norm is off 1 by more than fp16
    rounding are L2-normalised (the index ranks by inner product). Returns how many were."""
    check_ids(parts, ids)
    offsets = dict(zip((p.number for p in parts), np.cumsum([0] + [p.rows for p in parts]).tolist()))
    writer = search.IndexWriter(path, total, spec, ctx.reporter.info)
    fixed = 0
    with ctx.reporter.task(f"indexing {total} embeddings from {len(parts)} part(s)", total=total) as task:
        for part, start, x in iter_rows(parts):
            check_rows(part, start, x, ids, offsets[part.number])
            if normalise:
                norms = np.linalg.norm(x, axis=1, keepdims=True)
                off = (np.abs(norms - 1.0) > 1e-2) & (norms > 0)
                if off.any():
                    fixed += int(off.sum())
                    x = np.where(off, x / np.where(norms > 0, norms, 1.0), x)
            writer.append(x)
            task.advance(len(x))
    writer.close(ids)
    return fixed
