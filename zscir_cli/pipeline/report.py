"""Self-contained HTML pages: thumbnails inlined as data URIs, user text escaped."""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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
    path = Path(path)
    tmp = path.with_name(f".{path.name}.incomplete")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)


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


@dataclass
class Scored:
    """One query's outcome, for the worst-queries page."""

    qid: str
    reference: str
    text: str
    top: list[str]  # ranked ids
    positives: set[str]

    @property
    def first_hit(self) -> float:
        return next((r for r, i in enumerate(self.top, start=1) if i in self.positives), math.inf)


class ImageSource(Protocol):
    def image(self, item: str) -> object: ...


@dataclass
class WorstQueries:
    """The first method's outcome per query, and where the images are: the worst-queries page."""

    method: str
    scored: list[Scored]
    images: ImageSource

    def write(self, path: Path, title: str) -> None:
        write_worst(path, title, self.scored, self.images.image)


def check_output(path: Path) -> Path:
    """Make an output file's folder (what a user naming a new folder means) and check it can be
    written, before any work: a long run never fails at its last step for a path."""
    from zscir_cli.core.errors import UserError

    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{path} is a folder.", "Give a file name, e.g. results.html.")
    _check_folder(path.parent, UserError)
    return path


def check_output_dir(folder: Path) -> Path:
    """Make an output folder and check it can be written, before any work."""
    from zscir_cli.core.errors import UserError

    folder = Path(folder).expanduser()
    _check_folder(folder, UserError)
    return folder


def _check_folder(folder: Path, error: type) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".zscir-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise error(f"Cannot write to {folder} ({e.strerror or e}).",
                    "Choose a folder you can write, or create it first.") from e


def write_worst(path: Path, title: str, scored: list[Scored], image: Callable[[str], object],
                n: int = 12, shown: int = 5) -> None:
    """The n queries whose first ground truth ranks lowest: reference, text, top results, a ground truth."""
    worst = sorted(scored, key=lambda s: (-s.first_hit, s.qid))[:n]
    body = []
    for s in worst:
        where = "not in the ranking" if math.isinf(s.first_hit) else f"first ground truth at rank {int(s.first_hit)}"
        parts = [f"<section><h2>{html.escape(s.qid)}: {html.escape(s.text)}</h2><p>{where}</p>",
                 figure(_safe(image, s.reference), f"reference {s.reference}", "ref")]
        parts += [figure(_safe(image, i), f"#{r} {i}", "gt" if i in s.positives else "")
                  for r, i in enumerate(s.top[:shown], start=1)]
        gt = sorted(s.positives)[:1]
        parts += [figure(_safe(image, g), f"ground truth {g}", "gt") for g in gt]
        body.append("".join(parts) + "</section>")
    write_page(path, title, body)


def _safe(image: Callable[[str], object], item: str):
    try:
        return image(item)
    except Exception:  # noqa: BLE001 - a missing file loses its thumbnail, not the page
        return None
