"""How good a base CLIP is on the shapes world: caption retrieval among the val pairs, and
zero-shot accuracy on captions with one attribute changed (colour, shape, size, background,
and two objects' colours swapped). `zscir pretrain` records these in its artifact."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from zscir_cli.core.cache import Artifact
from zscir_cli.data import shapes
from zscir_cli.data.galleries import DatasetGallery
from zscir_cli.eval.metrics import recall_at_k
from zscir_cli.index.search import rank
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.datasets.store import load_split
from zscir_cli.jobs.retrieval.encoder import encode_gallery
from zscir_cli.model.backbone import Backbone


def _swap_probes(scene: shapes.Scene) -> dict[str, list[tuple[str, list[str]]]]:
    """Per attribute: (true caption, captions with that one attribute changed) pairs."""
    probes: dict[str, list[tuple[str, list[str]]]] = {"colour": [], "shape": [], "size": [],
                                                      "background": [], "binding": []}
    true = shapes.caption(scene)
    objs = list(scene.objects)

    def cap(new_objs, bg=scene.background) -> str:
        return shapes.caption(shapes.Scene(bg, tuple(new_objs)))

    for i, o in enumerate(objs):
        for attr, values in (("colour", shapes.COLOURS), ("shape", shapes.SHAPES), ("size", shapes.SIZES)):
            alts = [cap(objs[:i] + [replace(o, **{attr: v})] + objs[i + 1:])
                    for v in values if v != getattr(o, attr)]
            probes[attr].append((true, alts))
    probes["background"].append((true, [cap(objs, b) for b in shapes.BACKGROUNDS if b != scene.background]))
    if len(objs) >= 2 and objs[0].colour != objs[1].colour:  # swap two objects' colours
        swapped = [replace(objs[0], colour=objs[1].colour),
                   replace(objs[1], colour=objs[0].colour)] + objs[2:]
        probes["binding"].append((true, [cap(swapped)]))
    return probes


@torch.inference_mode()
def evaluate_backbone(ctx: Context, backbone: Backbone, data: Artifact, limit: int = 1000) -> dict[str, Any]:
    """Caption retrieval R@1 among the val captions, and zero-shot attribute accuracies (%)."""
    val = load_split(data, "pairs", "val")
    val = val.select(range(min(limit, len(val))))
    enc = encode_gallery(ctx, backbone, DatasetGallery(val, {}), description="validating backbone")
    img = torch.from_numpy(enc.features)
    captions = list(val["caption"])
    txt = torch.cat([backbone.encode_texts(captions[i:i + 256]).cpu() for i in range(0, len(captions), 256)])
    rows_of: dict[str, set[int]] = {}
    for i, c in enumerate(captions):
        rows_of.setdefault(c, set()).add(i)
    same_caption = [rows_of[c] for c in captions]  # an image and a caption match when the captions are equal
    i2t = recall_at_k(rank(txt.numpy(), img.numpy(), 1)[0], same_caption, 1)
    t2i = recall_at_k(rank(img.numpy(), txt.numpy(), 1)[0], same_caption, 1)
    scenes = [shapes.Scene.from_json(s) for s in val["scene"]]
    probes = [_swap_probes(scene) for scene in scenes]
    # encode every distinct probe caption once, in large batches
    texts = sorted({t for p in probes for items in p.values() for true, alts in items for t in [true, *alts]})
    row_of = {t: i for i, t in enumerate(texts)}
    probe_feats = torch.cat([backbone.encode_texts(texts[i:i + 512]).cpu() for i in range(0, len(texts), 512)])
    acc: dict[str, list[bool]] = {}
    for row, p in enumerate(probes):
        for attr, items in p.items():
            for true, alts in items:
                scores = probe_feats[[row_of[true]] + [row_of[a] for a in alts]] @ img[row]
                acc.setdefault(attr, []).append(bool(scores[0] > scores[1:].max()))
    out = {"val_images": len(captions), "caption_r1": round(i2t, 2), "text_to_image_r1": round(t2i, 2)}
    out.update({f"{k}_acc": round(100 * float(np.mean(v)), 2) for k, v in acc.items() if v})
    return out
