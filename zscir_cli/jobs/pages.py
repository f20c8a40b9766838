"""Self-contained HTML pages: thumbnails inlined as data URIs, user text escaped. The query
pages (`retrieval.query`) and the worst-queries page (`protocols.worst`) are built with these."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from zscir_cli.core.durable import write_atomically

STYLE = ("<style>body{font-family:sans-serif;margin:1em}figure{display:inline-block;margin:4px;"
         "text-align:center;font-size:11px}img{display:block;width:128px;"
         "height:128px;object-fit:contain;background:#eee}.px img{image-rendering:pixelated}"
         ".ref img{outline:3px solid #37c}.gt img{outline:3px solid #2a2}section{margin-bottom:1.5em}</style>")
# an image at most this wide is a small render (the shapes lab's are 64 px) shown enlarged: its
# pixels stay sharp; a photo is smoothed when scaled
PIXEL_ART_SIDE = 64


def data_uri(img, size: int = 160) -> str:
    img = img.copy()
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def write_page(path: Path, title: str, body: list[str]) -> None:
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>{STYLE}"
            f"</head><body><h1>{html.escape(title)}</h1>" + "".join(body) + "</body></html>\n")
    write_atomically(Path(path), page.encode("utf-8"))


def figure(img, caption: str, cls: str = "") -> str:
    pic = f"<img src='{data_uri(img)}'>" if img is not None else ""
    if img is not None and max(img.size) <= PIXEL_ART_SIDE:
        cls = f"{cls} px".strip()
    return f"<figure class='{cls}'>{pic}{html.escape(caption)}</figure>"


def score_labels(scores: list[float], digits: int = 4) -> list[str]:
    """Scores to `digits` significant digits, or more where two different neighbouring scores
    would print alike (a ranking whose labels all read 0.022 tells nothing)."""
    labels = [f"{s:.{digits}g}" for s in scores]
    for d in range(digits, 10):
        labels = [f"{s:.{d}g}" for s in scores]
        if all(a != b or x == y for a, b, x, y in zip(labels, labels[1:], scores, scores[1:])):
            break
    return labels


