"""Stage II's check after every epoch on a shapes world's CIR val split (`ShapesValidation`):
the model in training composes each val query as `tscir` does and ranks the split's gallery
under `zscir eval`'s protocol; R@1 (overall and per edit type) and mAP@10 go into the epoch's
metrics record."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from zscir_cli.core.cache import identity
from zscir_cli.data.galleries import DatasetGallery
from zscir_cli.eval.metrics import map_at_k, recall_at_k
from zscir_cli.index import search
from zscir_cli.jobs.datasets.store import load_split
from zscir_cli.jobs.retrieval.encoder import run_encoder
from zscir_cli.jobs.retrieval.methods import QueryMethod
from zscir_cli.model.backbone import Backbone


class _ValWriter:
    """Keeps the gallery's global features, and the visual tokens of the rows in `keep`, rounded
    through fp16 as the index and the feature cache store them (so a validation number is the
    number `zscir eval` gives the same weights)."""

    def __init__(self, keep: set[int]):
        self.keep, self.v, self.tokens = keep, {}, {}

    def write(self, rows: list[int], v: np.ndarray, tokens: np.ndarray | None) -> None:
        for j, r in enumerate(rows):
            self.v[r] = v[j].astype(np.float16).astype(np.float32)
            if tokens is not None and r in self.keep:
                self.tokens[r] = tokens[j].astype(np.float16).astype(np.float32)


@dataclass
class ShapesValidation:
    """Stage II's check after every epoch on a shapes world's CIR val split: the model in
    training, in eval mode, composes each query as `tscir` does and ranks the split's whole
    gallery with the reference removed (`zscir eval`'s protocol); R@1 and mAP@10 go into the
    epoch's metrics record. It runs without gradients and restores the RNG state, so the trained
    weights are those of a run without it."""

    backbone: Backbone
    gallery: np.ndarray  # (N, D) float32 global features of the val gallery
    ref_v: np.ndarray  # (Q, D) the references' features
    ref_tokens: np.ndarray | None  # (Q, M, D) their visual tokens, when the mapper takes them
    texts: list[str]  # the modifications
    exclude: list[list[int]]  # each query's reference row
    positives: list[set[int]]  # each query's ground-truth rows
    edits: list[str]  # each query's edit type

    @staticmethod
    def open(ctx, backbone: Backbone, dataset, grid: int | None) -> ShapesValidation | None:
        """For a prepared shapes world with a CIR val split (else None); `grid`: the visual
        tokens' grid when the mapper takes them."""
        if dataset is None or dataset.manifest.get("name") != "shapes" or \
                "val" not in dataset.manifest.get("splits", {}).get("cir", []):
            return None
        rows = load_split(dataset, "cir", "val")
        gallery = DatasetGallery(load_split(dataset, "gallery", "val"),
                                 {"kind": "dataset", "dataset": identity(dataset), "split": "val"})
        row = {g: i for i, g in enumerate(gallery.ids)}
        refs = [row[r] for r in rows["reference_id"]]
        writer = _ValWriter(set(refs))
        with torch.random.fork_rng(devices=[]):  # the loader draws a seed from the global RNG
            run_encoder(ctx, backbone, gallery, writer, grid=grid, description="encoding the val gallery")
        feats = np.stack([writer.v[i] for i in range(len(gallery))])
        tokens = np.stack([writer.tokens[r] for r in refs]) if grid is not None else None
        return ShapesValidation(backbone, feats, feats[refs], tokens, list(rows["modification"]),
                                [[r] for r in refs], [{row[g] for g in gt} for gt in rows["ground_truth"]],
                                list(rows["edit_type"]))

    def __call__(self, net: nn.Module) -> dict[str, float]:
        method = QueryMethod("tscir", self.backbone, net.mapper, None, net.adapters)
        devices = [self.backbone.device] if self.backbone.device.type == "cuda" else []
        was = net.training
        net.eval()
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            queries = method.encode(self.ref_v, self.texts, self.ref_tokens)
        net.train(was)
        ranked, _ = search.rank(self.gallery, queries, 10, exclude=self.exclude)
        out = {"val_R@1": recall_at_k(ranked, self.positives, 1), "val_mAP@10": map_at_k(ranked, self.positives, 10)}
        for edit in sorted(set(self.edits)):  # what each kind of edit has learnt so far
            rows = [i for i, e in enumerate(self.edits) if e == edit]
            out[f"val_R@1_{edit}"] = recall_at_k(ranked[rows], [self.positives[i] for i in rows], 1)
        return out
