"""Prepared data sets: writing the shapes world to the cache and finding prepared sets again.

A prepared data set is an artifact of kind 'dataset' holding Hugging Face `datasets` folders
(`save_to_disk`): `pairs` (image-caption pairs: train, val), and for composed-retrieval sets
`cir` (queries: val, test) and `gallery` (val, test).
"""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path
from typing import Any

from zscir_cli.core.cache import Artifact, identity
from zscir_cli.core.errors import UserError
from zscir_cli.data import shapes
from zscir_cli.data.images import DatasetGallery, FolderGallery, Gallery
from zscir_cli.pipeline.context import Context

KIND = "dataset"


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()


def prepare_shapes(ctx: Context, cfg: shapes.WorldConfig, force: bool = False) -> tuple[Artifact, bool]:
    """Generate and store the shapes world; returns (artifact, built_now)."""
    config = {"name": "shapes", "generator": shapes.GENERATOR_VERSION, **asdict(cfg)}
    key = ctx.store.key_for(KIND, config)
    return ctx.store.get_or_build(KIND, key, lambda: _build_shapes(ctx, cfg, key, config), force=force,
                                  on_wait=ctx.reporter.info)


def _build_shapes(ctx: Context, cfg: shapes.WorldConfig, key: str, config: dict[str, Any]) -> None:
    import datasets as hf

    image_feature = hf.Image()
    pair_features = hf.Features({"id": hf.Value("string"), "image": image_feature,
                                 "caption": hf.Value("string"), "scene": hf.Value("string")})
    gallery_features = hf.Features({"id": hf.Value("string"), "image": image_feature,
                                    "caption": hf.Value("string"), "scene": hf.Value("string"),
                                    "role": hf.Value("string")})

    def image_rows(records: list[dict], what: str, extra=()) -> dict[str, list]:
        cols: dict[str, list] = {"id": [], "image": [], "caption": [], "scene": []}
        for name in extra:
            cols[name] = []
        for r in ctx.reporter.track(records, f"rendering {what}"):
            cols["id"].append(r["id"])
            cols["image"].append({"bytes": _png(shapes.render_record(cfg, r)), "path": None})
            cols["caption"].append(r["caption"])
            cols["scene"].append(r["scene"].to_json())
            for name in extra:
                cols[name].append(r[name])
        return cols

    counts: dict[str, Any] = {}
    with ctx.store.create(KIND, key, config=config, seed=cfg.seed,
                          description=f"shapes world, seed {cfg.seed}: {cfg.train_pairs} train pairs, "
                                      f"{cfg.cir_queries} CIR queries per split") as out:
        pairs = {}
        for split, n in (("train", cfg.train_pairs), ("val", cfg.val_pairs)):
            records = [shapes.pair_record(cfg, split, i) for i in range(n)]
            pairs[split] = hf.Dataset.from_dict(image_rows(records, f"{split} pairs"),
                                                features=pair_features)
            counts[f"pairs/{split}"] = n
        hf.DatasetDict(pairs).save_to_disk(str(out.path / "pairs"))
        cir, gallery = {}, {}
        for split in ("val", "test"):
            queries, items = shapes.cir_split(cfg, split)
            gallery[split] = hf.Dataset.from_dict(
                image_rows(items, f"{split} gallery", extra=("role",)), features=gallery_features)
            cir[split] = hf.Dataset.from_list(queries)
            counts[f"cir/{split}"] = len(queries)
            counts[f"gallery/{split}"] = len(items)
        hf.DatasetDict(cir).save_to_disk(str(out.path / "cir"))
        hf.DatasetDict(gallery).save_to_disk(str(out.path / "gallery"))
        out.manifest["name"] = "shapes"
        out.manifest["counts"] = counts
        out.manifest["splits"] = {"pairs": ["train", "val"], "cir": ["val", "test"]}


def prepare_imagefolder(ctx: Context, folder: str | Path, name: str | None = None,
                        skip_bad: bool = False, force: bool = False,
                        captions: str | Path | None = None) -> tuple[Artifact, bool]:
    """Validate a user folder and record it as a data set (split 'train'); images stay in place.
    Captions come from `captions`, else from the folder's metadata.jsonl/metadata.csv."""
    from zscir_cli.data.captions import captions_digest
    from zscir_cli.data.imagefolder import scan_folder
    from zscir_cli.data.images import FolderGallery
    from zscir_cli.pipeline.indexing import gallery_identity

    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"{root} is not a folder." if root.exists() else f"Folder not found: {root}.",
                        "Give the folder that holds the images.")
    items, has_meta = scan_folder(root, Path(captions) if captions is not None else None)
    name = name or root.name
    if name == "shapes":
        raise UserError("'shapes' is the embedded world's name.", "Pass --name with another name.")
    source = gallery_identity(FolderGallery(root, [i.path for i in items]))
    # the captions are part of what the set is built from: an edited caption is another data set
    config = {"name": name, "kind": "imagefolder", "source": source, "skip_bad": skip_bad,
              "captions": captions_digest([(i.id, i.caption) for i in items]) if has_meta else None}
    key = ctx.store.key_for(KIND, config)
    return ctx.store.get_or_build(
        KIND, key, lambda: _build_imagefolder(ctx, root, items, config, key, has_meta, skip_bad, name),
        force=force, on_wait=ctx.reporter.info)


def _build_imagefolder(ctx: Context, root: Path, items: list, config: dict[str, Any], key: str,
                       has_meta: bool, skip_bad: bool, name: str) -> None:
    import datasets as hf

    from zscir_cli.data.imagefolder import check_image

    bad = []
    for item in ctx.reporter.track(items, f"checking {len(items)} images"):
        reason = check_image(item.path)
        if reason:
            bad.append((item.id, reason))
    if bad and not skip_bad:
        raise UserError(f"{len(bad)} image(s) could not be read: "
                        + "; ".join(f"{i} ({r})" for i, r in bad[:20]) + (" ..." if len(bad) > 20 else "") + ".",
                        "Fix or remove them, or pass --skip-bad to leave them out.")
    skipped = {i for i, _ in bad}
    good = [it for it in items if it.id not in skipped]
    if not good:
        raise UserError(f"No usable image in {root}.", "Point zscir at a folder of readable images.")
    captioned = sum(bool(it.caption.strip()) for it in good)
    features = hf.Features({"id": hf.Value("string"), "image": hf.Image(), "caption": hf.Value("string")})
    with ctx.store.create(KIND, key, config=config,
                          description=f"image folder {root} ({len(good)} images, {captioned} captioned)") as out:
        ds = hf.Dataset.from_dict({"id": [it.id for it in good],
                                   "image": [{"path": str(it.path), "bytes": None} for it in good],
                                   "caption": [it.caption for it in good]}, features=features)
        hf.DatasetDict({"train": ds}).save_to_disk(str(out.path / "pairs"))
        out.manifest.update({"name": name, "root": str(root), "counts": {"pairs/train": len(good)},
                             "captioned": captioned, "has_metadata": has_meta,
                             "skipped": [{"id": i, "error": r} for i, r in bad],
                             "splits": {"pairs": ["train"]}})


def find_dataset(ctx: Context, name: str) -> Artifact:
    """The newest prepared data set called `name` (or an artifact key)."""
    found = ctx.store.find(KIND, lambda a: a.manifest.get("name") == name or a.key.startswith(name))
    if not found:
        raise UserError(f"No prepared data set '{name}' in {ctx.store.root}.",
                        f"Run 'zscir prepare {name}' first." if name == "shapes" else
                        "Run 'zscir prepare ...' for it first ('zscir cache ls' lists what exists).")
    return found[0]


def load_split(artifact: Artifact, part: str, split: str):
    import datasets as hf

    folder = artifact.path / part / split
    if not folder.is_dir():
        have = sorted(p.name for p in (artifact.path / part).glob("*") if p.is_dir())
        raise UserError(f"Data set {artifact.manifest.get('name')} has no {part} split '{split}'.",
                        f"Available: {', '.join(have) or 'none'}.")
    return hf.load_from_disk(str(folder))


def parse_gallery_arg(value: str) -> tuple[str, str | None]:
    """'shapes' -> ('shapes', None); 'shapes:val' -> ('shapes', 'val')."""
    name, _, split = value.partition(":")
    return name, (split or None)


def resolve_gallery(ctx: Context, value: str) -> Gallery:
    """A folder path, or NAME[:SPLIT] of a prepared data set (default split: test)."""
    path = Path(value).expanduser()
    if path.exists() or "/" in value or value.startswith("."):
        return FolderGallery(path)
    name, split = parse_gallery_arg(value)
    artifact = find_dataset(ctx, name)
    split = split or "test"
    ds = load_split(artifact, "gallery", split)
    return DatasetGallery(ds, {"kind": "dataset", "dataset": identity(artifact), "name": name,
                               "split": split})


def gallery_from_source(ctx: Context, source: dict[str, Any]) -> Gallery | None:
    """Re-open the gallery an index was built from (for thumbnails), or None if it is gone."""
    try:
        if source.get("kind") not in ("folder", "dataset"):  # e.g. embeddings made elsewhere: no images here
            return None
        if source["kind"] == "folder":
            return FolderGallery(source["root"])
        art = ctx.store.get(KIND, source["dataset"]["key"])
        if art is None:
            return None
        return DatasetGallery(load_split(art, "gallery", source["split"]), source)
    except UserError:
        return None
