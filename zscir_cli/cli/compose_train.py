"""`zscir compose-train`: Stage II."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zscir_cli.cli.common import make_context, print_run, rank
from zscir_cli.cli.options import (
    CacheDir,
    Device,
    Json,
    Model,
    Pretrained,
    Resume,
    Retrain,
    Seed,
    Workers,
    parse_layers,
)
from zscir_cli.core.errors import UserError
from zscir_cli.jobs.training.config import Stage2Config as D


def compose_train(
    triplets: Annotated[Path, typer.Option(help="Triplet file (JSONL) from 'zscir synth'.")],
    epochs: Annotated[int, typer.Option(min=1)] = D.epochs,
    batch_size: Annotated[int, typer.Option(min=2, help="Global batch of triplets.")] = D.batch_size,
    lr: Annotated[float, typer.Option(min=0.0, help="AdamW learning rate (cosine schedule).")] = D.lr,
    adapter_dim: Annotated[int, typer.Option(min=1, help="Adapter bottleneck width.")] = D.adapter_dim,
    adapter_layers: Annotated[str | None, typer.Option(help="Text blocks followed by an adapter, e.g. "
                                                          "1,2 [default: every block].", show_default=False)] = None,
    embedding_adapter: Annotated[bool, typer.Option(
        help="Also an adapter on the token embeddings, before the first block (off: the paper's "
             "adapters).")] = D.embedding_adapter,
    embedding_adapter_on: Annotated[str, typer.Option(
        help="The token positions the embedding adapter changes: all, pseudo-word (the pseudo-word's "
             "only) or words (every position but the pseudo-word's).")] = D.embedding_positions,
    hard_negatives: Annotated[int | None, typer.Option(
        min=0, help="K mined negatives per query, re-mined every epoch, besides its reference image; 0: in-batch "
                    f"negatives only.  [default: {D.hard_negatives}]", show_default=False)] = None,
    no_hard_negatives: Annotated[bool, typer.Option("--no-hard-negatives", help="Same as --hard-negatives 0: in-batch "
                                                    "negatives only (no reference, no mined images).")] = False,
    false_negative_similarity: Annotated[float, typer.Option(
        help="Also treat as false negatives the images whose caption feature has at least this cosine with the "
             "target's (besides equal captions); above 1 turns it off.")] = D.false_negative_similarity,
    tune_stage1: Annotated[bool, typer.Option("--tune-stage1", help="Unfreeze the Stage I mapper.")] = D.tune_stage1,
    stage1_weight: Annotated[float, typer.Option(
        min=0.0, help="Weight of the Stage I loss (with --tune-stage1).")] = D.stage1_weight,
    temperature: Annotated[float, typer.Option(min=1e-4, help="Temperature tau of the composing loss.")] = D.temperature,
    caption_weight: Annotated[float, typer.Option(
        min=0.0, help="Weight of the caption loss: the composed query also aims at the base CLIP's text feature of "
                      "its target's caption, against the same candidates; 0: the paper's objective.")] = D.caption_weight,
    stage1: Annotated[str | None, typer.Option(help="Stage I run [default: the newest stage1 run of the model].",
                                                  show_default=False)] = None,
    seed: Seed = D.seed,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Leave out triplets whose image is missing.")] = False,
    allow_outside_paths: Annotated[bool, typer.Option(
        "--allow-outside-paths", help="Accept image paths that leave the triplet file's folder (a file you "
                                      "trust).")] = False,
    resume: Resume = False,
    force: Retrain = False,
    model: Model = None,
    pretrained: Pretrained = None,
    json_out: Json = False,
    device: Device = "auto",
    workers: Workers = None,
    cache_dir: CacheDir = None,
) -> None:
    """Stage II: train composing adapters on synthetic triplets with hard negative mining."""
    from zscir_cli.jobs.training.stage2 import compose_train as run

    if no_hard_negatives and hard_negatives:
        raise UserError(f"--no-hard-negatives contradicts --hard-negatives {hard_negatives}.", "Pass one of them.")
    cfg = D(triplets=str(triplets), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, adapter_dim=adapter_dim,
            adapter_layers=parse_layers(adapter_layers), embedding_adapter=embedding_adapter,
            embedding_positions=embedding_adapter_on,
            hard_negatives=0 if no_hard_negatives else (D.hard_negatives if hard_negatives is None else hard_negatives),
            tune_stage1=tune_stage1, false_negative_similarity=false_negative_similarity, stage1_weight=stage1_weight,
            caption_weight=caption_weight, temperature=temperature, stage1=stage1, skip_bad=skip_bad,
            allow_outside_paths=allow_outside_paths, model=model, pretrained=pretrained)
    art = run(make_context(cache_dir, device, workers), None, cfg, resume=resume, force=force)
    if rank() == 0 and art is not None:  # under torchrun only rank 0 reports
        s1 = art.manifest.get("stage1_run")
        print_run(art, "tscir", {"json": json_out, "stage1_run": s1}, note=f" (on Stage I run {s1})")
