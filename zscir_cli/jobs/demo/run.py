"""`zscir demo`: the whole offline path on the shapes world, from nothing to a results table."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from zscir_cli.data.synth import SYNTH_VERSION
from zscir_cli.jobs.backbones import backbone_spec, open_backbone
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.datasets.shapes import prepare_shapes
from zscir_cli.jobs.datasets.store import load_split, resolve_gallery
from zscir_cli.jobs.demo.config import SCENE_LABEL, DemoConfig, DemoRequest, demo_config
from zscir_cli.jobs.protocols.results import Evaluation, evaluate
from zscir_cli.jobs.protocols.suites import shapes_suite
from zscir_cli.jobs.retrieval.indexing import index_gallery
from zscir_cli.jobs.retrieval.methods import BASELINES, MethodChoice, load_method
from zscir_cli.jobs.retrieval.query import QueryResult, load_index, run_query, write_html
from zscir_cli.jobs.retrieval.references import ID, ReferenceArg, resolve
from zscir_cli.jobs.training.pretrain import pretrain
from zscir_cli.jobs.training.stage1 import map_train
from zscir_cli.jobs.training.stage2 import compose_train
from zscir_cli.jobs.training.synth import caption_embedder, corpus_from_dataset, synthesise
from zscir_cli.jobs.training.triplet_files import write_triplets


@dataclass
class DemoResult:
    timings: dict[str, float]
    backbone_eval: dict[str, Any]
    examples: list[QueryResult]
    evaluation: Evaluation
    index_key: str
    checkpoint: str


def demo(ctx: Context, req: DemoRequest) -> DemoResult:
    """`zscir demo`: the request checked and turned into its configuration, then run."""
    return run_demo(ctx, demo_config(req))


def run_demo(ctx: Context, cfg: DemoConfig) -> DemoResult:
    timings: dict[str, float] = {}
    t = time.time()
    ctx.reporter.info("1/7 preparing the shapes world")
    data, _ = prepare_shapes(ctx, cfg.world)
    timings["prepare"] = time.time() - t

    t = time.time()
    ctx.reporter.info("2/7 training the base CLIP (zscir pretrain)")
    backbone_art, _ = pretrain(ctx, replace(cfg.pretrain, data=data.key))
    timings["pretrain"] = time.time() - t

    t = time.time()
    ctx.reporter.info("3/7 Stage I mapping: stage1 (VSI + soft text alignment) and pic2word (neither)")
    spec = backbone_spec(backbone_art, ctx)
    s1 = replace(cfg.stage1, data=data.key)
    # the runs trained here are the runs used below, whatever else the cache holds
    runs = {"stage1": map_train(ctx, spec, s1).key,
            "pic2word": map_train(ctx, spec, replace(s1, vsi=False, sta=False)).key}
    timings["map-train"] = time.time() - t

    t = time.time()
    ctx.reporter.info("4/7 synthetic triplets from captions (and scene graphs) and Stage II composing adapters")
    backbone = open_backbone(ctx, spec)
    recipes = ["template", "scene"] if cfg.scene_reference else ["template"]
    triplet_files = write_demo_triplets(ctx, data.key, backbone, cfg, recipes)
    rows = [MethodChoice(m, runs[m]) for m in ("pic2word", "stage1")]
    # the reference run first: the default's, trained last, is the newest tscir run, which
    # query, serve and eval take when no --run is given
    for recipe, label in (("scene", SCENE_LABEL), ("template", "tscir")):
        if recipe in triplet_files:
            run = compose_train(ctx, spec, replace(cfg.stage2, triplets=str(triplet_files[recipe]),
                                                   stage1=runs["stage1"])).key
            rows.append(MethodChoice("tscir", run, label))
    rows = [*rows[:2], rows[-1], *rows[2:-1]]  # the default row first
    runs["tscir"] = rows[2].run
    timings["compose-train"] = time.time() - t

    t = time.time()
    ctx.reporter.info(f"5/7 indexing the {cfg.split} gallery")
    method = load_method(ctx, "tscir", backbone, runs["tscir"])
    # the visual tokens the trained methods need (one grid: theirs is Stage I's) come from the
    # index's pass, so the evaluation below encodes nothing again
    grid = method.grid if method.needs_tokens else None
    index = index_gallery(ctx, backbone, resolve_gallery(ctx, f"{data.key}:{cfg.split}"), grid=grid).artifact
    timings["index"] = time.time() - t

    t = time.time()
    ctx.reporter.info(f"6/7 example queries (method {method.name})")
    queries = load_split(data, "cir", cfg.split)
    loaded = load_index(ctx, index)
    examples, seen = [], set()
    for row in queries:  # one example per edit type, in order
        if len(examples) >= cfg.examples:
            break
        if row["edit_type"] in seen:
            continue
        seen.add(row["edit_type"])
        reference = resolve(ReferenceArg(ID, row["reference_id"]), loaded)
        examples.append(run_query(ctx, method, loaded, reference, row["modification"], k=cfg.top_k))
    if cfg.html is not None:
        write_html(examples, cfg.html, title=f"zscir demo: shapes world, method {method.name}")
    timings["examples"] = time.time() - t

    t = time.time()
    ctx.reporter.info(f"7/7 evaluating every method on the shapes {cfg.split} split")
    evaluation, _ = evaluate(ctx, backbone, shapes_suite(ctx, data.key, cfg.split),
                             [*BASELINES, *rows])
    timings["evaluate"] = time.time() - t
    return DemoResult(timings, backbone_art.manifest["eval"], examples, evaluation, index.key,
                      str(backbone_spec(backbone_art).pretrained))


def write_demo_triplets(ctx: Context, data_key: str, backbone, cfg: DemoConfig,
                        recipes: list[str]) -> dict[str, Path]:
    """Each recipe's triplet file, as cache artifacts of kind 'triplets' (reused when present)."""
    corpus = corpus_from_dataset(ctx, data_key)
    files = {}
    for mode in recipes:
        config = {"data": data_key, "mode": mode, "max_triplets": cfg.triplets, "seed": cfg.stage2.seed,
                  "version": SYNTH_VERSION, "match": cfg.triplet_match if mode == "template" else None,
                  "min_similarity": 0.9, "model": backbone.spec.identity() if mode == "template" else None}
        key = ctx.store.key_for("triplets", config)
        art = ctx.store.get("triplets", key)
        if art is None:
            embed = caption_embedder(backbone)
            report = synthesise(ctx, corpus, mode=mode, max_triplets=cfg.triplets, seed=cfg.stage2.seed,
                                min_similarity=0.9, embed=embed, match=cfg.triplet_match)
            with ctx.store.create("triplets", key, config=config, seed=cfg.stage2.seed,
                                  description=f"{len(report.triplets)} {mode} triplets") as out:
                write_triplets(report, out.path / "triplets.jsonl", corpus.dataset_key)
                out.manifest["counts"] = dict(report.counts)
                out.manifest["rejected"] = dict(report.rejected)
            art = ctx.store.get("triplets", key)
        files[mode] = art.path / "triplets.jsonl"
    return files
