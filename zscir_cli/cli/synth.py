"""`zscir synth`: synthetic triplets from captions (template) or scene graphs (scene)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zscir_cli.cli.common import make_context, print_json
from zscir_cli.cli.console import err, out, warn
from zscir_cli.cli.options import CacheDir, Device, Json, Model, Pretrained, Seed
from zscir_cli.data.captions import FORMAT_HELP


def _embedder(ctx, model: str | None, pretrained: str | None):
    """The backbone's caption embedding, for nearest-caption targets."""
    from zscir_cli.jobs.backbones import open_backbone, resolve_spec

    backbone = open_backbone(ctx, resolve_spec(ctx, model, pretrained))

    def embed(texts: list[str]):
        import torch

        return torch.cat([backbone.encode_texts(texts[i:i + 512]).cpu() for i in range(0, len(texts), 512)]).numpy()

    return embed


def synth(
    data: Annotated[str | None, typer.Option(help="Prepared image-caption data set (its train split).",
                                                show_default=False)] = None,
    captions: Annotated[Path | None, typer.Option(help=f"Captions file: {FORMAT_HELP}; every image must "
                                                     "exist.", show_default=False)] = None,
    out_path: Annotated[Path, typer.Option("--out", help="Triplet file to write (JSONL).")] = Path("synth.jsonl"),
    max_triplets: Annotated[int, typer.Option(min=1, help="At most this many, balanced over edit types.")] = 5000,
    mode: Annotated[str, typer.Option(help="template (captions only) or scene (shapes scene graphs, exact).")] = "template",
    seed: Seed = 0,
    min_similarity: Annotated[float, typer.Option(min=-1.0, max=1.0, help="Nearest-caption targets below this "
                                                  "text similarity are rejected.")] = 0.9,
    match: Annotated[str, typer.Option(
        help="How a nearest caption is accepted as the target: words (it shows the new value and not the old "
             "one: the paper's low-quality recipe) or content (it names the same objects and background as the "
             "edited caption, up to word order).")] = "words",
    exact_only: Annotated[bool, typer.Option("--exact-only", help="Only exact caption matches: no text "
                                             "embedding, no model.")] = False,
    allow_outside: Annotated[bool, typer.Option(
        "--allow-outside-paths", help="Accept image paths of --captions that lie outside its folder "
                                      "(absolute, or climbing out with '..').")] = False,
    model: Model = None,
    pretrained: Pretrained = None,
    json_out: Json = False,
    device: Device = "auto",
    cache_dir: CacheDir = None,
) -> None:
    """Write (reference, modification, target) triplets by template edits, without a language model."""
    from zscir_cli.core.errors import UserError
    from zscir_cli.jobs.training.triplets import (
        check_options,
        corpus_from_dataset,
        corpus_from_file,
        synthesise,
        write_triplets,
    )

    ctx = make_context(cache_dir, device)
    check_options(mode, match)
    if (data is None) == (captions is None):
        raise UserError("Give exactly one of --data and --captions.",
                        "e.g. --data shapes, or --captions captions.jsonl.")
    corpus = corpus_from_dataset(ctx, data) if data else \
        corpus_from_file(captions, allow_outside=allow_outside)  # type: ignore[arg-type]
    embed = _embedder(ctx, model, pretrained) if mode == "template" and not exact_only else None
    report = synthesise(ctx, corpus, mode=mode, max_triplets=max_triplets, seed=seed,
                        min_similarity=min_similarity, embed=embed, match=match)
    if not report.triplets:
        raise UserError("No triplet could be made: every edit was rejected ("
                        + ", ".join(f"{r}: {n}" for r, n in report.rejected.most_common(3)) + ").",
                        "Lower --min-similarity, or use a larger captioned corpus.")
    outside = write_triplets(report, corpus, out_path)
    if outside:
        warn(f"{outside} triplet(s) name images outside {out_path.parent.resolve()}: compose-train "
             "will need --allow-outside-paths to read them (or write --out next to the images)")
    if json_out:
        print_json({"out": str(out_path), "triplets": len(report.triplets), "by_edit_type": dict(report.counts),
                    "rejected": dict(report.rejected)})
        return
    from rich.table import Table
    from rich.text import Text

    table = Table()
    table.add_column("edit type")
    table.add_column("kept", justify="right")
    for kind, n in sorted(report.counts.items()):
        table.add_row(kind, str(n))
    table.add_row(Text("total", style="bold"), Text(str(len(report.triplets)), style="bold"))
    out.print(table)
    rej = Table()
    rej.add_column("rejected because")
    rej.add_column("count", justify="right")
    for reason, n in report.rejected.most_common():
        rej.add_row(reason, str(n))
    out.print(rej)
    err.print(f"wrote {len(report.triplets)} triplets to {out_path}", highlight=False)
