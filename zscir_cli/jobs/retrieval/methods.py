"""Composed-query methods: from reference images and modification texts to query features.

Every query and every evaluation runs through `QueryMethod.encode`, so any method can be
compared with any other on the same references, texts and gallery.

| method   | query feature                                                               |
|----------|-----------------------------------------------------------------------------|
| image    | the reference image's feature                                                |
| text     | the modification text's feature                                             |
| sum      | normalise(normalised image feature + normalised text feature)               |
| pic2word | "a photo of $ that {text}", $ from a token learner alone (no VSI, no STA)   |
| stage1   | the same prompt with the Stage I mapper (token learner + VSI, trained with STA) |
| tscir    | the same prompt through the text encoder with Stage II's composing adapters  |
| searle, lincir, pic2word with --weights | a released mapper, run as its project runs it (`model.releases`) |

A released mapper takes the reference's image feature before normalisation, which no index or
feature cache keeps: its references are encoded again (`raw_reference`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from zscir_cli.core.cache import Artifact
from zscir_cli.core.errors import UserError
from zscir_cli.jobs.context import Context
from zscir_cli.jobs.retrieval.releases import open_release
from zscir_cli.jobs.runs import find_stage1, find_stage2, load_mapper, load_stage2
from zscir_cli.model.adapters import ComposingAdapters
from zscir_cli.model.backbone import Backbone
from zscir_cli.model.mapping import COMPOSE_PROMPT, Mapper, compose_tokens
from zscir_cli.model.releases import RELEASED, ReleasedMapper
from zscir_cli.model.text import TextEncoder

BASELINES = ("image", "text", "sum")
TRAINED = ("pic2word", "stage1", "tscir")
METHODS = BASELINES + TRAINED + tuple(m for m in RELEASED if m not in TRAINED)


@dataclass(frozen=True)
class MethodChoice:
    """A row of an evaluation: a method, the run it uses (None: the newest) and the row's name."""

    name: str
    run: str | None = None
    label: str | None = None  # default: the method's name
    weights: str | None = None  # a released mapper's file (or hf-hub: id), for searle, lincir, pic2word


BASELINE_RECIPES = {"image": "the reference image's feature, no training",
                    "text": "the modification text's feature, no training",
                    "sum": "image + text features, no training"}


def describe(method: QueryMethod) -> str:
    """How a method was made, in a line: what every results row says beside its numbers."""
    if method.released is not None:
        w = method.weights or {}
        return (f"released {method.released.release.title} weights {w.get('name')} (sha256 {str(w.get('sha256'))[:12]}), "
                f"{method.released.release.preprocess} images")
    if method.run is None:
        return BASELINE_RECIPES.get(method.name, "no training")
    m = method.run.manifest
    cfg = m.get("config", {})
    if method.name in ("pic2word", "stage1"):
        parts = ["token learner", *(["VSI"] if cfg.get("vsi") else []), *(["STA"] if cfg.get("sta") else [])]
        return f"Stage I: {' + '.join(parts)}, {_counted(cfg.get('epochs'), 'epoch')}"
    layers = list(cfg.get("adapter_layers") or [])
    on = {"pseudo-word": " + the pseudo-word's embedding", "words": " + embeddings but the pseudo-word's"}
    blocks = _counted(len([x for x in layers if x]), "block") + \
        (on.get(cfg.get("embedding_positions", "all"), " + embeddings") if 0 in layers else "")
    return (f"Stage II: {cfg.get('triplets')} {m.get('triplet_recipe', 'unknown')} triplets, adapters after "
            f"{blocks}, {_counted(cfg.get('hard_negatives', 0), 'hard negative')}, "
            f"{_counted(cfg.get('epochs'), 'epoch')}")


def _counted(n, noun: str) -> str:
    """'1 epoch', '10 epochs'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def check_method(method: str, weights: str | None = None) -> None:
    """A known method, and --weights only where a released mapper can take them."""
    if method not in METHODS:
        raise UserError(f"Unknown method '{method}'.", f"Choose one of: {', '.join(METHODS)}.")
    if weights is not None and method not in RELEASED:
        raise UserError(f"--weights {weights} goes with a released mapper, not with --method {method}.",
                        f"Use --method {' or '.join(RELEASED)} with it, or leave it out.")


def protocol_captions(protocol: str, captions: list[str]) -> list[str]:
    """zscir's own methods' texts of one query, whose features are averaged: FashionIQ's two
    captions in both orders joined with " and ", else the one caption."""
    if protocol == "fashioniq":
        return [f"{captions[0]} and {captions[1]}", f"{captions[1]} and {captions[0]}"]
    return [captions[0]]


@dataclass
class QueryMethod:
    name: str
    backbone: Backbone
    mapper: Mapper | None = None
    run: Artifact | None = None
    adapters: ComposingAdapters | None = None
    released: ReleasedMapper | None = None  # a released mapper (run is None)
    weights: dict[str, Any] | None = None  # its file: name, sha256, source as given

    @property
    def raw_reference(self) -> bool:
        """Whether `encode` takes the references' image features before normalisation."""
        return self.released is not None

    def captions(self, protocol: str, captions: list[str]) -> list[str]:
        """The texts of one query under a benchmark's protocol (features averaged when several)."""
        if self.released is not None:
            return self.released.release.captions(protocol, captions)
        return protocol_captions(protocol, captions)

    @property
    def needs_tokens(self) -> bool:
        """Whether references must come with their spatial tokens (VSI)."""
        return self.mapper is not None and bool(self.mapper.cfg.vsi_layers)

    @property
    def grid(self) -> int:
        return self.mapper.cfg.grid if self.mapper is not None else 4

    @property
    def prompt(self) -> str | None:
        if self.mapper is None:
            return None
        return COMPOSE_PROMPT.replace("$", self.mapper.cfg.placeholder)

    def encode(self, ref_v: np.ndarray, texts: list[str], ref_tokens: np.ndarray | None = None,
               batch_size: int = 256) -> np.ndarray:
        """(Q, D) reference features (normalised; as the image tower gives them when
        `raw_reference`) (+ (Q, M, D) tokens) and Q texts -> (Q, D) normalised query features."""
        if self.released is not None:
            return self._encode_released(np.asarray(ref_v, dtype=np.float32), texts, batch_size)
        ref = torch.nn.functional.normalize(torch.from_numpy(np.asarray(ref_v, dtype=np.float32)), dim=-1)
        if self.name == "image":
            return ref.numpy()
        if self.mapper is None:
            txt = torch.cat([self.backbone.encode_texts(texts[i:i + batch_size]).cpu()
                             for i in range(0, len(texts), batch_size)]) if texts else ref[:0]
            if self.name == "text":
                return txt.numpy()
            return torch.nn.functional.normalize(ref + txt, dim=-1).numpy()
        if self.needs_tokens and ref_tokens is None:
            raise ValueError("this method needs the references' spatial tokens")
        cfg = self.mapper.cfg
        encoder = TextEncoder(self.backbone.model, cfg.placeholder_id)
        device = self.backbone.device
        out = []
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                tokens, mask = compose_tokens(self.backbone.tokenizer, texts[s:s + batch_size], cfg.placeholder,
                                              cfg.placeholder_id)
                v = ref[s:s + batch_size].to(device)
                vis = (torch.from_numpy(np.asarray(ref_tokens[s:s + batch_size], dtype=np.float32)).to(device)
                       if self.needs_tokens else None)
                hooks = self.adapters.hooks() if self.adapters is not None else None
                out.append(self.mapper.encode(encoder, tokens.to(device), v, vis, extra_hooks=hooks,
                                              mask=mask.to(device)).cpu())
        return torch.cat(out).numpy() if out else ref[:0].numpy()

    def _encode_released(self, raw_v: np.ndarray, texts: list[str], batch_size: int) -> np.ndarray:
        released = self.released
        assert released is not None
        pid = released.placeholder_id(self.backbone.tokenizer)
        encoder = TextEncoder(self.backbone.model, pid)
        out = [np.zeros((0, self.backbone.embed_dim), np.float32)]
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                v = torch.from_numpy(raw_v[s:s + batch_size]).to(self.backbone.device)
                out.append(released.encode(encoder, self.backbone.tokenizer, v, texts[s:s + batch_size], pid).cpu().numpy())
        return np.concatenate(out)


def load_method(ctx: Context, name: str, backbone: Backbone, run: str | None = None,
                weights: str | None = None) -> QueryMethod:
    """A method ready to encode queries; trained methods find their newest run for the backbone,
    `weights` makes searle, lincir or pic2word the released mapper of that file."""
    check_method(name, weights)
    if weights is not None or (name in RELEASED and name not in TRAINED):
        variant, mapper, info = open_release(ctx, name, backbone, weights, run)
        return QueryMethod(name, variant, released=mapper, weights=info)
    if name in BASELINES:
        return QueryMethod(name, backbone)
    if name == "tscir":
        art = find_stage2(ctx, backbone.spec, run)
        mapper, adapters = load_stage2(ctx, art, backbone.device)
        return QueryMethod(name, backbone, mapper, art, adapters)
    art = find_stage1(ctx, backbone.spec, name, run)
    return QueryMethod(name, backbone, load_mapper(art, backbone.device), art)


def available_methods(ctx: Context, backbone: Backbone) -> list[str]:
    """Baselines, plus each trained method that has a run for this backbone."""
    out = list(BASELINES)
    for name in TRAINED:
        try:
            load_method(ctx, name, backbone)
            out.append(name)
        except UserError:
            pass
    return out
