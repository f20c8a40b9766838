"""Galleries: indexed images, from a folder on disk, a list of files or a prepared data set's
split, each with the identity every artifact built on it is keyed by."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from PIL import Image

from zscir_cli.core.errors import UserError
from zscir_cli.data.images import IMAGE_SUFFIXES, load_rgb


def list_images(root: str | Path) -> list[Path]:
    """Every image below `root`, recursively, sorted by relative path."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"Gallery folder not found: {root}.",
                        "Give a folder of images, or a prepared data set such as 'shapes'.")
    files = sorted(p for p in root.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise UserError(f"No images ({', '.join(IMAGE_SUFFIXES)}) found under {root}.",
                        "Point zscir at a folder that holds images.")
    return files


def image_digest(data: bytes) -> str:
    """What identifies an image by its content: the sha256 of its encoded bytes (a copy of a file
    anywhere, or an upload of it, has the same)."""
    return hashlib.sha256(data).hexdigest()


def files_digest(names: list[str], files: list[Path]) -> str:
    """A digest of each file's relative name, size and mtime: editing, adding, removing or
    renaming one image changes it; reading the images is not needed."""
    h = hashlib.sha256()
    for rel, p in zip(names, files):
        st = p.stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


class Gallery:
    """Indexed images: `ids[i]` names image i, `image(i)` loads it as RGB."""

    ids: list[str]
    source: dict[str, Any]  # how the manifest names it (and how to open it again)

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, i: int) -> Image.Image:  # pragma: no cover - abstract
        raise NotImplementedError

    def raw(self, i: int) -> bytes:
        """Image i's encoded bytes, as stored: what `image_digest` identifies it by."""
        raise NotImplementedError  # pragma: no cover - abstract

    def identity(self) -> dict[str, Any]:
        """What makes two galleries the same images, whatever name they were asked by: the key
        of every artifact built on a gallery (features, index) includes it."""
        raise NotImplementedError  # pragma: no cover - abstract


class FolderGallery(Gallery):
    def __init__(self, root: str | Path, files: list[Path] | None = None):
        self.root = Path(root).expanduser().resolve()
        self.files = files if files is not None else list_images(self.root)
        self.ids = [p.relative_to(self.root).as_posix() for p in self.files]
        self.source = {"kind": "folder", "root": str(self.root)}

    def image(self, i: int) -> Image.Image:
        return load_rgb(self.files[i])

    def raw(self, i: int) -> bytes:
        return self.files[i].read_bytes()

    def path(self, i: int) -> Path:
        return self.files[i]

    def identity(self) -> dict[str, Any]:
        return {**self.source, "files": len(self.ids), "digest": files_digest(self.ids, self.files)}


class FilesGallery(Gallery):
    """A list of image files (a triplet set's images, a benchmark's references); ids are the paths
    as given. Identified by the files' common folder and each file's relative path, size and mtime."""

    def __init__(self, paths: list[str], source: dict[str, Any] | None = None):
        self.ids = list(paths)
        self.files = [Path(p).expanduser().resolve() for p in self.ids]
        self.root = Path(os.path.commonpath([str(p.parent) for p in self.files])) if self.files else Path("/")
        self.source = source or {"kind": "files", "root": str(self.root)}

    def image(self, i: int) -> Image.Image:
        return load_rgb(self.files[i])

    def raw(self, i: int) -> bytes:
        return self.files[i].read_bytes()

    def identity(self) -> dict[str, Any]:
        rel = [Path(os.path.relpath(p, self.root)).as_posix() for p in self.files]
        return {"kind": "files", "root": str(self.root), "files": len(self.ids), "digest": files_digest(rel, self.files)}


class DatasetGallery(Gallery):
    """A split of a prepared data set stored with Hugging Face `datasets` (columns id, image)."""

    def __init__(self, dataset, source: dict[str, Any]):
        self.dataset = dataset
        self.ids = list(dataset["id"])
        self.source = source
        self._cells = None  # the image column undecoded, made on first use

    def image(self, i: int) -> Image.Image:
        return load_rgb(self.dataset[i]["image"])

    def raw(self, i: int) -> bytes:
        if self._cells is None:
            import datasets as hf  # heavy: only galleries of prepared data sets need it

            self._cells = self.dataset.cast_column("image", hf.Image(decode=False)).select_columns(["image"])
        cell = self._cells[i]["image"]
        return cell["bytes"] if cell.get("bytes") is not None else Path(cell["path"]).read_bytes()

    def identity(self) -> dict[str, Any]:
        # the prepared artifact, part and split fix the images; the name it was asked by does not
        ds = self.source.get("dataset")
        return {"kind": "dataset", "dataset": ds.get("key") if isinstance(ds, dict) else ds,
                "part": self.source.get("part", "gallery"), "split": self.source.get("split")}
