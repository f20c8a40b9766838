"""`zscir compose-train`: Stage II, composing adapters trained on synthetic triplets with hard
negative mining (the paper's Stage II). Uses the training machinery of Stage I as it is.

A finished run stores its adapters and names its Stage I run (`stage1_run`); only a run with
--tune-stage1 stores the mapper it tuned.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from zscir_cli.core.cache import Artifact, identity
from zscir_cli.core.device import autocast, seed_everything
from zscir_cli.core.digests import file_sha256
from zscir_cli.core.errors import UserError
from zscir_cli.data.galleries import DatasetGallery, FilesGallery, Gallery
from zscir_cli.data.synth import normalise
from zscir_cli.jobs.backbones import open_backbone, resolve_spec, text_encoder
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.datasets.store import load_split
from zscir_cli.jobs.distributed import Dist, gather, start_run, world_size
from zscir_cli.jobs.retrieval.features import FeatureSet
from zscir_cli.jobs.runs import STAGE2, find_stage1, load_mapper
from zscir_cli.jobs.training.composing import HardNegativeMiner, TripletData
from zscir_cli.jobs.training.config import Stage2Config
from zscir_cli.jobs.training.inputs import shared_features
from zscir_cli.jobs.training.loop import TrainSpec, existing_run, train
from zscir_cli.jobs.training.triplet_files import TripletFile, read_triplets
from zscir_cli.jobs.training.validation import ShapesValidation
from zscir_cli.model.adapters import EMBEDDING_POSITIONS, AdapterConfig, ComposingAdapters
from zscir_cli.model.backbone import Backbone, ModelSpec
from zscir_cli.model.losses import candidate_logits, info_nce
from zscir_cli.model.mapping import PROMPT, Mapper, compose_tokens
from zscir_cli.model.text import TextEncoder

KIND = STAGE2


class Stage2Net(nn.Module):
    def __init__(self, mapper: Mapper, adapters: ComposingAdapters, encoder: TextEncoder, tune_stage1: bool):
        super().__init__()
        self.mapper = mapper
        self.adapters = adapters
        self.tune_stage1 = tune_stage1
        object.__setattr__(self, "encoder", encoder)
        for p in mapper.parameters():
            p.requires_grad_(tune_stage1)

    def train(self, mode: bool = True) -> Stage2Net:
        super().train(mode)
        if not self.tune_stage1:
            self.mapper.eval()  # a frozen mapper keeps its dropout off
        return self

    def forward(self, tokens: torch.Tensor, v: torch.Tensor, visual: torch.Tensor | None,
                compose: bool = True, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.mapper.encode(self.encoder, tokens, v, visual,
                                  extra_hooks=self.adapters.hooks() if compose else None, mask=mask)


def triplet_images(ctx: Context, trip: TripletFile) -> tuple[Gallery, list[str], list[dict]]:
    """The images the triplets name, their raw captions (one per image, '' when unknown) and the
    inputs to record: a prepared data set's train split, else the image files themselves."""
    if trip.dataset_key is not None:
        data = ctx.store.get("dataset", trip.dataset_key)
        if data is None:
            raise UserError(f"The triplets name data set {trip.dataset_key}, which is not in {ctx.store.root}.",
                            "Prepare that data set again, or use the cache the triplets were made with.")
        ds = load_split(data, "pairs", "train")
        gallery = DatasetGallery(ds, {"kind": "dataset", "dataset": identity(data), "part": "pairs",
                                      "split": "train"})
        return gallery, list(ds["caption"]), [identity(data)]
    paths = sorted({r[k] for r in trip.rows for k in ("reference", "target")})
    raw: dict[str, str] = {}
    for r in trip.rows:
        raw.setdefault(r["reference"], r.get("reference_caption", ""))
        raw.setdefault(r["target"], r.get("target_caption", ""))
    return FilesGallery(paths), [raw[p] for p in paths], []


def _caption_features(ctx: Context, backbone: Backbone, raw: list[str], normalised: list[str],
                      cfg: Stage2Config) -> torch.Tensor | None:
    """Caption features for the feature-similarity test or the caption loss, when either is on
    and every image has a caption."""
    if (cfg.false_negative_similarity > 1.0 and cfg.caption_weight == 0) or not all(normalised):
        return None
    return torch.from_numpy(np.asarray(FeatureSet.captions_of(ctx, backbone, raw), dtype=np.float32))


@dataclass
class ComposeLoss:
    """A training step's loss: each query's target against the global batch's targets and, with
    K > 0, the batch's references and mined images, likely false negatives masked out
    (+ the Stage I loss with `cfg.stage1_weight`)."""

    data: TripletData
    miner: HardNegativeMiner
    cfg: Stage2Config
    plain: torch.Tensor  # (1, L) tokens of PROMPT, for the Stage I loss
    use_visual: bool
    device: torch.device
    d: Dist

    def __call__(self, model: nn.Module, local: torch.Tensor, batch: torch.Tensor):
        li, gi = local.numpy(), batch.numpy()
        tokens, mask, v, visual = self.data.query_inputs(li, self.device, self.use_visual)
        with autocast(self.device):
            q_local = model(tokens, v, visual, mask=mask)
        q = gather(q_local.float(), self.d)  # (B, E): the whole global batch, in order
        tgt = self.data.tgt[gi]
        rows = np.concatenate([tgt, *self.miner.negatives(gi)])  # (C,): the targets first
        # another query's target, reference or mined image may show this query's target: not a negative
        same = self.data.false_negatives(rows, tgt, self.cfg.false_negative_similarity).to(self.device)
        same[torch.arange(len(gi)), torch.arange(len(gi))] = False  # the positive itself
        logits = candidate_logits(q, self.data.images(rows, self.device), same, self.cfg.temperature)
        labels = torch.arange(len(gi), device=self.device)
        loss = nn.functional.cross_entropy(logits, labels)
        # hit@1 logs the batch's own masked logits, exactly as the loss sees them (candidates
        # differ per batch and carry a per-query mask): an argmax, not a gallery ranking
        logs = {"compose": loss.item(), "hit@1": float((logits.argmax(1) == labels).float().mean())}
        if self.cfg.caption_weight > 0:
            text = self.data.caption_feats[rows].to(self.device)
            cap_loss = nn.functional.cross_entropy(candidate_logits(q, text, same, self.cfg.temperature), labels)
            loss = loss + self.cfg.caption_weight * cap_loss
            logs["caption"] = cap_loss.item()
        if self.cfg.stage1_weight > 0:
            t = gather(model(self.plain.expand(len(li), -1), v, visual, compose=False).float(), self.d)
            s1_loss = info_nce(t, gather(v, self.d), self.cfg.temperature)
            loss = loss + self.cfg.stage1_weight * s1_loss
            logs["stage1"] = s1_loss.item()
        return loss, logs


def check_positions(cfg: Stage2Config) -> None:
    """Refuse unknown embedding adapter positions, or positions without an embedding adapter,
    before anything is read."""
    if cfg.embedding_positions not in EMBEDDING_POSITIONS:
        raise UserError(f"Unknown --embedding-adapter-on '{cfg.embedding_positions}'.",
                        f"Use {', '.join(EMBEDDING_POSITIONS[:-1])} or {EMBEDDING_POSITIONS[-1]}.")
    if cfg.embedding_positions != "all" and not cfg.embedding_adapter and 0 not in (cfg.adapter_layers or []):
        raise UserError(f"--embedding-adapter-on {cfg.embedding_positions} contradicts --no-embedding-adapter: "
                        "there is no embedding adapter to limit.", "Pass one of them.")


def build_adapters(encoder: TextEncoder, cfg: Stage2Config) -> ComposingAdapters:
    layers = list(cfg.adapter_layers or range(1, encoder.depth + 1))
    if cfg.embedding_adapter and 0 not in layers:
        layers = [0, *layers]
    try:
        return ComposingAdapters(AdapterConfig(encoder.width, encoder.depth, cfg.adapter_dim, layers,
                                               cfg.embedding_positions))
    except ValueError as e:
        raise UserError(str(e), f"Choose --adapter-layers between 0 and {encoder.depth}.") from e


def key_settings(cfg: Stage2Config, layers: list[int]) -> dict:
    """The settings of `cfg` that name a run (its key, beside the backbone, Stage I run and
    triplets), with the adapter layers as built: the embedding adapter is layer 0, and its positions
    are named only when not all, so that every run made before they could be chosen keeps its key."""
    config = {k: v for k, v in asdict(cfg).items()
              if k not in ("triplets", "stage1", "skip_bad", "allow_outside_paths", "validate",
                           "embedding_adapter", "pretrained")}
    config["adapter_layers"] = list(layers)
    if config["embedding_positions"] == "all" or 0 not in layers:
        del config["embedding_positions"]
    return config


def _train_spec(ctx: Context, cfg: Stage2Config, backbone: Backbone, s1: Artifact, data: TripletData,
                adapters: ComposingAdapters, inputs: list[dict], skipped: int) -> TrainSpec:
    config = key_settings(cfg, adapters.cfg.layers)
    sha = file_sha256(Path(cfg.triplets))
    config.update({"model": backbone.spec.identity(), "stage1_run": s1.key,
                   "triplets_sha256": sha, "triplets": len(data), "world_size": world_size()})
    inputs = inputs + [identity(s1), identity(data.feats.artifact)]
    return TrainSpec(kind=KIND, key=ctx.store.key_for(KIND, config, inputs), config=config, inputs=inputs,
                     seed=cfg.seed, model=backbone.spec.identity(),
                     description=f"composing adapters on {len(data)} triplets ({Path(cfg.triplets).name}), "
                                 f"{backbone.spec.label()}, {cfg.epochs} epochs, seed {cfg.seed}",
                     n_items=len(data), batch_size=cfg.batch_size, epochs=cfg.epochs, lr=cfg.lr,
                     weight_decay=cfg.weight_decay,
                     extra_manifest={"method": "tscir", "stage1_run": s1.key, "stage1_tuned": cfg.tune_stage1,
                                     "triplets_file": triplet_source(ctx, cfg.triplets, sha),
                                     "triplet_recipe": triplet_recipe(data.rows), "triplets_skipped": skipped,
                                     "hard_negatives": cfg.hard_negatives})


def triplet_source(ctx: Context, path: str, sha: str) -> dict:
    """How a run names its triplet file: a triplets artifact of this cache by its key (no path
    that a copy of the cache would leave behind), a user's file by its sha256 and the path as
    given (relative stays relative)."""
    file = Path(path).resolve()
    if file.name == "triplets.jsonl" and file.parent.parent == (ctx.store.root / "triplets").resolve():
        return {"artifact": f"triplets/{file.parent.name}", "sha256": sha}
    return {"path": path, "sha256": sha}


def triplet_recipe(rows: list[dict]) -> str:
    """What made the triplets: `zscir synth`'s recipe as its rows record it (template/words,
    template/content, scene), or 'written elsewhere' for rows that do not say."""
    recipes = Counter(str(r.get("recipe") or r.get("source") or "written elsewhere") for r in rows)
    return " + ".join(name for name, _ in recipes.most_common())


def _save_run(adapters: ComposingAdapters, tuned: Mapper | None, folder: Path) -> None:
    """The adapters; the Stage I mapper only when tuned (else the run names its Stage I run)."""
    adapters.save(folder)
    if tuned is not None:
        tuned.save(folder)


def compose_train(ctx: Context, spec: ModelSpec | None, cfg: Stage2Config, *, resume: bool = False,
                  force: bool = False, stop_after_epoch: int | None = None) -> Artifact | None:
    check_positions(cfg)
    ctx, device, d = start_run(ctx)
    spec = spec or resolve_spec(ctx, cfg.model, cfg.pretrained)  # None: the backbone cfg names
    trip = read_triplets(Path(cfg.triplets), skip_bad=cfg.skip_bad, allow_outside=cfg.allow_outside_paths)
    if trip.skipped:
        ctx.reporter.info(f"left out {len(trip.skipped)} triplet(s) with a missing image")
    backbone = open_backbone(ctx, spec, device)
    s1 = find_stage1(ctx, backbone.spec, "stage1", cfg.stage1)
    mapper = load_mapper(s1, device)
    gallery, raw_captions, inputs = triplet_images(ctx, trip)
    missing = sum(not normalise(c) for c in raw_captions)
    if cfg.caption_weight > 0 and missing:  # before any image is encoded
        raise UserError(f"--caption-weight {cfg.caption_weight} needs a caption for every triplet image; "
                        f"{missing} of {len(raw_captions)} have none in {cfg.triplets}.",
                        "Write the triplets with 'zscir synth' (it records both captions), or pass --caption-weight 0.")
    feats = shared_features(ctx, backbone, gallery, d, mapper.cfg.grid)
    captions = [normalise(c) for c in raw_captions]
    tokenize = partial(compose_tokens, backbone.tokenizer, placeholder=mapper.cfg.placeholder,
                       placeholder_id=mapper.cfg.placeholder_id)
    data = TripletData.from_triplets(trip.rows, feats, captions, tokenize)
    data.caption_feats = _caption_features(ctx, backbone, raw_captions, captions, cfg)

    seed_everything(cfg.seed)  # the adapters' initial weights follow the seed
    encoder = text_encoder(backbone, mapper.cfg.placeholder_id)
    adapters = build_adapters(encoder, cfg).to(device)
    net = Stage2Net(mapper, adapters, encoder, cfg.tune_stage1)
    tspec = _train_spec(ctx, cfg, backbone, s1, data, adapters, inputs, len(trip.skipped))
    found = existing_run(ctx, KIND, tspec.key, d, force=force)
    if found is not None:  # finished already (with --resume too: nothing is left to do)
        return found
    if len(data) < cfg.batch_size:
        raise UserError(f"{len(data)} triplets are fewer than one batch ({cfg.batch_size}).",
                        f"Pass --batch-size {max(2, len(data) // 2 * 2)} or synthesise more triplets.")
    use_visual = bool(mapper.cfg.vsi_layers)
    miner = HardNegativeMiner(data, cfg.hard_negatives, cfg.false_negative_similarity, use_visual, device)
    plain = backbone.tokenizer([PROMPT.replace("$", mapper.cfg.placeholder)]).to(device)
    validation = ShapesValidation.open(ctx, backbone, ctx.store.get("dataset", trip.dataset_key),
                                       mapper.cfg.grid if use_visual else None) \
        if cfg.validate and d.main and trip.dataset_key is not None else None
    return train(ctx, tspec, net, device=device, d=d,
                 step_fn=ComposeLoss(data, miner, cfg, plain, use_visual, device, d),
                 on_epoch_start=lambda model, _epoch: miner.mine(model), evaluate=validation,
                 finalize=partial(_save_run, adapters, mapper if cfg.tune_stage1 else None),
                 resume=resume, stop_after_epoch=stop_after_epoch)


