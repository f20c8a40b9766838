"""The worst-queries page of an evaluation: the queries whose first ground truth ranks lowest,
each with its reference, text, first results and a ground truth, as thumbnails."""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from zscir_cli.jobs.pages import figure, write_page


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
