"""A query's reference image, one type for `zscir query`, `query --queries` and `zscir serve`: an id
of the index, an image file, or an upload's bytes.

`reference_arg` checks what a user typed before any index or model is opened (a file must exist
and have an image's header; anything else is taken for an id). `resolve` binds it to a loaded
index: an id must be one of its ids; a file or an upload is one of its images when its bytes'
digest is one the index stored at build time (`encodings.DIGESTS`), found without reading the
gallery. The reference itself is then left out of the results, however it was given. A resolved
reference reads its image on demand (the file, the bytes, or the gallery's own row of an id),
for methods that encode it again rather than take its stored, normalised feature.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import UnidentifiedImageError

from zscir_cli.core.errors import UserError
from zscir_cli.data.galleries import image_digest
from zscir_cli.data.images import IMAGE_SUFFIXES, load_rgb
from zscir_cli.data.pixels import open_limited

ID, FILE, UPLOAD = "id", "file", "upload"
READ_HINT = f"Give a {', '.join(IMAGE_SUFFIXES)} file."


@dataclass(frozen=True)
class ReferenceArg:
    """What the user gave, checked: an id (not yet checked against an index), a file, or bytes."""

    kind: str  # id | file | upload
    name: str  # the id, the path as given, the upload's file name: what the answer calls it
    path: Path | None = None  # a file's resolved path; for an id that reads like a path, where it was looked for
    data: bytes | None = field(default=None, repr=False)  # an upload's bytes


def reference_arg(text: str, base: Path | None = None) -> ReferenceArg:
    """An image file (relative to `base` when given, else to the working folder), checked by its
    header, or else an id. An absolute or ./-relative path that names no file is a user error
    now; a name with a folder or an image suffix may still be an id ('a/img1.jpg')."""
    path = Path(text).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if path.is_file():
        try:
            open_limited(str(path), str(path)).close()
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"Cannot read {path} as an image ({e}).", READ_HINT) from e
        return ReferenceArg(FILE, text, path.resolve())
    if Path(text).is_absolute() or text.startswith(("~", "./", "../")):  # never an id
        raise UserError(f"Image not found: {path}.", "Check the path.")
    looks_like_file = any(s in text for s in "/\\") or path.suffix.lower() in IMAGE_SUFFIXES
    return ReferenceArg(ID, text, path if looks_like_file else None)


def upload_arg(data: bytes, name: str) -> ReferenceArg:
    return ReferenceArg(UPLOAD, name, data=data)


@dataclass
class Reference:
    """A reference bound to a loaded index: `row` is the index row of this very image (left out
    of the results), or None when the image is not in the index."""

    arg: ReferenceArg
    row: int | None
    gallery: Any = None  # the index's gallery re-opened (None when gone), for an id's image
    gallery_row: int | None = None  # the gallery's own row of an id (may differ from the index row)
    _image: Any = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.arg.name

    def image(self):
        """The reference image as RGB, read once; None for an id whose gallery is gone."""
        if self._image is None:
            if self.arg.kind == FILE:
                self._image = _decode(self.arg.path, str(self.arg.path))
            elif self.arg.kind == UPLOAD:
                self._image = load_rgb(self.arg.data)  # the service maps its errors to 413/415
            elif self.gallery is not None and self.gallery_row is not None:
                self._image = self.gallery.image(self.gallery_row)
        return self._image


def _decode(path: Path | None, where: str):
    try:
        return load_rgb(path)
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"Cannot read {where} as an image ({e}).", READ_HINT) from e


def resolve(arg: ReferenceArg, loaded) -> Reference:
    """`arg` bound to `loaded` (a `query.LoadedIndex`); an id it does not hold is a user error."""
    if arg.kind == ID:
        if arg.name not in loaded.rows and arg.path is not None:
            raise UserError(f"Image not found: {arg.path}.", "Check the path.")
        if arg.name not in loaded.rows:
            raise UserError(f"'{arg.name}' is neither an image file nor an id in index {loaded.artifact.key}.",
                            "Give an image path, or an id printed by an earlier query.")
        return Reference(arg, loaded.rows[arg.name], loaded.gallery, loaded.gallery_rows.get(arg.name))
    data = arg.data if arg.kind == UPLOAD else arg.path.read_bytes()  # type: ignore[union-attr]
    return Reference(arg, loaded.digests().get(image_digest(data)))
