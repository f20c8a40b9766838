"""Token mappers released by other zero-shot CIR projects, run as they were released.

Each release maps the reference's projected CLIP image feature, before normalisation, to one
token embedding that replaces a placeholder word of a fixed prompt; the text tower's feature
at the end-of-text token, normalised, is the query. What differs between them, as their own
evaluation code does it:

| release  | mapper file                          | placeholder          | prompt (CIRR, CIRCO, a query) | images    |
|----------|--------------------------------------|----------------------|-------------------------------|-----------|
| searle   | {'epoch', 'Phi'}: Phi's state dict   | the first '$'        | a photo of $ that {caption}   | targetpad |
| lincir   | {'epoch', 'Phi'}: the same layout    | every '$'            | a photo of $ that {caption}   | clip      |
| pic2word | 'state_dict_img2text' of a checkpoint | the first '*'       | a photo of * , {caption}      | clip      |

FashionIQ's two captions: SEARLE and LinCIR strip each of '.?, ', encode both orders joined
with " and " and average the two normalised features (normalised again); Pic2Word encodes the
second caption first, once. A file is read with `weights_only=True` (nothing in it runs), its
layout recognised, and every key and shape checked before a module is built.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zscir_cli.model.mapping import first_placeholders
from zscir_cli.model.text import TextEncoder, placeholder_token_id
from zscir_cli.model.weights import WeightsFileError, load_torch_file, strip_module_prefix

PHI, IM2TEXT = "Phi", "IM2TEXT"  # the two layouts, by their classes' names in the releases
TARGET_RATIO = 1.25  # SEARLE's targetpad


@dataclass(frozen=True)
class Release:
    """How one project runs its mapper at evaluation time."""

    name: str  # the --method
    title: str
    source: str  # where its code and weights are published
    layout: str  # PHI | IM2TEXT
    placeholder: str
    every: bool  # every placeholder token takes the mapped token (else the prompt's first)
    prompt: str  # CIRR, CIRCO and plain queries
    fashioniq: Callable[[str, str], list[str]]  # the two captions -> the texts whose features are averaged
    preprocess: str  # clip | targetpad: for references and gallery alike
    backbones: dict[int, tuple[str, str]]  # image feature width -> the OpenCLIP model and tag it was trained with
    files: str  # the published file names
    note: str = ""  # what zscir does that the release's own code does not say

    def captions(self, protocol: str, captions: list[str]) -> list[str]:
        """The texts of one query under `protocol` that go into the prompt; the features of
        several are averaged (FashionIQ)."""
        if protocol == "fashioniq":
            return self.fashioniq(captions[0], captions[1])
        return [captions[0]]

    def prompt_of(self, caption: str) -> str:
        return self.prompt.format(caption=caption)


def _both_orders(c1: str, c2: str) -> list[str]:
    a, b = c1.strip(".?, "), c2.strip(".?, ")
    return [f"{a} and {b}", f"{b} and {a}"]


def _second_first(c1: str, c2: str) -> list[str]:
    return [f"{c2} and {c1}"]


RELEASES: dict[str, Release] = {r.name: r for r in (
    Release("searle", "SEARLE", "github.com/miccunifi/SEARLE", PHI, "$", False, "a photo of $ that {caption}",
            _both_orders, "targetpad", {512: ("ViT-B-32", "openai"), 768: ("ViT-L-14", "openai")},
            "SEARLE_ViT-B32.pt (SEARLE), SEARLE_ViT-L14.pt (SEARLE-XL), from the project's GitHub release"),
    Release("lincir", "LinCIR", "github.com/navervision/lincir", PHI, "$", True, "a photo of $ that {caption}",
            _both_orders, "clip", {768: ("ViT-L-14", "openai")},
            "lincir_large.pt, in the Hugging Face repository navervision/zeroshot-cir-models"),
    Release("pic2word", "Pic2Word", "github.com/google-research/composed_image_retrieval", IM2TEXT, "*", False,
            "a photo of * , {caption}", _second_first, "clip", {768: ("ViT-L-14", "openai")},
            "pic2word_large.pt (navervision/zeroshot-cir-models on Hugging Face, or the project's own link)",
            note="Pic2Word has no CIRCO protocol of its own: zscir asks CIRCO with its CIRR prompt."),
)}
RELEASED = tuple(RELEASES)

FORMATS = ("SEARLE and LinCIR: a torch file holding {'epoch', 'Phi': state dict} (SEARLE_ViT-L14.pt, "
           "lincir_large.pt), or Phi's state dict alone (layers.0/3/6); Pic2Word: a torch checkpoint holding "
           "'state_dict_img2text' (pic2word_large.pt; only the mapper is read), or that state dict alone "
           "(layers.N.0, fc_out); any of the state dicts as .safetensors")


class Phi(nn.Module):
    """SEARLE's (and LinCIR's) token mapper: Linear-GELU-Dropout-Linear-GELU-Dropout-Linear."""

    def __init__(self, image_dim: int, hidden: int, width: int, dropout: float = 0.5):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(image_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                    nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout),
                                    nn.Linear(hidden, width))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.layers(v)


class Img2Text(nn.Module):
    """Pic2Word's IM2TEXT: n x [Linear, Dropout, ReLU], then `fc_out`."""

    def __init__(self, image_dim: int, middle: int, width: int, n_layer: int, dropout: float = 0.1):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(image_dim if i == 0 else middle, middle), nn.Dropout(dropout), nn.ReLU())
            for i in range(n_layer))
        self.fc_out = nn.Linear(middle, width)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            v = layer(v)
        return self.fc_out(v)


@dataclass
class ReleasedMapper:
    """A release's mapper read from its file: widths in (image feature) and out (token)."""

    release: Release
    module: nn.Module
    image_dim: int
    width: int
    path: Path

    def encode(self, encoder: TextEncoder, tokenizer: Callable, raw_v: torch.Tensor, captions: list[str],
               placeholder_id: int) -> torch.Tensor:
        """Unnormalised image features (B, D) and B captions (each put into the release's
        prompt) -> (B, E) normalised query features."""
        tokens = tokenizer([self.release.prompt_of(c) for c in captions]).to(raw_v.device)
        mask = tokens == placeholder_id if self.release.every else first_placeholders(tokens, placeholder_id, 1)
        feats = encoder(tokens, pseudo=self.module(raw_v.float()), truncate=True, placeholder_mask=mask)
        return F.normalize(feats.float(), dim=-1)

    def placeholder_id(self, tokenizer: Callable) -> int:
        return placeholder_token_id(tokenizer, self.release.placeholder)


# -- reading a file ----------------------------------------------------------------------------------

def read_mapper(path: str | os.PathLike, release: Release) -> ReleasedMapper:
    """The mapper of `release` in `path`; a file of another layout or release, a key or a shape
    that does not fit, a value that is not finite: a `WeightsFileError` that says what was
    expected."""
    path = Path(path)
    layout, state = _recognise(path, _read(path))
    if layout != release.layout:
        others = [r.title for r in RELEASES.values() if r.layout == layout]
        names = " or ".join(r.name for r in RELEASES.values() if r.layout == layout)
        raise WeightsFileError(f"{path} holds a {' or '.join(others)} mapper ({layout}), not {release.title}'s "
                               f"({release.layout}). Pass it with --method {names}, or give {release.title}'s "
                               f"file ({release.files}).")
    state = {k: v.float() for k, v in state.items()}
    bad = next((k for k, v in state.items() if not torch.isfinite(v).all()), None)
    if bad is not None:
        raise WeightsFileError(f"{path}: '{bad}' holds values that are not finite numbers (NaN or infinity); "
                               "the file is damaged.")
    module, image_dim, width = (_build_phi if layout == PHI else _build_img2text)(path, state)
    module.load_state_dict(state, strict=True)
    return ReleasedMapper(release, module.eval(), image_dim, width, path)


def _read(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise WeightsFileError(f"{path} is not a safetensors file that can be read ({e}).") from None
    return load_torch_file(path)


def _recognise(path: Path, obj: Any) -> tuple[str, dict[str, torch.Tensor]]:
    """(layout, the mapper's state dict) of what a file holds."""
    if isinstance(obj, dict):
        for key, layout in (("Phi", PHI), ("state_dict_img2text", IM2TEXT)):
            if isinstance(obj.get(key), dict):
                return layout, _tensors(path, strip_module_prefix(obj[key]), key)
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            state = strip_module_prefix(obj)
            if "fc_out.weight" in state:
                return IM2TEXT, _tensors(path, state, "the file")
            if "layers.0.weight" in state:
                return PHI, _tensors(path, state, "the file")
        shown = ", ".join(repr(k) for k in list(obj)[:8])
        raise WeightsFileError(f"{path} holds a dict with {shown or 'no keys'}: none of the released mappers' "
                               f"layouts. Expected {FORMATS}.")
    raise WeightsFileError(f"{path} holds {type(obj).__name__}, not a mapper's weights. Expected {FORMATS}.")


def _tensors(path: Path, state: dict, where: str) -> dict[str, torch.Tensor]:
    if not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise WeightsFileError(f"{path}: {where} is not a state dict (names to tensors).")
    return state


def _check_keys(path: Path, state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], what: str) -> None:
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = [f"{k} is {tuple(state[k].shape)}, expected {v}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != v]
    if missing or extra or shapes:
        parts = ([f"missing {', '.join(missing[:4])}"] if missing else []) + \
                ([f"unexpected {', '.join(extra[:4])}"] if extra else []) + shapes[:3]
        raise WeightsFileError(f"{path} is not a {what} state dict: {'; '.join(parts)}.")


def _build_phi(path: Path, state: dict[str, torch.Tensor]) -> tuple[nn.Module, int, int]:
    w0, w6 = state.get("layers.0.weight"), state.get("layers.6.weight")
    if w0 is None or w6 is None or w0.ndim != 2 or w6.ndim != 2:
        raise WeightsFileError(f"{path} is not a Phi state dict: it needs layers.0.weight and layers.6.weight "
                               "(Linear layers 0, 3 and 6).")
    hidden, image_dim = w0.shape
    width = w6.shape[0]
    expected = {"layers.0.weight": (hidden, image_dim), "layers.0.bias": (hidden,),
                "layers.3.weight": (hidden, hidden), "layers.3.bias": (hidden,),
                "layers.6.weight": (width, hidden), "layers.6.bias": (width,)}
    _check_keys(path, state, expected, "Phi (SEARLE/LinCIR)")
    return Phi(image_dim, hidden, width), image_dim, width


def _build_img2text(path: Path, state: dict[str, torch.Tensor]) -> tuple[nn.Module, int, int]:
    n_layer = 0
    while f"layers.{n_layer}.0.weight" in state:
        n_layer += 1
    w0, out = state.get("layers.0.0.weight"), state.get("fc_out.weight")
    if n_layer == 0 or w0 is None or out is None or w0.ndim != 2 or out.ndim != 2:
        raise WeightsFileError(f"{path} is not an IM2TEXT state dict: it needs layers.0.0.weight and "
                               "fc_out.weight.")
    middle, image_dim = w0.shape
    width = out.shape[0]
    expected = {"fc_out.weight": (width, middle), "fc_out.bias": (width,)}
    for i in range(n_layer):
        expected[f"layers.{i}.0.weight"] = (middle, image_dim if i == 0 else middle)
        expected[f"layers.{i}.0.bias"] = (middle,)
    _check_keys(path, state, expected, "IM2TEXT (Pic2Word)")
    return Img2Text(image_dim, middle, width, n_layer), image_dim, width


# -- images ------------------------------------------------------------------------------------------

class TargetPad:
    """SEARLE's `targetpad`: an image more elongated than `ratio` (long side / short side) is
    padded with black on both sides of its short side to that ratio; the model's own resize and
    centre crop follow, so less of it is cut away."""

    def __init__(self, ratio: float = TARGET_RATIO):
        self.ratio = ratio

    def __call__(self, image):
        from PIL import Image

        w, h = image.size
        if max(w, h) / min(w, h) < self.ratio:
            return image
        scaled = max(w, h) / self.ratio
        hp, vp = max(int((scaled - w) / 2), 0), max(int((scaled - h) / 2), 0)
        out = Image.new(image.mode, (w + 2 * hp, h + 2 * vp))  # zeros: black
        out.paste(image, (hp, vp))
        return out

    def __repr__(self) -> str:
        return f"TargetPad(ratio={self.ratio})"
