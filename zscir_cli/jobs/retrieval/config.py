"""What each retrieval command asks for: `zscir index`, `zscir query` and `query --queries`, one
dataclass each, whose fields hold every default (the commands take theirs from here). Nothing
here imports torch or faiss, so that `--help` answers at once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class IndexRequest:
    """`zscir index`: a gallery (a folder, or NAME[:SPLIT] of a prepared data set) or embeddings
    made elsewhere (clip-retrieval's layout) into an index."""

    gallery: str | None = None
    embeddings: str | None = None
    model: str | None = None  # --model/--pretrained as given
    pretrained: str | None = None
    preprocess: str = "clip"  # clip: the model's own image transform; targetpad: SEARLE's padding first
    batch_size: int = 64  # images per forward pass
    skip_bad: bool = False  # index the readable images, record the unreadable ones
    part_size: int = 100_000  # under torchrun: images per part (rounded up to a multiple of batch_size)
    kind: str = "auto"  # auto | flat | hnsw | ivf | a faiss factory string
    max_memory: str | None = None  # what the index may take, e.g. 8G [default: a quarter of the RAM]
    force: bool = False  # build again even if the cache holds it


@dataclass
class QueryRequest:
    """`zscir query REFERENCE TEXT` (or, with `queries`, every line of a JSONL file)."""

    reference: str | None = None  # an image file, or an id of the index
    text: str | None = None  # the modification
    queries: str | None = None  # `query --queries`: the JSONL file
    method: str = "tscir"  # tscir | stage1 | pic2word | sum | image | text | searle | lincir
    run: str | None = None  # the trained run of the method [default: the newest for the model]
    weights: str | None = None  # a released mapper's file or hf-hub: id (searle, lincir, pic2word)
    top_k: int = 10  # results per query
    index: str | None = None  # the index key [default: the newest built with the model]
    model: str | None = None  # --model/--pretrained as given [default: the index's own model]
    pretrained: str | None = None
    html: str | None = None  # also write a page of the results
    skip_invalid: bool = False  # --queries: answer an invalid line with an error line and go on
