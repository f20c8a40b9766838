"""`zscir eval`: the one entry point of the command. The split is opened and checked (it exists,
it has ground truth) before any model loads; every method is then ranked through the one
ranking path and scored (`results.evaluate`)."""

from __future__ import annotations

from pathlib import Path

from zscir_cli.core.errors import UserError
from zscir_cli.core.outputs import check_output
from zscir_cli.jobs.backbones import open_backbone, resolve_spec, spec_for_identity
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.datasets.store import find_dataset
from zscir_cli.jobs.protocols.config import EvalRequest
from zscir_cli.jobs.protocols.results import Evaluation, evaluate
from zscir_cli.jobs.protocols.suites import open_suite, read_texts, shapes_suite
from zscir_cli.jobs.protocols.trees import PROTOCOLS
from zscir_cli.jobs.retrieval.indexing import index_of_dataset
from zscir_cli.jobs.retrieval.methods import TRAINED, MethodChoice, available_methods, check_method
from zscir_cli.jobs.retrieval.releases import parse_weights
from zscir_cli.model.backbone import ModelSpec, identity_label

WORDINGS = ("train", "val", "test")


def evaluate_request(ctx: Context, req: EvalRequest) -> Evaluation:
    """Every method `req` names (default: each with a run for the model) on its split."""
    name = req.dataset.split(":")[0]
    benchmark = name in PROTOCOLS
    if not benchmark and name != "shapes" and find_dataset(ctx, name).manifest.get("name") != "shapes":
        raise UserError(f"'{req.dataset}' is not a composed-retrieval benchmark zscir can evaluate.",
                        "Choose shapes, fashioniq, cirr or circo.")
    if not benchmark and req.split not in ("val", "test"):
        raise UserError(f"Unknown split '{req.split}'.", "Use val or test.")
    for m in req.methods:
        check_method(m)
    trained = [m for m in req.methods if m in TRAINED]
    if req.run and len(trained) != 1:
        raise UserError("--run names the run of one trained method.", "Give exactly one of tscir, stage1, pic2word.")
    weights = parse_weights(req.methods, req.weights)
    html = check_output(Path(req.html)) if req.html is not None else None
    if (req.wording is not None or req.texts is not None) and benchmark:
        raise UserError("--wording and --texts reword the shapes world's queries.", f"Leave them out for {name}.")
    if req.wording is not None and req.wording not in WORDINGS:
        raise UserError(f"Unknown --wording '{req.wording}'.", "Use train, val or test.")
    suite = open_suite(ctx, name, req.split) if benchmark else \
        shapes_suite(ctx, name, req.split, req.wording, read_texts(Path(req.texts)) if req.texts is not None else None)
    backbone = open_backbone(ctx, split_model(ctx, suite.dataset_key, name, req.model, req.pretrained))
    methods = list(req.methods) or list(dict.fromkeys([*available_methods(ctx, backbone), *weights]))
    choices = [MethodChoice(m, req.run if m in TRAINED else None, weights=weights.get(m)) for m in methods]
    res, worst = evaluate(ctx, backbone, suite, choices, req.kind, req.target_caption)
    if html is not None and worst is not None:
        worst.write(html, f"zscir eval {name} {req.split}: the worst queries of {worst.method} ({res.model})")
        ctx.reporter.info(f"wrote {html}")
    return res


def split_model(ctx: Context, dataset_key: str, name: str, model: str | None, pretrained: str | None) -> ModelSpec:
    """--model/--pretrained as given; without them, the model of the newest index built on a
    gallery of this data set (as `zscir query` takes the newest index's), else a user error
    saying how to name one."""
    if model is not None or pretrained is not None:
        return resolve_spec(ctx, model, pretrained)
    index = index_of_dataset(ctx, dataset_key)
    if index is None:
        raise UserError(f"No index in {ctx.store.root} was built on a gallery of {name}, so no model is implied.",
                        "Name it: --model ViT-L-14 --pretrained openai, say (zscir-shapes-rn for the shapes world).")
    ctx.reporter.info(f"using the model of index {index.key}: {identity_label(index.manifest.get('model'))}")
    return spec_for_identity(ctx, index.manifest["model"])
