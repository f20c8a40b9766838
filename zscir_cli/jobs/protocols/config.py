"""What each protocol command asks for: `zscir eval`, `zscir submit` and `zscir score`, one
dataclass each, whose fields hold every default (the commands take theirs from here). Nothing
here imports torch."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EvalRequest:
    """`zscir eval`: methods on a benchmark split (shapes, fashioniq, cirr, circo), per protocol."""

    dataset: str = "shapes"  # shapes (or a prepared shapes world's name), fashioniq, cirr, circo
    split: str = "val"  # val (every benchmark), test (shapes)
    methods: list[str] = field(default_factory=list)  # [] = every method with a run for the model
    run: str | None = None  # the run of the (single) trained method given [default: the newest]
    weights: list[str] = field(default_factory=list)  # released mappers' files: FILE or METHOD=FILE
    model: str | None = None  # --model/--pretrained as given
    pretrained: str | None = None
    kind: str = "flat"  # the galleries' index kind; flat ranks exactly, as the protocols are defined
    target_caption: bool = True  # shapes: also the target-caption reference row
    wording: str | None = None  # shapes: ask the queries in another phrasing family (train, val, test)
    texts: str | None = None  # shapes: or with these texts (JSONL of query_id, modification)
    html: str | None = None  # also write a page of the first method's worst queries


@dataclass
class SubmitRequest:
    """`zscir submit`: the test server's prediction files (CIRR, CIRCO; FashionIQ in ours)."""

    dataset: str = "cirr"
    split: str | None = None  # [default: the benchmark's test split]
    method: str = "tscir"
    run: str | None = None
    weights: str | None = None  # a released mapper's file (searle, lincir, pic2word)
    out: str = "submission"  # the folder for the files
    model: str | None = None
    pretrained: str | None = None


@dataclass
class ScoreRequest:
    """`zscir score`: prediction files scored offline, as the server would."""

    dataset: str = "cirr"
    predictions: list[str] = field(default_factory=list)
    root: str | None = None  # the data set's folder (annotations are enough) [default: the prepared one]
    split: str = "val"


@dataclass
class BenchmarkRequest:
    """`zscir prepare fashioniq|cirr|circo`: a public benchmark's tree, validated and recorded."""

    name: str  # fashioniq | cirr | circo
    root: str | None = None  # the data set's folder [default: $ZSCIR_DATA/<name>]
    splits: list[str] = field(default_factory=list)  # [] = every split whose annotation files are present
    skip_missing: bool = False  # go on without missing images (their queries are excluded and counted)
    force: bool = False
