"""Loading an OpenCLIP backbone from a name and a weights source.

`--model` is any OpenCLIP architecture, one of the configs shipped in `model/configs/`
(registered with `open_clip.add_model_config`), or an `hf-hub:`/`local-dir:` id that OpenCLIP
resolves itself. `--pretrained` is a zoo tag, a local weights file (.safetensors, or .pt/.bin
read with `weights_only=True`), or 'none' for random weights (tests and benchmarks).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from zscir_cli.core.errors import UserError, close_matches
from zscir_cli.core.jsonutil import file_sha256

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_MODEL = "ViT-L-14"  # the setting every peer reports
DEFAULT_PRETRAINED = "openai"
SCHEMAS = ("hf-hub:", "local-dir:")
RANDOM_WEIGHTS = ("none", "random")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
RANDOM_INIT_SEED = 0

_registered = False


def register_configs() -> None:
    """Make our shipped architectures visible to open_clip (once)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def available_models() -> list[str]:
    register_configs()
    return open_clip.list_models()


@dataclass(frozen=True)
class ModelSpec:
    """What a user names: an architecture and a weights source."""

    name: str
    pretrained: str | None = None

    def normalised(self) -> ModelSpec:
        pre = self.pretrained
        if pre is not None and pre.lower() in RANDOM_WEIGHTS:
            pre = None
        if pre is not None and _looks_like_path(pre):
            pre = str(Path(pre).expanduser().resolve())
        if self.name.startswith(SCHEMAS):
            pre = None  # OpenCLIP ignores `pretrained` for schema ids: so do we
        return ModelSpec(self.name, pre)

    def identity(self) -> dict[str, Any]:
        """What binds an artifact to its model: the name, the weights, and for files their hash.

        Two specs with the same identity encode images identically.
        """
        spec = self.normalised()
        ident: dict[str, Any] = {"name": spec.name, "pretrained": spec.pretrained}
        if spec.pretrained and os.path.isfile(spec.pretrained):
            ident["sha256"] = _cached_sha256(Path(spec.pretrained))
        return ident

    def label(self) -> str:
        spec = self.normalised()
        if not spec.pretrained:
            return spec.name + ("" if spec.name.startswith(SCHEMAS) else " (random weights)")
        pre = spec.pretrained
        if os.path.isabs(pre):
            pre = Path(pre).name
        return f"{spec.name}/{pre}"


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
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, D) L2-normalised features (fp32)."""
        from zscir_cli.core.device import autocast

        with autocast(self.device):
            feats = self.model.encode_image(images.to(self.device, non_blocking=True))
        return torch.nn.functional.normalize(feats.float(), dim=-1)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Plain prompts -> (B, D) L2-normalised features (fp32)."""
        from zscir_cli.core.device import autocast

        tokens = self.tokenizer(texts).to(self.device)
        with autocast(self.device):
            feats = self.model.encode_text(tokens)
        return torch.nn.functional.normalize(feats.float(), dim=-1)


def load_backbone(spec: ModelSpec, *, cache_dir: Path | None = None,
                  device: torch.device | str = "cpu") -> Backbone:
    """Build the model and load its weights, turning every failure a user can fix into a UserError."""
    register_configs()
    spec = spec.normalised()
    check_spec(spec)
    kwargs: dict[str, Any] = {"device": device}
    if cache_dir is not None:
        kwargs["cache_dir"] = str(Path(cache_dir) / "open_clip")
    try:
        # Random weights are seeded, so that 'random weights' names one model: an index built
        # with them in one process can be queried in another.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.name, pretrained=spec.pretrained, **kwargs)
    except UserError:
        raise
    except Exception as e:  # OpenCLIP raises RuntimeError/OSError/ValueError for all of these
        raise _load_error(spec, e) from e
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(spec.name)
    return Backbone(model, preprocess, tokenizer, spec, torch.device(device))


def model_config(name: str) -> dict[str, Any] | None:
    register_configs()
    return open_clip.get_model_config(name)


def write_config_sidecar(name: str, path: Path) -> None:
    """Write the architecture's JSON config beside weights, so a reader can rebuild it."""
    cfg = model_config(name)
    path.write_text(json.dumps({"model_name": name, "model_cfg": cfg}, indent=2) + "\n")


# -- helpers ------------------------------------------------------------------------------------

def _looks_like_path(value: str) -> bool:
    return (os.sep in value or value.startswith((".", "~"))
            or value.lower().endswith(WEIGHT_SUFFIXES) or os.path.exists(value))


def _is_plain_clip(model: torch.nn.Module) -> bool:
    return hasattr(model, "token_embedding") and hasattr(model, "text_projection")


def check_spec(spec: ModelSpec) -> None:
    """Refuse, with the fix, a name or weights source that cannot work, before loading anything."""
    register_configs()
    if spec.name.startswith("local-dir:"):
        folder = Path(spec.name[len("local-dir:"):]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise UserError(f"--model {spec.name}: {folder} has no open_clip_config.json.",
                            "A local-dir: model is a folder with open_clip_config.json and its "
                            "weights (open_clip_model.safetensors).")
        return
    if spec.name.startswith("hf-hub:"):
        return
    models = open_clip.list_models()
    if spec.name not in models:
        near = close_matches(spec.name, models)
        raise UserError(f"Unknown model '{spec.name}'."
                        + (f" Close choices: {', '.join(near)}." if near else ""),
                        "Run 'zscir models' to list every architecture.")
    pre = spec.pretrained
    if pre is None:
        return
    if _looks_like_path(pre):
        if not os.path.isfile(pre):
            raise UserError(f"--pretrained file not found: {pre}.",
                            "Give the path of a .safetensors, .pt or .bin checkpoint, or a zoo tag.")
        return
    tags = open_clip.list_pretrained_tags_by_model(spec.name)
    if pre not in tags:
        raise UserError(f"'{pre}' is neither a file nor a pretrained tag of {spec.name}."
                        + (f" Tags: {', '.join(tags)}." if tags else " It has no zoo weights."),
                        "Use one of its tags, a local weights file, or 'none' for random weights.")


def _load_error(spec: ModelSpec, e: Exception) -> UserError:
    text = f"{type(e).__name__}: {e}"
    fetchable = spec.name.startswith("hf-hub:") or (spec.pretrained and not os.path.isfile(spec.pretrained))
    if fetchable:
        what = spec.name if spec.pretrained is None else f"{spec.name} with weights '{spec.pretrained}'"
        return UserError(
            f"Could not fetch the weights of {what}: this machine cannot download them "
            f"({text.splitlines()[0][:200]}).",
            "Either pass a local checkpoint (--pretrained /path/to/weights.safetensors, or "
            "--model local-dir:/path), or run 'zscir demo', which trains a small CLIP offline.")
    return UserError(f"Could not load {spec.label()}: {text.splitlines()[0][:300]}",
                     "Check that the checkpoint matches the architecture named by --model.")


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def _cached_sha256(path: Path) -> str:
    st = path.stat()
    memo_key = (str(path), st.st_size, st.st_mtime_ns)
    if memo_key not in _HASH_MEMO:
        _HASH_MEMO[memo_key] = file_sha256(path)
    return _HASH_MEMO[memo_key]


def spec_from_identity(ident: dict[str, Any]) -> ModelSpec:
    return ModelSpec(ident["name"], ident.get("pretrained"))


__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PRETRAINED",
    "Backbone",
    "ModelSpec",
    "asdict",
    "available_models",
    "load_backbone",
    "register_configs",
]
