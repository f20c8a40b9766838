"""`zscir synth`: synthetic triplets from a corpus's captions (or the shapes world's scene
graphs), written as a triplet file (`triplet_files`) for Stage II."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from zscir_cli.core.errors import UserError
from zscir_cli.data import shapes
from zscir_cli.data.captions import read_captions
from zscir_cli.data.paths import OUTSIDE_HINT, inside
from zscir_cli.data.shapes.triplets import scene_triplets
from zscir_cli.data.synth import MATCHES, SynthReport, template_triplets
from zscir_cli.jobs.backbones import open_backbone, resolve_spec
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.datasets.store import find_dataset, load_split
from zscir_cli.jobs.training.config import SynthRequest
from zscir_cli.jobs.training.triplet_files import write_triplets
from zscir_cli.model.backbone import Backbone


@dataclass
class Corpus:
    ids: list[str]
    captions: list[str]
    scenes: list | None  # shapes scenes, for --mode scene
    dataset_key: str | None  # ids are rows of this data set's train split; else paths


def corpus_from_dataset(ctx: Context, name: str) -> Corpus:
    art = find_dataset(ctx, name)
    ds = load_split(art, "pairs", "train")
    caps = list(ds["caption"])
    scenes = [shapes.Scene.from_json(s) for s in ds["scene"]] if "scene" in ds.column_names else None
    return Corpus(list(ds["id"]), caps, scenes, art.key)


def corpus_from_file(path: Path, allow_outside: bool = False) -> Corpus:
    """A captions file (see `data.captions`: JSONL, CSV or TSV, image/caption or file_name/text);
    image paths are relative to the file, inside its folder unless `allow_outside`, and every
    image must exist: a triplet is never written to an image that is not there."""
    path = Path(path).expanduser()
    folder = Path(os.path.normpath(path.parent.absolute()))
    ids, caps, missing, lines = [], [], [], {}
    for row in read_captions(path):
        found = inside(folder, row.image)
        if found is None and not allow_outside:
            raise UserError(f"{path}:{row.line}: image '{row.image}' lies outside the captions file's folder "
                            f"{folder}.", OUTSIDE_HINT)
        # kept unresolved, so that a linked image folder stays inside the file's folder when written
        image = Path(os.path.normpath(path.parent.absolute() / Path(row.image).expanduser()))
        if str(image) in lines:
            raise UserError(f"{path}:{row.line}: '{row.image}' already has a caption on line {lines[str(image)]}.",
                            "Keep one caption per image.")
        lines[str(image)] = row.line
        if not image.is_file():
            missing.append(f"line {row.line}: {row.image}")
        ids.append(str(image))
        caps.append(row.caption)
    if missing:
        raise UserError(f"{path} names {len(missing)} image(s) that do not exist ("
                        + "; ".join(missing[:10]) + ("; ..." if len(missing) > 10 else "") + ").",
                        "Fix those paths (relative to the captions file) or remove their lines.")
    return Corpus(ids, caps, None, None)


def check_options(mode: str, match: str) -> None:
    """Refuse an unknown --mode or --match before any model loads."""
    if mode not in ("template", "scene"):
        raise UserError(f"Unknown mode '{mode}'.", "Use template or scene.")
    if match not in MATCHES:
        raise UserError(f"Unknown --match '{match}'.", f"Use {' or '.join(MATCHES)}.")


def synthesise(ctx: Context, corpus: Corpus, *, mode: str, max_triplets: int, seed: int,
               min_similarity: float, embed=None, match: str = "words") -> SynthReport:
    if mode == "scene":
        if corpus.scenes is None:
            raise UserError("--mode scene needs scene graphs, which only the shapes world has.",
                            "Use --mode template, or --data shapes.")
        return scene_triplets(corpus.ids, corpus.scenes, corpus.captions, max_triplets=max_triplets, seed=seed)
    check_options(mode, match)
    with ctx.reporter.task("matching edited captions", total=None) as task:
        return template_triplets(corpus.ids, corpus.captions, embed, max_triplets=max_triplets, seed=seed,
                                 min_similarity=min_similarity, match=match, progress=lambda n: task.advance(n))


@dataclass
class SynthOutcome:
    report: SynthReport
    out: Path
    outside: int  # rows that name an image outside the file's folder (compose-train then needs a flag)


def make_triplets(ctx: Context, req: SynthRequest) -> SynthOutcome:
    """`zscir synth`: the corpus read and checked, its triplets made and written to `req.out`."""
    check_options(req.mode, req.match)  # before any model loads
    if (req.data is None) == (req.captions is None):
        raise UserError("Give exactly one of --data and --captions.", "e.g. --data shapes, or --captions captions.jsonl.")
    corpus = corpus_from_dataset(ctx, req.data) if req.data else \
        corpus_from_file(Path(req.captions), allow_outside=req.allow_outside)  # type: ignore[arg-type]
    embed = None
    if req.mode == "template" and not req.exact_only:
        embed = caption_embedder(open_backbone(ctx, resolve_spec(ctx, req.model, req.pretrained)))
    report = synthesise(ctx, corpus, mode=req.mode, max_triplets=req.max_triplets, seed=req.seed,
                        min_similarity=req.min_similarity, embed=embed, match=req.match)
    if not report.triplets:
        raise UserError("No triplet could be made: every edit was rejected ("
                        + ", ".join(f"{r}: {n}" for r, n in report.rejected.most_common(3)) + ").",
                        "Lower --min-similarity, or use a larger captioned corpus.")
    out = Path(req.out)
    return SynthOutcome(report, out, write_triplets(report, out, corpus.dataset_key))


def caption_embedder(backbone: Backbone):
    """Texts -> (N, D) normalised text features of `backbone`, in batches: what nearest-caption
    targets are matched with."""
    def embed(texts: list[str]):
        return torch.cat([backbone.encode_texts(texts[i:i + 512]).cpu() for i in range(0, len(texts), 512)]).numpy()

    return embed
