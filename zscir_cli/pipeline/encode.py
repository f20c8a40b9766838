"""Batched image encoding with DataLoader workers, tolerant of unreadable images."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from zscir_cli.data.images import Gallery
from zscir_cli.model.backbone import Backbone
from zscir_cli.pipeline.context import Context


class ImageRows(Dataset):
    def __init__(self, gallery: Gallery, preprocess):
        self.gallery = gallery
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.gallery)

    def __getitem__(self, i: int):
        try:
            return self.preprocess(self.gallery.image(i)), i, None
        except Exception as e:  # noqa: BLE001 - reported per image, never swallowed
            return None, i, f"{type(e).__name__}: {e}".splitlines()[0][:200]


def collate_rows(batch):
    good = [(x, i) for x, i, err in batch if err is None]
    bad = [(i, err) for _, i, err in batch if err is not None]
    images = torch.stack([x for x, _ in good]) if good else None
    return images, [i for _, i in good], bad


@dataclass
class Encoded:
    features: np.ndarray  # (N_ok, D) float32, L2-normalised
    rows: list[int]  # gallery rows of `features`
    failures: list[tuple[int, str]] = field(default_factory=list)  # (row, error)


def encode_gallery(ctx: Context, backbone: Backbone, gallery: Gallery, batch_size: int = 64,
                   description: str = "encoding images") -> Encoded:
    loader = DataLoader(ImageRows(gallery, backbone.preprocess), batch_size=batch_size,
                        shuffle=False, num_workers=ctx.num_workers(), collate_fn=collate_rows,
                        pin_memory=backbone.device.type == "cuda",
                        persistent_workers=False)
    feats, rows, failures = [], [], []
    with ctx.reporter.task(description, total=len(gallery)) as task:
        for images, idx, bad in loader:
            if images is not None:
                feats.append(backbone.encode_images(images).cpu().numpy())
                rows.extend(idx)
            failures.extend(bad)
            task.advance(len(idx) + len(bad))
    dim = feats[0].shape[1] if feats else 0
    return Encoded(np.concatenate(feats) if feats else np.zeros((0, dim), np.float32), rows, failures)
