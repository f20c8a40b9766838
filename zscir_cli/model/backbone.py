"""Loading an OpenCLIP backbone from a name and a weights source.

`--model` is any OpenCLIP architecture, one of the configs shipped in `model/configs/`
(registered with `open_clip.add_model_config`), or an `hf-hub:`/`local-dir:` id that OpenCLIP
resolves itself. `--pretrained` is a zoo tag, a local weights file (.safetensors, or .pt/.bin
read with `weights_only=True`), or 'none' for random weights (tests and benchmarks).
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import open_clip
import torch

from zscir_cli.core.device import autocast
from zscir_cli.core.errors import close_matches
from zscir_cli.model.releases import TargetPad
from zscir_cli.model.tokenizers import tokenizer_of
from zscir_cli.model.weights import (
    WeightsFileError,
    WeightsMemo,
    hub_offline,
    hub_unreachable,
    read_torch_state,
)

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_MODEL = "ViT-L-14"  # the setting every peer reports
DEFAULT_PRETRAINED = "openai"
SCHEMAS = ("hf-hub:", "local-dir:")
RANDOM_WEIGHTS = ("none", "random")
PREPROCESSING = ("clip", "targetpad")  # how images are read into the model (`image_transform`)
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
RANDOM_INIT_SEED = 0

_registered = False


class BackboneError(ValueError):
    """A model that cannot be built from what was named.

    `kind` says which fix applies (`jobs.backbones` turns it into advice): unknown_model,
    unknown_tag, missing_file, local_dir, bad_file, unreachable, mismatch. `subject` is the
    name, tag or path at fault; `choices` the valid alternatives, when there are some.
    """

    def __init__(self, message: str, kind: str, subject: str = "", choices: tuple[str, ...] = ()):
        super().__init__(message)
        self.kind, self.subject, self.choices = kind, subject, choices


def register_configs() -> None:
    """Make our shipped architectures visible to open_clip (once)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def available_models() -> list[str]:
    register_configs()
    return open_clip.list_models()


# without a memo from the command's context, a process remembers the hashes it made (nowhere on disk)
_PROCESS_MEMO = WeightsMemo(None)


@dataclass(frozen=True)
class ModelSpec:
    """What a user names: an architecture and a weights source. `memo` remembers weights files'
    content hashes (the command's cache carries one; it is no part of the spec's value)."""

    name: str
    pretrained: str | None = None
    memo: WeightsMemo | None = field(default=None, compare=False, hash=False, repr=False)
    preprocess: str = "clip"  # clip: the model's own transform; targetpad: SEARLE's padding first

    def normalised(self) -> ModelSpec:
        pre = self.pretrained
        if pre is not None and pre.lower() in RANDOM_WEIGHTS:
            pre = None
        if pre is not None and _looks_like_path(pre):
            pre = str(Path(pre).expanduser().resolve())
        if self.name.startswith(SCHEMAS):
            pre = None  # OpenCLIP ignores `pretrained` for schema ids: so do we
        return ModelSpec(self.name, pre, self.memo, self.preprocess)

    @property
    def weights_file(self) -> str | None:
        """The local weights file this spec names, if it names one."""
        pre = self.normalised().pretrained
        return pre if pre is not None and _looks_like_path(pre) else None

    def identity(self) -> dict[str, Any]:
        """What binds an artifact to its model: the name, the zoo tag or the content hash of a
        weights file (never its path, so a moved cache keeps its artifacts), and the activation
        when the tag's own config overrides the architecture's.

        Two specs with the same identity encode images identically.
        """
        spec = self.normalised()
        path = spec.weights_file
        if path is not None:
            if not os.path.isfile(path):
                raise BackboneError(f"weights file not found: {path}", "missing_file", path)
            ident: dict[str, Any] = {"name": spec.name, "pretrained": None,
                                     "sha256": (self.memo or _PROCESS_MEMO).sha256(path)}
        else:
            ident = {"name": spec.name, "pretrained": spec.pretrained}
        if needs_quick_gelu(spec):
            ident["quick_gelu"] = True
        if spec.preprocess != "clip":  # images are read otherwise: other features (the plain transform adds no key)
            ident["preprocess"] = spec.preprocess
        return ident

    def label(self) -> str:
        spec = self.normalised()
        shown = "" if spec.preprocess == "clip" else f", {spec.preprocess} images"
        if not spec.pretrained:
            return spec.name + ("" if spec.name.startswith(SCHEMAS) else " (random weights)") + shown
        pre = spec.pretrained
        if os.path.isabs(pre):
            pre = Path(pre).name
        return f"{spec.name}/{pre}{shown}"


def identity_label(ident: dict[str, Any] | None) -> str:
    """How an artifact's model is named to a user, from its identity alone."""
    if not ident:
        return "an unknown model"
    if ident.get("sha256"):
        shown = f", {ident['preprocess']} images" if ident.get("preprocess") else ""
        return f"{ident['name']} (weights sha256 {str(ident['sha256'])[:12]}){shown}"
    return ModelSpec(ident["name"], ident.get("pretrained"), preprocess=ident.get("preprocess", "clip")).label()


def needs_quick_gelu(spec: ModelSpec) -> bool:
    """Whether the weights were trained with QuickGELU while the architecture's config says GELU.

    OpenCLIP keeps the activation in the architecture's config and the training activation in
    each zoo tag's config ('quick_gelu'); since 2.29 the plain names build nn.GELU, so OpenAI's
    and several other tags must be built with `force_quick_gelu`.
    """
    spec = spec.normalised()
    if spec.pretrained is None or spec.name.startswith(SCHEMAS) or _looks_like_path(spec.pretrained):
        return False
    register_configs()
    tag_cfg = open_clip.get_pretrained_cfg(spec.name, spec.pretrained) or {}
    arch_cfg = open_clip.get_model_config(spec.name) or {}
    return bool(tag_cfg.get("quick_gelu")) and not bool(arch_cfg.get("quick_gelu"))


def create_kwargs(spec: ModelSpec) -> dict[str, Any]:
    """The keyword arguments of `open_clip.create_model*` that follow from the weights."""
    return {"force_quick_gelu": needs_quick_gelu(spec)}


@dataclass
class Backbone:
    """A loaded model with everything needed to encode images and prompts."""

    model: torch.nn.Module
    preprocess: Any  # PIL image -> tensor (the eval transform)
    tokenizer: Any  # list[str] -> LongTensor (B, context)
    spec: ModelSpec
    device: torch.device

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[-1]) if _is_plain_clip(self.model) else \
            int(self.encode_texts(["x"]).shape[-1])

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor, normalise: bool = True) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, D) L2-normalised features (fp32); with
        `normalise=False` the projected features as the image tower gives them."""
        with autocast(self.device):
            feats = self.model.encode_image(images.to(self.device, non_blocking=True))
        return torch.nn.functional.normalize(feats.float(), dim=-1) if normalise else feats.float()

    def with_preprocess(self, kind: str) -> Backbone:
        """The same model reading images with the preprocessing `kind` (another spec: artifacts
        of its images get other keys)."""
        if kind == self.spec.preprocess:
            return self
        base = self.preprocess.transforms[1:] if self.spec.preprocess == "targetpad" else self.preprocess
        if self.spec.preprocess == "targetpad":
            from torchvision.transforms import Compose

            base = Compose(base)
        return Backbone(self.model, image_transform(base, kind), self.tokenizer, replace(self.spec, preprocess=kind),
                        self.device)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Plain prompts -> (B, D) L2-normalised features (fp32)."""
        tokens = self.tokenizer(texts).to(self.device)
        with autocast(self.device):
            feats = self.model.encode_text(tokens)
        return torch.nn.functional.normalize(feats.float(), dim=-1)


def load_backbone(spec: ModelSpec, *, cache_dir: Path | None = None,
                  device: torch.device | str = "cpu") -> Backbone:
    """Build the model and load its weights; every failure a user can fix is a BackboneError."""
    register_configs()
    spec = spec.normalised()
    check_spec(spec)
    kwargs: dict[str, Any] = {"device": device, **create_kwargs(spec)}
    oc_cache = str(Path(cache_dir) / "open_clip") if cache_dir is not None else None
    if oc_cache is not None:
        kwargs["cache_dir"] = oc_cache
    state = None
    if spec.weights_file is not None and not spec.weights_file.endswith(".safetensors"):
        try:  # read here, so that a pickle is only ever opened with weights_only=True
            state = read_torch_state(spec.weights_file)
        except WeightsFileError as e:
            raise BackboneError(f"Could not load {spec.label()}: {e}", "bad_file", spec.weights_file) from None
    offline = _unreachable(spec, oc_cache)
    try:
        # Random weights are seeded, so that 'random weights' names one model: an index built
        # with them in one process can be queried in another.
        with torch.random.fork_rng(devices=[]), hub_offline(offline is not None), _quiet_open_clip():
            torch.manual_seed(RANDOM_INIT_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.name, pretrained=None if state is not None else spec.pretrained, **kwargs)
        if state is not None:
            _load_state(model, state)
    except BackboneError:
        raise
    except Exception as e:  # OpenCLIP raises RuntimeError/OSError/ValueError for all of these
        raise _load_error(spec, e, offline) from e
    if spec.normalised().pretrained is not None:  # loaded weights, of a file or a tag: every value a number
        bad = next((k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
        if bad is not None:
            raise BackboneError(f"Could not load {spec.label()}: its weights hold values that are not finite numbers "
                                f"(NaN or infinity) in '{bad}'; the file is damaged, or was saved from a diverged run.",
                                "bad_file", spec.weights_file or spec.pretrained)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return Backbone(model, image_transform(preprocess, spec.preprocess), tokenizer_of(spec.name), spec, torch.device(device))


def image_transform(base: Any, kind: str) -> Any:
    """The model's own eval transform (`clip`), or SEARLE's padding to an aspect ratio of 1.25
    before it (`targetpad`)."""
    if kind == "clip":
        return base
    if kind != "targetpad":
        raise BackboneError(f"unknown image preprocessing '{kind}'", "mismatch", kind, PREPROCESSING)
    from torchvision.transforms import Compose

    return Compose([TargetPad(), *base.transforms])


def _load_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """OpenCLIP's `load_checkpoint` after its file read: the same key conversions, strict."""
    from open_clip import factory

    state = factory.convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = factory.convert_to_custom_text_state_dict(state)
    for name in ("logit_scale", "logit_bias"):
        own = getattr(model, name, None)
        if name in state and own is not None and own.ndim != state[name].ndim:
            state[name] = state[name].reshape(own.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    factory.resize_pos_embed(state, model)
    factory.resize_text_pos_embed(state, model)
    model.load_state_dict(state, strict=True)


def _unreachable(spec: ModelSpec, oc_cache: str | None) -> str | None:
    """Why the weights cannot be downloaded now, or None when nothing needs the network."""
    if spec.name.startswith("hf-hub:"):
        return hub_unreachable()
    if spec.pretrained is None or spec.name.startswith("local-dir:") or spec.weights_file:
        return None
    cfg = open_clip.get_pretrained_cfg(spec.name, spec.pretrained) or {}
    if cfg.get("file"):
        return None
    if cfg.get("hf_hub"):
        return hub_unreachable()  # cached files are still served in offline mode
    url = cfg.get("url", "")
    cached = Path(oc_cache or Path.home() / ".cache" / "clip") / os.path.basename(url)
    return None if not url or cached.is_file() else hub_unreachable(url)


class _DropOpenClipLogs(logging.Filter):
    """OpenCLIP logs a failure as an error and then raises it; we report the raise, once."""

    prefix = os.path.dirname(open_clip.__file__)

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.pathname.startswith(self.prefix)


@contextlib.contextmanager
def _quiet_open_clip():
    root, flt = logging.getLogger(), _DropOpenClipLogs()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def model_config(name: str) -> dict[str, Any] | None:
    register_configs()
    return open_clip.get_model_config(name)


def _looks_like_path(value: str) -> bool:
    return (os.sep in value or value.startswith((".", "~"))
            or value.lower().endswith(WEIGHT_SUFFIXES) or os.path.exists(value))


def _is_plain_clip(model: torch.nn.Module) -> bool:
    return hasattr(model, "token_embedding") and hasattr(model, "text_projection")


def check_spec(spec: ModelSpec) -> None:
    """Refuse a name or weights source that cannot work, before loading anything."""
    register_configs()
    if spec.name.startswith("local-dir:"):
        folder = Path(spec.name[len("local-dir:"):]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise BackboneError(f"{spec.name}: {folder} has no open_clip_config.json.", "local_dir",
                                str(folder))
        return
    if spec.name.startswith("hf-hub:"):
        return
    models = open_clip.list_models()
    if spec.name not in models:
        near = close_matches(spec.name, models)
        raise BackboneError(f"Unknown model '{spec.name}'."
                            + (f" Close choices: {', '.join(near)}." if near else ""),
                            "unknown_model", spec.name, tuple(near))
    pre = spec.normalised().pretrained
    if pre is None:
        return
    if _looks_like_path(pre):
        if not os.path.isfile(pre):
            raise BackboneError(f"weights file not found: {pre}", "missing_file", pre)
        return
    tags = open_clip.list_pretrained_tags_by_model(spec.name)
    if pre not in tags:
        raise BackboneError(f"'{pre}' is neither a file nor a pretrained tag of {spec.name}."
                            + (f" Tags: {', '.join(tags)}." if tags else " It has no zoo weights."),
                            "unknown_tag", pre, tuple(tags))


def _load_error(spec: ModelSpec, e: Exception, offline: str | None) -> BackboneError:
    text = f"{type(e).__name__}: {e}".splitlines()[0]
    if spec.name.startswith("hf-hub:") or (spec.pretrained and not spec.weights_file):
        what = spec.name if spec.pretrained is None else f"{spec.name} with weights '{spec.pretrained}'"
        why = (f"they are not in the local cache and the hub cannot be reached ({offline})"
               if offline else f"the download failed ({text[:200]})")
        return BackboneError(f"Could not fetch the weights of {what}: {why}.", "unreachable", spec.name)
    return BackboneError(f"Could not load {spec.label()}: {text[:300]}", "mismatch", spec.label())


def spec_from_identity(ident: dict[str, Any], weights: Path | None = None) -> ModelSpec:
    """The spec that rebuilds an identity; a weights file's identity needs the file's path."""
    if ident.get("sha256"):
        if weights is None:
            raise BackboneError(f"no file with the weights of {identity_label(ident)} is known",
                                "missing_file", str(ident["sha256"]))
        return ModelSpec(ident["name"], str(weights), preprocess=ident.get("preprocess", "clip"))
    return ModelSpec(ident["name"], ident.get("pretrained"), preprocess=ident.get("preprocess", "clip"))


__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PRETRAINED",
    "Backbone",
    "BackboneError",
    "ModelSpec",
    "asdict",
    "available_models",
    "identity_label",
    "load_backbone",
    "register_configs",
]
