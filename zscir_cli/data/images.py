"""Reading images: any file, bytes or PIL image as RGB, within the pixel limit."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from zscir_cli.data.pixels import check_pixels, open_limited

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def load_rgb(source: str | Path | bytes | Image.Image) -> Image.Image:
    """Open an image from a path, bytes or PIL image and convert any mode to RGB."""
    if isinstance(source, Image.Image):
        img = check_pixels(source, "an image")
    elif isinstance(source, (bytes, bytearray)):
        img = open_limited(io.BytesIO(source), "an image")
    else:
        img = open_limited(source, str(source))
    img.load()
    return img.convert("RGB")


