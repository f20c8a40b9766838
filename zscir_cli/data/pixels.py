"""A pixel limit for every image zscir decodes: decompression bombs are refused by their header.

PIL's own guard (Image.MAX_IMAGE_PIXELS) only warns between 1x and 2x its limit and errors
beyond; zscir's limit is an error at 1x naming the file and its size, checked after
`Image.open` (which reads the header) and before any pixel is decoded.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from PIL import Image

from zscir_cli.core.errors import UserError

MAX_PIXELS_ENV = "ZSCIR_MAX_IMAGE_PIXELS"
DEFAULT_MAX_PIXELS = 64_000_000  # a 8000x8000 photo; a decompression bomb is far larger


class ImageTooLarge(UserError):
    """An image whose header claims more pixels than the limit: refused before decoding."""


def max_image_pixels() -> int | None:
    """The pixel limit: $ZSCIR_MAX_IMAGE_PIXELS (0 for none), else 64 Mpx."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        raise UserError(f"{MAX_PIXELS_ENV}={raw!r} is not a number of pixels.",
                        "Set it to e.g. 200000000, or 0 for no limit.") from None
    return value if value > 0 else None


def _too_large(name: str, size: tuple[int, int] | None, limit: int) -> ImageTooLarge:
    shown = f"{size[0]}x{size[1]} = {size[0] * size[1] / 1e6:.1f} Mpx" if size else "far too large"
    return ImageTooLarge(f"{name} is {shown}, over the limit of {limit / 1e6:g} Mpx that guards "
                         "against decompression bombs.",
                         f"If the image is genuine, raise the limit: {MAX_PIXELS_ENV}=<pixels> "
                         "(0 for none).")


def check_pixels(img: Image.Image, name: str) -> Image.Image:
    """`img` itself, if its size is within the limit."""
    limit = max_image_pixels()
    if limit and img.size[0] * img.size[1] > limit:
        raise _too_large(name, img.size, limit)
    return img


def open_limited(source: Any, name: str) -> Image.Image:
    """Image.open (reads the header only), refusing more pixels than the limit before decoding.

    PIL's own guard only warns between 1x and 2x its limit; ours is an error at 1x."""
    limit = max_image_pixels()
    Image.MAX_IMAGE_PIXELS = limit  # PIL's guard follows ours, for decoders we do not call
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(source)
        except Image.DecompressionBombError:
            raise _too_large(name, None, limit or 0) from None
    return check_pixels(img, name)
