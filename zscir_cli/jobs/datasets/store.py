"""Prepared data sets found again: by name or key, a split of one, a gallery named on the
command line, and the gallery an index was built from.

A prepared data set is an artifact of kind 'dataset' holding Hugging Face `datasets` folders
(`save_to_disk`): `pairs` (image-caption pairs: train, val), and for composed-retrieval sets
`cir` (queries: val, test) and `gallery` (val, test).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zscir_cli.core.cache import Artifact, identity
from zscir_cli.core.errors import UserError
from zscir_cli.data.galleries import DatasetGallery, FolderGallery, Gallery
from zscir_cli.jobs.context import Context

KIND = "dataset"


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
