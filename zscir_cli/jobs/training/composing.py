"""Stage II's training data: the triplet set as rows of a frozen feature set, and the miner of
its hard negatives (the paper's Stage II).

An image is a likely false negative of a query when it may show the query's target: the target
itself, an image with the same (normalised) caption, or one whose caption feature is within a
cosine threshold of the target's. Neither the miner nor the loss ever uses one as a negative.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from zscir_cli.core.errors import UserError
from zscir_cli.jobs.retrieval.features import FeatureSet
from zscir_cli.jobs.training.inputs import rows as feature_rows

# texts -> (tokens (T, L), pseudo-word mask (T, L)) of the composed prompts
Tokenize = Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor]]


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

    This top-k stays a torch op rather than `index.search.rank`: the mined rows feed the loss,
    and they must be the nearest under exactly the scores torch computes (faiss sums in another
    order, so a near tie could flip and change the trained weights), over a dense mask of
    likely false negatives that can ban most of the pool.
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


@dataclass
class TripletData:
    """The triplet set as rows of a feature set: what Stage II trains on.

    Triplet i composes image row ref[i] with its modification text (tokens[i], whose pseudo-word
    positions are mask[i]) and should retrieve image row tgt[i].
    """

    rows: list[dict]  # the triplet file's objects
    feats: FeatureSet  # frozen features of every image the triplets name
    ref: np.ndarray  # (T,) image row of each reference
    tgt: np.ndarray  # (T,) image row of each target
    pool: np.ndarray  # (P,) the triplet set's distinct image rows: where negatives are mined
    cap_ids: np.ndarray  # (N,) `caption_ids` of every image row
    tokens: torch.Tensor  # (T, L) the composed prompt of each triplet
    mask: torch.Tensor  # (T, L) its pseudo-word positions
    caption_feats: torch.Tensor | None = None  # (N, E) normalised caption features, or None

    @staticmethod
    def from_triplets(triplets: list[dict], feats: FeatureSet, captions: list[str], tokenize: Tokenize,
                      caption_feats: torch.Tensor | None = None) -> TripletData:
        """captions: the normalised caption of every row of `feats` ('' when unknown)."""
        row_of = {g: i for i, g in enumerate(feats.ids)}
        unknown = [r[k] for k in ("reference", "target") for r in triplets if r[k] not in row_of]
        if unknown:
            raise UserError(f"{len(unknown)} triplet image(s) are not in the data set, e.g. {unknown[0]}.",
                            "Write the triplets again with 'zscir synth' for this data set.")
        ref = np.array([row_of[r["reference"]] for r in triplets])
        tgt = np.array([row_of[r["target"]] for r in triplets])
        tokens, mask = tokenize([r["modification"] for r in triplets])
        return TripletData(triplets, feats, ref, tgt, np.unique(np.concatenate([ref, tgt])),
                           caption_ids(captions), tokens, mask, caption_feats)

    def __len__(self) -> int:
        return len(self.rows)

    def images(self, image_rows: np.ndarray, device: torch.device) -> torch.Tensor:
        """(len(image_rows), D) float32 image features."""
        return feature_rows(self.feats.image, image_rows, device)

    def query_inputs(self, idx: np.ndarray, device: torch.device, use_visual: bool):
        """What the Stage II network takes for triplets idx: (tokens, mask, v, visual or None)."""
        visual = feature_rows(self.feats.tokens, self.ref[idx], device) if use_visual else None
        return self.tokens[idx].to(device), self.mask[idx].to(device), self.images(self.ref[idx], device), visual

    def false_negatives(self, image_rows: np.ndarray, targets: np.ndarray, threshold: float) -> torch.Tensor:
        return likely_false_negatives(self.cap_ids, self.caption_feats, image_rows, targets, threshold)


class HardNegativeMiner:
    """Each query's K nearest triplet-set images under the current model, re-mined by `mine`
    (every epoch); K = 0 mines nothing. `mined` (T, K) holds the latest image rows."""

    def __init__(self, data: TripletData, k: int, threshold: float, use_visual: bool, device: torch.device,
                 batch_size: int = 512):
        self.data, self.k, self.threshold = data, k, threshold
        self.use_visual, self.device, self.batch_size = use_visual, device, batch_size
        self.mined = np.zeros((len(data), k), dtype=np.int64)
        self.pool_feats = torch.from_numpy(np.asarray(data.feats.image[data.pool], dtype=np.float32))

    def mine(self, model: nn.Module) -> np.ndarray:
        """Re-mine with `model` (tokens, v, visual, mask=...) -> normalised query features."""
        if self.k == 0:
            return self.mined
        data, n = self.data, len(self.data)
        was = model.training
        model.eval()
        with torch.no_grad():
            for s in range(0, n, self.batch_size):
                idx = np.arange(s, min(n, s + self.batch_size))
                tokens, mask, v, visual = data.query_inputs(idx, self.device, self.use_visual)
                q = model(tokens, v, visual, mask=mask).float().cpu()
                self.mined[idx] = mine_hard_negatives(q, data.pool, self.pool_feats, data.ref[idx], data.tgt[idx],
                                                      data.cap_ids, self.k, data.caption_feats, self.threshold)
        model.train(was)
        return self.mined

    def negatives(self, batch: np.ndarray) -> list[np.ndarray]:
        """The hard negatives of triplets `batch`: their references, then their mined images."""
        if self.k == 0:
            return []
        return [self.data.ref[batch], self.mined[batch].reshape(-1)]
