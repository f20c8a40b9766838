"""The one image-encoding runner: reader -> decode -> encode -> writer.

Every pass over a gallery's pixels goes through `run_encoder`: the index, the feature cache and
a backbone's validation. DataLoader workers read and decode (`ImageRows`), the main process
encodes batches and hands them to a writer. The seconds spent waiting for decoded batches,
in the image tower and in the writer are recorded, so a slow run says where its time went.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from zscir_cli.core import faults
from zscir_cli.core.device import autocast
from zscir_cli.data.galleries import Gallery, image_digest
from zscir_cli.data.images import load_rgb
from zscir_cli.jobs.context import Context
from zscir_cli.model.backbone import Backbone
from zscir_cli.model.visual import encode_with_tokens


class ImageRows(Dataset):
    """Reader and decoder: gallery row -> (preprocessed tensor, row, error or None, digest of the
    image's bytes or None). Each image's bytes are read once: hashed, then decoded."""

    def __init__(self, gallery: Gallery, preprocess):
        self.gallery = gallery
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.gallery)

    def __getitem__(self, i: int):
        try:
            raw = self.gallery.raw(i)
            return self.preprocess(load_rgb(raw)), i, None, image_digest(raw)
        except Exception as e:  # noqa: BLE001 - reported per image, never swallowed
            return None, i, f"{type(e).__name__}: {e}".splitlines()[0][:200], None


def collate_rows(batch):
    good = [(x, i, h) for x, i, err, h in batch if err is None]
    bad = [(i, err) for _, i, err, _ in batch if err is not None]
    images = torch.stack([x for x, _, _ in good]) if good else None
    return images, [i for _, i, _ in good], bad, [h for _, _, h in good]


class Writer(Protocol):
    def write(self, rows: list[int], v: np.ndarray, tokens: np.ndarray | None) -> None:
        """rows: gallery rows; v (B, D) float32 normalised; tokens (B, M, D) float32 or None."""


@dataclass
class Timings:
    """Seconds per stage of one pass."""

    read_decode: float = 0.0  # waiting for the reader's decoded batches
    encode: float = 0.0  # the image tower
    write: float = 0.0  # the writer

    def as_dict(self) -> dict[str, float]:
        return {"read_decode": round(self.read_decode, 3), "encode": round(self.encode, 3),
                "write": round(self.write, 3)}


@dataclass
class RunStats:
    rows: list[int] = field(default_factory=list)  # rows written, in order
    failures: list[tuple[int, str]] = field(default_factory=list)  # (row, error)
    digests: list[str] = field(default_factory=list)  # `image_digest` of each row written, in order
    timings: Timings = field(default_factory=Timings)


def _batches(loader: DataLoader, timings: Timings) -> Iterator:
    it = iter(loader)
    while True:
        t = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return
        finally:
            timings.read_decode += time.perf_counter() - t
        yield batch


def run_encoder(ctx: Context, backbone: Backbone, gallery: Gallery, writer: Writer, *, grid: int | None = None,
                batch_size: int = 64, description: str = "encoding images", raw: bool = False) -> RunStats:
    """Encode every readable image of `gallery` into `writer`: global features (normalised, or
    as the image tower gives them when `raw`), plus the visual tokens pooled to `grid` when it
    is given. Unreadable images are returned, not raised."""
    loader = DataLoader(ImageRows(gallery, backbone.preprocess), batch_size=batch_size, shuffle=False,
                        num_workers=ctx.num_workers(), collate_fn=collate_rows,
                        pin_memory=backbone.device.type == "cuda", persistent_workers=False)
    stats = RunStats()
    with ctx.reporter.task(description, total=len(gallery)) as task:
        for images, rows, bad, digests in _batches(loader, stats.timings):
            stats.failures.extend(bad)
            if images is not None:
                t = time.perf_counter()
                if grid is None:
                    v, tok = backbone.encode_images(images, normalise=not raw).cpu().numpy(), None
                else:
                    with torch.inference_mode(), autocast(backbone.device):
                        tv, tt = encode_with_tokens(backbone.model, images.to(backbone.device), grid)
                    v, tok = tv.cpu().numpy(), tt.cpu().numpy()
                stats.timings.encode += time.perf_counter() - t
                t = time.perf_counter()
                writer.write(rows, v, tok)
                stats.timings.write += time.perf_counter() - t
                faults.point("encode:batch")
                stats.rows.extend(rows)
                stats.digests.extend(digests)
            task.advance(len(rows) + len(bad))
    return stats


class MemoryWriter:
    """Keeps the global features in memory (float32)."""

    def __init__(self):
        self.parts: list[np.ndarray] = []

    def write(self, rows: list[int], v: np.ndarray, tokens: np.ndarray | None) -> None:
        self.parts.append(v)


@dataclass
class Encoded:
    features: np.ndarray  # (N_ok, D) float32, L2-normalised (unless asked raw)
    rows: list[int]  # gallery rows of `features`
    failures: list[tuple[int, str]] = field(default_factory=list)  # (row, error)
    timings: dict[str, float] = field(default_factory=dict)


def encode_gallery(ctx: Context, backbone: Backbone, gallery: Gallery, batch_size: int = 64,
                   description: str = "encoding images", raw: bool = False) -> Encoded:
    """The global features of `gallery` in memory (nothing cached; not normalised when `raw`):
    for small validation sets, and references encoded again."""
    writer = MemoryWriter()
    stats = run_encoder(ctx, backbone, gallery, writer, batch_size=batch_size, description=description, raw=raw)
    dim = writer.parts[0].shape[1] if writer.parts else 0
    feats = np.concatenate(writer.parts) if writer.parts else np.zeros((0, dim), np.float32)
    return Encoded(feats, stats.rows, stats.failures, stats.timings.as_dict())


class GalleryRows(Gallery):
    """Rows `rows` of `gallery`, in order: one process's part of a sharded pass."""

    def __init__(self, gallery: Gallery, rows: range | list[int]):
        self.gallery, self.rows = gallery, rows
        self.ids = [gallery.ids[r] for r in rows]
        self.source = gallery.source

    def image(self, i: int):
        return self.gallery.image(self.rows[i])

    def raw(self, i: int) -> bytes:
        return self.gallery.raw(self.rows[i])

    def identity(self) -> dict:
        return {**self.gallery.identity(), "rows": [self.rows[0], self.rows[-1] + 1] if len(self.rows) else []}
