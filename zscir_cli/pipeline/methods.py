"""Composed-query methods: from reference-image features and modification texts to query features.

The training-free baselines of method.md live here; trained methods join them in the same
registry, so every query and evaluation can run any of them.
"""

from __future__ import annotations

import numpy as np
import torch

from zscir_cli.core.errors import UserError
from zscir_cli.model.backbone import Backbone

BASELINES = ("image", "text", "sum")
DESCRIPTIONS = {
    "image": "the reference image's feature alone",
    "text": "the modification text's feature alone",
    "sum": "normalised image feature + normalised text feature",
}


def available_methods() -> tuple[str, ...]:
    return BASELINES


def check_method(method: str) -> None:
    if method not in available_methods():
        raise UserError(f"Unknown method '{method}'.",
                        f"Choose one of: {', '.join(available_methods())}.")


def compose_queries(method: str, backbone: Backbone, ref_features: np.ndarray,
                    texts: list[str], batch_size: int = 256) -> np.ndarray:
    """(Q, D) normalised reference features + Q texts -> (Q, D) normalised query features."""
    check_method(method)
    ref = torch.from_numpy(np.asarray(ref_features, dtype=np.float32))
    if method == "image":
        return torch.nn.functional.normalize(ref, dim=-1).numpy()
    txt = torch.cat([backbone.encode_texts(texts[i:i + batch_size]).cpu()
                     for i in range(0, len(texts), batch_size)]) if texts else ref[:0]
    if method == "text":
        return txt.numpy()
    return torch.nn.functional.normalize(torch.nn.functional.normalize(ref, dim=-1) + txt,
                                         dim=-1).numpy()
