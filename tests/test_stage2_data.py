"""Stage II's data on a hand-built world: TripletData rows, the hard-negative miner (which images
it mines, and that it re-mines under a new model) and the loss's candidates for K = 0 and K > 0."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from zscir_cli.core.errors import UserError
from zscir_cli.jobs.retrieval.features import FeatureSet
from zscir_cli.jobs.training.composing import HardNegativeMiner, TripletData
from zscir_cli.jobs.training.config import Stage2Config
from zscir_cli.jobs.training.loop import Dist
from zscir_cli.jobs.training.stage2 import ComposeLoss

CPU = torch.device("cpu")
# six images on the unit circle (degrees); image 5 is named by no triplet, so it is never mined
ANGLES = [0, 20, 45, 90, 130, 60]
IDS = ["a", "b", "c", "d", "e", "f"]
CAPTIONS = ["red circle", "blue circle", "red circle", "green star", "blue star", ""]
TRIPLETS = [{"reference": "a", "target": "b", "modification": "make it blue"},
            {"reference": "d", "target": "e", "modification": "make it blue"},
            {"reference": "c", "target": "a", "modification": "move it"}]


def _unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def _data(caption_feats: torch.Tensor | None = None) -> TripletData:
    image = np.array([_unit(a) for a in ANGLES], dtype=np.float16)
    feats = FeatureSet(None, IDS, image, np.repeat(image[:, None], 3, axis=1), None)

    def tokenize(texts):  # token 0 names the triplet, so the fake model below knows its query
        tokens = torch.arange(len(texts))[:, None].repeat(1, 4)
        return tokens, tokens == -1

    return TripletData.from_triplets(TRIPLETS, feats, CAPTIONS, tokenize, caption_feats)


class FixedQueries(nn.Module):
    """A 'model' whose query feature for triplet i is the unit vector at angles[i]."""

    def __init__(self, angles: list[float]):
        super().__init__()
        self.q = torch.tensor([_unit(a) for a in angles])
        self.scale = nn.Parameter(torch.ones(()))
        self.modes: list[bool] = []

    def forward(self, tokens, v, visual, compose=True, mask=None):
        self.modes.append(self.training)
        return self.q[tokens[:, 0]] * self.scale


def test_triplet_data_rows_pool_and_captions():
    data = _data()
    assert len(data) == 3
    assert data.ref.tolist() == [0, 3, 2] and data.tgt.tolist() == [1, 4, 0]
    assert data.pool.tolist() == [0, 1, 2, 3, 4]  # image f is in no triplet
    assert data.cap_ids[0] == data.cap_ids[2] and len(set(data.cap_ids.tolist())) == 5
    assert data.tokens.shape == (3, 4) and data.mask.shape == (3, 4)
    tokens, mask, v, visual = data.query_inputs(np.array([1, 2]), CPU, use_visual=True)
    assert mask.shape == (2, 4) and not mask.any()
    assert tokens[:, 0].tolist() == [1, 2]
    assert torch.allclose(v, torch.tensor([_unit(90), _unit(45)]), atol=1e-3)  # the references' features
    assert visual.shape == (2, 3, 2)
    assert data.query_inputs(np.array([0]), CPU, use_visual=False)[3] is None


def test_triplet_data_refuses_images_outside_the_feature_set():
    bad = TRIPLETS + [{"reference": "zz", "target": "a", "modification": "x"},
                      {"reference": "a", "target": "yy", "modification": "x"}]
    feats = _data().feats
    with pytest.raises(UserError, match="2 triplet image\\(s\\) are not in the data set, e.g. zz"):
        TripletData.from_triplets(bad, feats, CAPTIONS, lambda t: (torch.zeros(len(t), 1), torch.zeros(len(t), 1)))


def test_miner_returns_the_nearest_allowed_images():
    data = _data()
    model = FixedQueries([25, 100, 5])
    model.train()
    miner = HardNegativeMiner(data, k=2, threshold=2.0, use_visual=False, device=CPU)
    mined = miner.mine(model)
    # query 0 (a -> b) at 25: b is the target, a the reference; c (20 away) then d (65 away)
    # query 1 (d -> e) at 100: d, e banned; c (55) then b (80)
    # query 2 (c -> a) at 5: a is the target, c the reference and a's caption; b (15) then d (85)
    assert mined.tolist() == [[2, 3], [2, 1], [1, 3]]
    assert model.modes == [False] and model.training  # mined in eval mode, training mode restored
    assert [r.tolist() for r in miner.negatives(np.array([2, 0]))] == [[2, 0], [1, 3, 2, 3]]


def test_miner_skips_images_whose_caption_feature_matches_the_target():
    s = 0.1 / math.sqrt(1.01)
    caption_feats = torch.tensor([[1, 0], [0, 1], [s, 10 * s], [0.6, 0.8], [0.8, 0.6], [1, 0]])
    mined = HardNegativeMiner(_data(caption_feats), 2, 0.98, False, CPU).mine(FixedQueries([25, 100, 5]))
    assert mined[0].tolist() == [3, 4]  # c's caption feature is within 0.98 of b's: a likely false negative
    assert mined[1:].tolist() == [[2, 1], [1, 3]]


def test_miner_re_mines_under_a_new_model_and_k0_mines_nothing():
    data = _data()
    miner = HardNegativeMiner(data, 2, 2.0, False, CPU)
    miner.mine(FixedQueries([25, 100, 5]))
    assert miner.mine(FixedQueries([95, 100, 5]))[0].tolist() == [3, 4]  # query 0 moved next to d
    none = HardNegativeMiner(data, 0, 2.0, False, CPU)
    model = FixedQueries([25, 100, 5])
    assert none.mine(model).shape == (3, 0) and model.modes == []
    assert none.negatives(np.arange(3)) == []


def _expected_loss(q: torch.Tensor, data: TripletData, rows: list[int], tau: float, turn: float = 0) -> float:
    """Cross-entropy over the candidate rows, by hand: a candidate showing the target's image or
    caption is left out, except the query's own target (column i). Candidates are the images'
    vectors, turned by `turn` degrees."""
    img = torch.tensor([_unit(a + turn) for a in ANGLES])
    total = 0.0
    for i in range(len(q)):
        tgt = int(data.tgt[i])
        keep = [c for c, r in enumerate(rows) if c == i or (r != tgt and CAPTIONS[r] != CAPTIONS[tgt])]
        logits = torch.stack([q[i] @ img[rows[c]] / tau for c in keep])
        total += float(torch.logsumexp(logits, 0) - q[i] @ img[tgt] / tau)
    return total / len(q)


@pytest.mark.parametrize("k", [0, 2])
def test_compose_loss_candidates(k):
    data = _data()
    model = FixedQueries([25, 100, 5])
    miner = HardNegativeMiner(data, k, 2.0, False, CPU)
    miner.mine(model)
    cfg = Stage2Config(triplets="", hard_negatives=k, temperature=0.5)
    loss, logs = ComposeLoss(data, miner, cfg, torch.zeros(1, 4, dtype=torch.long), False, CPU, Dist())(
        model, torch.arange(3), torch.arange(3))
    targets = data.tgt.tolist()
    with_refs = targets + data.ref.tolist()
    if k == 0:  # in-batch targets only: neither the references nor mined images
        assert loss.item() == pytest.approx(_expected_loss(model.q, data, targets, 0.5), rel=1e-4)
        assert loss.item() != pytest.approx(_expected_loss(model.q, data, with_refs, 0.5), rel=1e-3)
    else:
        rows = with_refs + miner.mined.reshape(-1).tolist()
        assert loss.item() == pytest.approx(_expected_loss(model.q, data, rows, 0.5), rel=1e-4)
    assert logs["compose"] == pytest.approx(loss.item()) and 0 <= logs["hit@1"] <= 1


def test_caption_loss_is_the_same_cross_entropy_over_the_candidates_caption_features():
    # caption features: the images' own vectors turned by 90 degrees, so they differ from the images
    caps = torch.tensor([_unit(a + 90) for a in ANGLES])
    data = _data(caps)
    model = FixedQueries([25, 100, 5])
    miner = HardNegativeMiner(data, 0, 2.0, False, CPU)
    plain = torch.zeros(1, 4, dtype=torch.long)
    args = (model, torch.arange(3), torch.arange(3))
    base, _ = ComposeLoss(data, miner, Stage2Config(triplets="", hard_negatives=0, temperature=0.5), plain, False,
                          CPU, Dist())(*args)
    cfg = Stage2Config(triplets="", hard_negatives=0, temperature=0.5, caption_weight=0.5)
    loss, logs = ComposeLoss(data, miner, cfg, plain, False, CPU, Dist())(*args)
    # the same candidates (the batch's targets, likely false negatives masked) with caption features
    expected = _expected_loss(model.q, data, data.tgt.tolist(), 0.5, turn=90)
    assert expected != pytest.approx(base.item(), rel=1e-2)
    assert logs["caption"] == pytest.approx(expected, rel=1e-3)
    assert loss.item() == pytest.approx(base.item() + 0.5 * logs["caption"], rel=1e-4)
