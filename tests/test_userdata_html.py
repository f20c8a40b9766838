"""HTML pages: scores that tell neighbours apart, photos smoothed and small renders sharp."""

from __future__ import annotations

import re
from types import SimpleNamespace

from PIL import Image

from zscir_cli.jobs.pages import STYLE, figure, score_labels
from zscir_cli.jobs.retrieval.query import Hit, QueryResult, write_html


def test_scores_show_four_significant_digits_or_enough_to_differ():
    assert score_labels([0.02213, 0.02209, 0.0215, 0.0215]) == ["0.02213", "0.02209", "0.0215", "0.0215"]
    assert score_labels([0.9, 0.0221301, 0.0221302]) == ["0.9", "0.0221301", "0.0221302"]
    assert score_labels([]) == []


def test_only_small_renders_are_pixelated():
    assert "image-rendering:pixelated" in STYLE and re.search(r"(^|})img\{[^}]*pixelated", STYLE) is None
    assert "class='ref px'" in figure(Image.new("RGB", (64, 64)), "r", "ref")
    assert "class=''" in figure(Image.new("RGB", (640, 480)), "photo")
    assert "class='gt'" in figure(None, "gone", "gt")


def test_query_page_labels(tmp_path):
    gallery = SimpleNamespace(ids=["a.jpg", "b.jpg"], image=lambda i: Image.new("RGB", (400, 300), "red"))
    res = QueryResult("ref.jpg", "make it red", "image", SimpleNamespace(key="k"), "m",
                      [Hit(1, "a.jpg", 0.022134), Hit(2, "b.jpg", 0.022131)],
                      Image.new("RGB", (400, 300)), gallery)
    page = tmp_path / "p.html"
    write_html([res], page)
    text = page.read_text()
    assert "#1 a.jpg 0.022134" in text and "#2 b.jpg 0.022131" in text
    assert " px'" not in text
