"""`zscir demo`: prepare, pretrain, index, query and evaluate on the shapes world, offline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from zscir_cli.cli.common import make_context, print_hits, print_json
from zscir_cli.cli.console import err, out
from zscir_cli.cli.options import CacheDir, Device, Json, Seed
from zscir_cli.jobs.demo.config import DemoRequest as D
from zscir_cli.jobs.training.config import PretrainConfig


def demo(
    seed: Seed = D.seed,
    steps: Annotated[int | None, typer.Option(min=1, help=f"Pretraining steps [default: {PretrainConfig.steps}].",
                                                 show_default=False)] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A tiny run in seconds, to check the "
                                        "installation (its numbers mean nothing).")] = D.quick,
    html: Annotated[Path, typer.Option(help="Where to write the example queries' HTML page.")] = Path(str(D.html)),
    recipe: Annotated[str, typer.Option(
        help="Stage II: default (triplets 'zscir synth' makes from captions, chosen on val) or paper "
             "(caption-template triplets whose targets need only show the new word, adapters after the text "
             "blocks only, as the paper describes).")] = D.recipe,
    split: Annotated[str, typer.Option(
        help="Where the table is measured: test, or val (to choose settings; the val queries have their "
             "own wording and scenes).")] = D.split,
    json_out: Json = False,
    serve: Annotated[bool, typer.Option(
        "--serve", help="Then serve the demo's gallery with 'zscir serve' (a page to query and walk it).")] = False,
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port for --serve (0: any free port).")] = 8000,
    device: Device = "auto",
    cache_dir: CacheDir = None,
) -> None:
    """Composed image retrieval end to end on the embedded shapes world, offline, on a CPU."""
    from zscir_cli.cli.evaluate import results_table
    from zscir_cli.jobs.demo.config import demo_config
    from zscir_cli.jobs.demo.run import run_demo

    start = time.time()
    cfg = demo_config(D(seed=seed, quick=quick, steps=steps, recipe=recipe, split=split, html=str(html)))
    if serve:  # a busy port fails now too, not after minutes of training
        from zscir_cli.web.server import bind

        bind("127.0.0.1", port).close()
    ctx = make_context(cache_dir, device)
    res = run_demo(ctx, cfg)
    total = time.time() - start
    ev = res.evaluation
    if json_out:
        print_json({"timings_s": {**{k: round(v, 2) for k, v in res.timings.items()}, "total": round(total, 2)},
                    "backbone": res.backbone_eval, "checkpoint": res.checkpoint, "index": res.index_key,
                    "evaluation": ev.to_json(),
                    "html": str(html.resolve())})
        _serve(ctx, res.index_key, serve, port)
        return

    for ex in res.examples:
        print_hits(ex)
    b = res.backbone_eval
    out.print(f"base CLIP ({b['val_images']} val images): caption R@1 {b['caption_r1']:.1f}%, "
              f"colour {b.get('colour_acc', 0):.1f}%, shape {b.get('shape_acc', 0):.1f}%, "
              f"size {b.get('size_acc', 0):.1f}%, colour binding {b.get('binding_acc', 0):.1f}%")
    out.print(f"\nshapes CIR, {ev.split} split: {ev.queries} queries ({ev.wording} wording), gallery {ev.gallery} "
              "(reference removed; several ground truths per query)", highlight=False)
    out.print(results_table(ev))
    out.print("These are numbers of the embedded shapes lab (a small CLIP trained here from scratch), "
              "not of any public benchmark.")
    err.print(f"HTML page: {html.resolve()}")
    err.print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in res.timings.items()) + f", total {total:.1f}s")
    err.print(f"try: zscir query {res.examples[0].reference if res.examples else 'REF'} \"make it green\" "
              f"--index {res.index_key}" + (f" --cache-dir {ctx.store.root}" if cache_dir else ""))
    err.print(f"serve: zscir serve --index {res.index_key}" + (f" --cache-dir {ctx.store.root}" if cache_dir else "")
              + "  (then open the printed address in a browser)", highlight=False, markup=False)
    _serve(ctx, res.index_key, serve, port)


def _serve(ctx, index_key: str, serve: bool, port: int) -> None:
    if serve:
        from zscir_cli.cli.serve import log_line
        from zscir_cli.jobs.service.config import ServeRequest
        from zscir_cli.web.server import bind, run

        sock = bind("127.0.0.1", port)
        try:
            run(ctx, ServeRequest(indexes=[index_key], port=port), sock, log_line)
        finally:
            sock.close()
