"""`zscir prepare imagefolder`: a user's folder of images (and captions) checked and recorded
as a data set; the images stay where they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zscir_cli.core.cache import Artifact
from zscir_cli.core.errors import UserError
from zscir_cli.data.captions import captions_digest
from zscir_cli.data.galleries import FolderGallery
from zscir_cli.data.imagefolder import check_image, scan_folder
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.datasets.config import FolderRequest
from zscir_cli.jobs.datasets.store import KIND


def prepare_imagefolder(ctx: Context, req: FolderRequest) -> tuple[Artifact, bool]:
    """Validate a user folder and record it as a data set (split 'train'); images stay in place.
    Captions come from `req.captions`, else from the folder's metadata.jsonl/metadata.csv."""
    folder, name, skip_bad, force, captions = req.folder, req.name, req.skip_bad, req.force, req.captions
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise UserError(f"{root} is not a folder." if root.exists() else f"Folder not found: {root}.",
                        "Give the folder that holds the images.")
    items, has_meta = scan_folder(root, Path(captions) if captions is not None else None)
    name = name or root.name
    if name == "shapes":
        raise UserError("'shapes' is the embedded world's name.", "Pass --name with another name.")
    source = FolderGallery(root, [i.path for i in items]).identity()
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
