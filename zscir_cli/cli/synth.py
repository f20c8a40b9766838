"""`zscir synth`: synthetic triplets from captions (template) or scene graphs (scene)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zscir_cli.cli.common import make_context, print_json
from zscir_cli.cli.console import err, out, warn
from zscir_cli.cli.options import CacheDir, Device, Json, Model, Pretrained, Seed
from zscir_cli.data.captions import FORMAT_HELP
from zscir_cli.jobs.training.config import SynthRequest as D


def synth(
    data: Annotated[str | None, typer.Option(help="Prepared image-caption data set (its train split).",
                                                show_default=False)] = None,
    captions: Annotated[Path | None, typer.Option(help=f"Captions file: {FORMAT_HELP}; every image must "
                                                     "exist.", show_default=False)] = None,
    out_path: Annotated[Path, typer.Option("--out", help="Triplet file to write (JSONL).")] = Path(D.out),
    max_triplets: Annotated[int, typer.Option(min=1, help="At most this many, balanced over edit types.")] = D.max_triplets,
    mode: Annotated[str, typer.Option(help="template (captions only) or scene (shapes scene graphs, exact).")] = D.mode,
    seed: Seed = D.seed,
    min_similarity: Annotated[float, typer.Option(min=-1.0, max=1.0, help="Nearest-caption targets below this "
                                                  "text similarity are rejected.")] = D.min_similarity,
    match: Annotated[str, typer.Option(
        help="How a nearest caption is accepted as the target: words (it shows the new value and not the old "
             "one: the paper's low-quality recipe) or content (it names the same objects and background as the "
             "edited caption, up to word order).")] = D.match,
    exact_only: Annotated[bool, typer.Option("--exact-only", help="Only exact caption matches: no text "
                                             "embedding, no model.")] = D.exact_only,
    allow_outside: Annotated[bool, typer.Option(
        "--allow-outside-paths", help="Accept image paths of --captions that lie outside its folder "
                                      "(absolute, or climbing out with '..').")] = D.allow_outside,
    model: Model = None,
    pretrained: Pretrained = None,
    json_out: Json = False,
    device: Device = "auto",
    cache_dir: CacheDir = None,
) -> None:
    """Write (reference, modification, target) triplets by template edits, without a language model."""
    from zscir_cli.jobs.training.synth import make_triplets

    req = D(out=str(out_path), data=data, captions=str(captions) if captions is not None else None, mode=mode,
            max_triplets=max_triplets, seed=seed, min_similarity=min_similarity, match=match, exact_only=exact_only,
            allow_outside=allow_outside, model=model, pretrained=pretrained)
    res = make_triplets(make_context(cache_dir, device), req)
    report = res.report
    if res.outside:
        warn(f"{res.outside} triplet(s) name images outside {out_path.parent.resolve()}: compose-train "
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
