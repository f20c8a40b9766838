"""`zscir compose-train`: Stage II, composing adapters trained on synthetic triplets with hard
negative mining (method.md, Stage II). Uses the training machinery of Stage I as it is."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from zscir_cli.core.cache import Artifact, identity
from zscir_cli.core.device import autocast, resolve_device, seed_everything
from zscir_cli.core.errors import UserError
from zscir_cli.core.jsonutil import file_sha256
from zscir_cli.core.progress import NULL_REPORTER
from zscir_cli.data.images import DatasetGallery, FilesGallery, Gallery
from zscir_cli.data.synth import normalise
from zscir_cli.model.adapters import AdapterConfig, ComposingAdapters
from zscir_cli.model.backbone import ModelSpec, load_backbone
from zscir_cli.model.losses import info_nce
from zscir_cli.model.mapping import COMPOSE_PROMPT, PROMPT, Mapper
from zscir_cli.model.text import TextEncoder
from zscir_cli.pipeline.context import Context
from zscir_cli.pipeline.datasets import load_split
from zscir_cli.pipeline.features import FeatureSet, cached_features
from zscir_cli.pipeline.stage1 import find_stage1
from zscir_cli.pipeline.synth import read_triplets
from zscir_cli.pipeline.training import (
    TrainSpec,
    device_for,
    find_run,
    gather,
    init_distributed,
    train,
)

KIND = "stage2"


@dataclass
class Stage2Config:
    triplets: str  # JSONL written by 'zscir synth' (or by hand, same schema)
    epochs: int = 10
    batch_size: int = 128  # global batch of triplets
    lr: float = 1e-4  # AdamW, cosine schedule
    weight_decay: float = 0.01
    seed: int = 0
    adapter_dim: int = 64  # bottleneck width
    adapter_layers: list[int] | None = None  # 1-based blocks; None = every block
    hard_negatives: int = 8  # K mined gallery negatives per query (0 or use_hard_negatives=False: none)
    use_hard_negatives: bool = True  # also adds each query's reference image as a negative
    tune_stage1: bool = False  # unfreeze the Stage I mapper
    stage1_weight: float = 0.0  # weight of the Stage I loss, to keep a tuned mapping from drifting
    temperature: float = 0.07
    # an image is a likely false negative of a query when its caption equals the target's, or
    # when their caption features have at least this cosine (> 1 turns the second test off)
    false_negative_similarity: float = 0.98
    stage1: str | None = None  # Stage I run key; None = the newest stage1 run of the backbone
    skip_bad: bool = False  # leave out triplets whose image files are missing


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
                compose: bool = True) -> torch.Tensor:
        return self.mapper.encode(self.encoder, tokens, v, visual,
                                  extra_hooks=self.adapters.hooks() if compose else None)


def _rows(x: np.ndarray, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x[idx], dtype=np.float32)).to(device)


def caption_ids(captions: list[str]) -> np.ndarray:
    """An integer per image row, equal for equal normalised captions; unknown ('') never equal."""
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(c, len(ids)) if c else -1 - i for i, c in enumerate(captions)], dtype=np.int64)


def likely_false_negatives(cap_ids: np.ndarray, caption_feats: torch.Tensor | None, rows: np.ndarray,
                           targets: np.ndarray, threshold: float) -> torch.Tensor:
    """(len(targets), len(rows)) bool: image rows[c] is a likely false negative for a query whose
    target is targets[q]: the same image, the same (normalised) caption, or a caption feature
    within `threshold` cosine of the target's."""
    out = torch.from_numpy((rows[None, :] == targets[:, None]) | (cap_ids[rows][None, :] == cap_ids[targets][:, None]))
    if caption_feats is not None and threshold <= 1.0:
        out |= (caption_feats[targets] @ caption_feats[rows].T) >= threshold  # (Q, C)
    return out


def mine_hard_negatives(queries: torch.Tensor, pool: np.ndarray, pool_feats: torch.Tensor, ref: np.ndarray,
                        tgt: np.ndarray, cap_ids: np.ndarray, k: int, caption_feats: torch.Tensor | None = None,
                        threshold: float = 2.0) -> np.ndarray:
    """The k pool images nearest to each query, best first, never the query's true target, its
    reference (already a negative of its own), nor a likely false negative (see
    `likely_false_negatives`).

    queries (n, E); pool (P,) image rows with features pool_feats (P, E); ref, tgt (n,) rows;
    cap_ids: `caption_ids` of every image row; caption_feats: (N, E')
    normalised caption features of every image row, or None. Returns (n, k) image rows.
    """
    scores = queries.float() @ pool_feats.T  # (n, P)
    banned = likely_false_negatives(cap_ids, caption_feats, pool, tgt, threshold)
    banned |= torch.from_numpy(pool[None, :] == ref[:, None])
    scores = scores.masked_fill(banned, -torch.inf)
    kk = min(k, len(pool))
    best = torch.topk(scores, kk, dim=1)
    out = pool[best.indices.numpy()]  # (n, kk)
    # where fewer than k images are allowed, the reference (a true negative) fills the gap
    out = np.where(np.isfinite(best.values.numpy()), out, ref[:, None])
    if kk < k:
        out = np.concatenate([out, np.repeat(ref[:, None], k - kk, axis=1)], axis=1)
    return out


def compose_train(ctx: Context, spec: ModelSpec, cfg: Stage2Config, *, resume: bool = False,
                  stop_after_epoch: int | None = None) -> Artifact | None:
    device = resolve_device(ctx.device)
    d = init_distributed(device)
    device = device_for(d, device)
    if not d.main:
        ctx = replace(ctx, reporter=NULL_REPORTER)
    trip = read_triplets(Path(cfg.triplets), skip_bad=cfg.skip_bad)
    if trip.skipped:
        ctx.reporter.info(f"left out {len(trip.skipped)} triplet(s) with a missing image")
    backbone = load_backbone(spec, cache_dir=ctx.store.root, device=device)
    s1 = find_stage1(ctx, backbone.spec, "stage1", cfg.stage1)
    mapper = Mapper.load(s1.path, device)
    grid = mapper.cfg.grid

    # the images of the triplet set and their frozen features
    if trip.dataset_key is not None:
        data = ctx.store.get("dataset", trip.dataset_key)
        if data is None:
            raise UserError(f"The triplets name data set {trip.dataset_key}, which is not in {ctx.store.root}.",
                            "Prepare that data set again, or use the cache the triplets were made with.")
        ds = load_split(data, "pairs", "train")
        gallery: Gallery = DatasetGallery(ds, {"kind": "dataset", "dataset": identity(data), "part": "pairs",
                                               "split": "train"})
        captions = [normalise(c) for c in ds["caption"]]
        inputs = [identity(data)]
    else:
        paths = sorted({r[k] for r in trip.rows for k in ("reference", "target")})
        gallery = FilesGallery(paths)
        cap_raw: dict[str, str] = {}
        for r in trip.rows:
            cap_raw.setdefault(r["reference"], r.get("reference_caption", ""))
            cap_raw.setdefault(r["target"], r.get("target_caption", ""))
        captions = [normalise(cap_raw[p]) for p in paths]
        inputs = []
    feats: FeatureSet
    if d.main:
        feats = cached_features(ctx, backbone, gallery, grid=grid)
    d.barrier()
    if not d.main:
        feats = cached_features(ctx, backbone, gallery, grid=grid)
    row_of = {g: i for i, g in enumerate(feats.ids)}
    unknown = [r["reference"] for r in trip.rows if r["reference"] not in row_of] + \
              [r["target"] for r in trip.rows if r["target"] not in row_of]
    if unknown:
        raise UserError(f"{len(unknown)} triplet image(s) are not in the data set, e.g. {unknown[0]}.",
                        "Write the triplets again with 'zscir synth' for this data set.")
    ref = np.array([row_of[r["reference"]] for r in trip.rows])
    tgt = np.array([row_of[r["target"]] for r in trip.rows])
    pool = np.unique(np.concatenate([ref, tgt]))  # the triplet set's images: where negatives are mined
    cap_ids = caption_ids(captions)
    caption_feats = None
    if cfg.false_negative_similarity <= 1.0 and all(captions):
        raw = list(ds["caption"]) if trip.dataset_key is not None else [cap_raw[p] for p in feats.ids]
        caption_feats = torch.from_numpy(np.asarray(
            FeatureSet.captions_of(ctx, backbone, raw), dtype=np.float32))

    seed_everything(cfg.seed)
    encoder = TextEncoder(backbone.model, mapper.cfg.placeholder_id)
    adapters = ComposingAdapters(AdapterConfig(encoder.width, encoder.depth, cfg.adapter_dim,
                                               cfg.adapter_layers or [])).to(device)
    net = Stage2Net(mapper, adapters, encoder, cfg.tune_stage1)
    prompts = [COMPOSE_PROMPT.replace("$", mapper.cfg.placeholder).format(text=r["modification"]) for r in trip.rows]
    tokens = backbone.tokenizer(prompts)  # (N, L)
    plain = backbone.tokenizer([PROMPT.replace("$", mapper.cfg.placeholder)]).to(device)
    vis = bool(mapper.cfg.vsi_layers)
    k = cfg.hard_negatives if cfg.use_hard_negatives else 0
    mined = np.zeros((len(trip.rows), k), dtype=np.int64)
    pool_feats = torch.from_numpy(np.asarray(feats.image[pool], dtype=np.float32))

    def mine(model: nn.Module, epoch: int) -> None:
        """Re-mine every query's K nearest triplet-set images under the current model."""
        if k == 0:
            return
        was = model.training
        model.eval()
        with torch.no_grad():
            for s in range(0, len(trip.rows), 512):
                idx = np.arange(s, min(len(trip.rows), s + 512))
                q = model(tokens[idx].to(device), _rows(feats.image, ref[idx], device),
                          _rows(feats.tokens, ref[idx], device) if vis else None).float().cpu()
                mined[idx] = mine_hard_negatives(q, pool, pool_feats, ref[idx], tgt[idx], cap_ids, k,
                                                 caption_feats, cfg.false_negative_similarity)
        model.train(was)

    def step_fn(model: nn.Module, local: torch.Tensor, batch: torch.Tensor):
        li, gi = local.numpy(), batch.numpy()
        v = _rows(feats.image, ref[li], device)
        visual = _rows(feats.tokens, ref[li], device) if vis else None
        with autocast(device):
            q_local = model(tokens[li].to(device), v, visual)
        q = gather(q_local.float(), d)  # (B, E): the whole global batch, in order
        cand_rows = [tgt[gi]]
        if cfg.use_hard_negatives:
            cand_rows += [ref[gi], mined[gi].reshape(-1)]
        rows = np.concatenate(cand_rows)  # (C,)
        cands = _rows(feats.image, rows, device)
        logits = q @ cands.T / cfg.temperature  # (B, C)
        # another query's target, reference or mined image may show this query's target: not a negative
        same = likely_false_negatives(cap_ids, caption_feats, rows, tgt[gi], cfg.false_negative_similarity)
        same = same.to(device)
        same[torch.arange(len(gi)), torch.arange(len(gi))] = False  # the positive itself
        logits = logits.masked_fill(same, float("-inf"))
        labels = torch.arange(len(gi), device=device)
        loss = nn.functional.cross_entropy(logits, labels)
        logs = {"compose": loss.item(), "hit@1": float((logits.argmax(1) == labels).float().mean())}
        if cfg.stage1_weight > 0:
            t = gather(model(plain.expand(len(li), -1), v, visual, compose=False).float(), d)
            s1_loss = info_nce(t, gather(v, d), cfg.temperature)
            loss = loss + cfg.stage1_weight * s1_loss
            logs["stage1"] = s1_loss.item()
        return loss, logs

    config = {k_: v for k_, v in asdict(cfg).items() if k_ not in ("triplets", "stage1", "skip_bad")}
    config.update({"model": backbone.spec.identity(), "stage1_run": s1.key,
                   "triplets_sha256": file_sha256(Path(cfg.triplets)), "triplets": len(trip.rows),
                   "adapter_layers": adapters.cfg.layers})
    inputs = inputs + [identity(s1), identity(feats.artifact)]
    key = ctx.store.key_for(KIND, config, inputs)
    found = ctx.store.get(KIND, key)
    if found is not None:  # finished already (with --resume too: nothing is left to do)
        return found

    def finalize(folder: Path) -> None:
        adapters.save(folder)
        mapper.save(folder)  # the (possibly tuned) Stage I parts travel with the run

    n = len(trip.rows)
    if n < cfg.batch_size:
        raise UserError(f"{n} triplets are fewer than one batch ({cfg.batch_size}).",
                        f"Pass --batch-size {max(2, n // 2 * 2)} or synthesise more triplets.")
    tspec = TrainSpec(kind=KIND, key=key, config=config, inputs=inputs, seed=cfg.seed, model=backbone.spec.identity(),
                      description=f"composing adapters on {n} triplets ({Path(cfg.triplets).name}), "
                                  f"{backbone.spec.label()}, {cfg.epochs} epochs, seed {cfg.seed}",
                      n_items=n, batch_size=cfg.batch_size, epochs=cfg.epochs, lr=cfg.lr,
                      weight_decay=cfg.weight_decay,
                      extra_manifest={"method": "tscir", "stage1_run": s1.key, "triplets_file": str(cfg.triplets),
                                      "triplets_skipped": len(trip.skipped), "hard_negatives": k})
    return train(ctx, tspec, net, device=device, d=d, step_fn=step_fn, on_epoch_start=mine, finalize=finalize,
                 resume=resume, stop_after_epoch=stop_after_epoch)


def find_stage2(ctx: Context, spec: ModelSpec, run: str | None = None) -> Artifact:
    missing = UserError(f"No tscir run (Stage II) trained on {spec.label()} in {ctx.store.root}.",
                        "Train one with 'zscir synth' then 'zscir compose-train --triplets FILE', "
                        "or choose another --method (sum, stage1, ...).")
    return find_run(ctx, KIND, spec, run, lambda a: True, missing)
