"""`zscir pretrain`: the base CLIP of the shapes world."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from zscir_cli.cli.common import make_context, print_json
from zscir_cli.cli.console import err, out
from zscir_cli.cli.options import CacheDir, Device, Force, Json, Seed
from zscir_cli.jobs.training.config import PretrainConfig as D

LABELS = {"caption_r1": "caption retrieval R@1 (image->text)",
          "text_to_image_r1": "image retrieval R@1 (text->image)",
          "colour_acc": "zero-shot colour accuracy", "shape_acc": "zero-shot shape accuracy",
          "size_acc": "zero-shot size accuracy", "background_acc": "zero-shot background accuracy",
          "binding_acc": "colour binding (swapped colours)"}


def pretrain(
    data: Annotated[str, typer.Option(help="Prepared shapes data set to train on.")] = D.data,
    model: Annotated[str, typer.Option(help="Architecture to train from scratch.")] = D.model,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps.")] = D.steps,
    batch_size: Annotated[int, typer.Option(min=2, help="Image-caption pairs per step.")] = D.batch_size,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate (AdamW).")] = D.lr,
    absence_negatives: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Share of the hard negatives that add an object which the fresh scene's caption "
                               "says is absent.")] = D.absence_negatives,
    steps_per_epoch: Annotated[int, typer.Option(
        min=1, help="Steps between checkpoints (what --resume continues from).")] = D.steps_per_epoch,
    seed: Seed = D.seed,
    device: Device = "auto",
    workers: Annotated[int | None, typer.Option(
        min=0, help="Processes that render the next steps' scenes while the model trains on this one (0: "
                    "rendered between steps; the weights are the same), and that encode the val images after "
                    "training [default: 0 for rendering on the CPU, whose cores the training uses, else one "
                    "per spare core, at most 4].",
        show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the interrupted run with these settings.")] = False,
    force: Force = False,
    json_out: Json = False,
    cache_dir: CacheDir = None,
) -> None:
    """Train a small CLIP from scratch on the shapes world (OpenCLIP model classes, ClipLoss).

    Works under torchrun for data-parallel training:
    torchrun --nproc_per_node N -m zscir_cli pretrain ...
    """
    from zscir_cli.jobs.backbones import backbone_spec
    from zscir_cli.jobs.training.pretrain import pretrain as run

    cfg = D(data=data, model=model, steps=steps, batch_size=batch_size, lr=lr, absence_negatives=absence_negatives,
            seed=seed, steps_per_epoch=steps_per_epoch)
    art, built = run(make_context(cache_dir, device, workers), cfg, force=force, resume=resume)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return
    report = art.manifest["eval"]
    spec = backbone_spec(art)
    if json_out:
        print_json({"key": art.key, "checkpoint": spec.pretrained, "built": built, "trained": built, **report})
        return
    err.print(("trained" if built else "found in the cache") + f": {spec.pretrained}")
    from rich.table import Table

    table = Table(title=f"{model} on shapes val ({report['val_images']} images)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, label in LABELS.items():
        if k in report:
            table.add_row(label, f"{report[k]:.1f}%")
    out.print(table)
    err.print(f"use it with: --model {model} --pretrained latest   (or --pretrained {spec.pretrained})")
