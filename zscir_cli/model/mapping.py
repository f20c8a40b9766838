"""Stage I modules: the token learner (phi) and visual semantic injection (VSI) blocks.

`Mapper` holds only trainable parts; the frozen CLIP is reached through a `TextEncoder`, so a
mapper's state_dict (and its safetensors file) carries phi and the VSI blocks alone. A JSON
config beside the weights rebuilds it: `Mapper(MappingConfig(**json))`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zscir_cli.model.text import TextEncoder

WEIGHTS = "weights.safetensors"
CONFIG = "config.json"
PROMPT = "a photo of $"  # Stage I training prompt
COMPOSE_PROMPT = "a photo of $ that {text}"  # the composed query (CIRR/CIRCO protocol)


def first_placeholders(tokens: torch.Tensor, placeholder_id: int, count: int) -> torch.Tensor:
    """(B, L) bool: the first `count` placeholder tokens of each row of tokens (B, L)."""
    hits = tokens == placeholder_id
    return hits & (hits.cumsum(dim=1) <= count)


def compose_tokens(tokenizer: Callable, texts: Sequence[str], placeholder: str,
                   placeholder_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (B, L) of COMPOSE_PROMPT for each modification text, and the mask (B, L) of the
    template's pseudo-word.

    The template puts its placeholder before the text, so it is the first placeholder token of
    each row; one the user typed ("make it $5 cheaper") comes later and stays an ordinary word.
    """
    template = COMPOSE_PROMPT.replace("$", placeholder)
    tokens = tokenizer([template.format(text=t) for t in texts])
    own = template.split("{text}")[0].count(placeholder)
    return tokens, first_placeholders(tokens, placeholder_id, own)


@dataclass
class MappingConfig:
    image_dim: int  # D: the image tower's output width
    text_width: int  # W: the text tower's token width
    text_depth: int  # blocks in the text tower
    token_dim: int  # width of the visual tokens fed to VSI (= D here)
    placeholder: str = "$"  # the pseudo-word in prompts
    placeholder_id: int = -1  # its token id, resolved from the tokenizer
    hidden_mult: int = 4  # token learner hidden width = hidden_mult x W (as SEARLE's phi)
    dropout: float = 0.5  # token learner dropout
    vsi_layers: list[int] = field(default_factory=list)  # 1-based blocks followed by VSI; [] = off
    vsi_heads: int = 4  # cross-attention heads (W must divide by it)
    vsi_scope: str = "placeholder"  # placeholder: only the pseudo-word's position; all: every position
    grid: int = 4  # spatial tokens pooled to grid x grid (M = 1 + grid^2 at most)

    @staticmethod
    def default_vsi_layers(depth: int, count: int = 4) -> list[int]:
        """`count` layers spread over the depth: 3, 6, 9, 12 of 12; 1, 2 of 2."""
        return sorted({max(1, round(depth * k / count)) for k in range(1, count + 1)})


class TokenLearner(nn.Module):
    """phi: image feature v (B, D) -> pseudo-word embedding s (B, W). 3 linear layers, GELU."""

    def __init__(self, image_dim: int, width: int, hidden_mult: int = 4, dropout: float = 0.5):
        super().__init__()
        hidden = hidden_mult * width
        self.net = nn.Sequential(
            nn.Linear(image_dim, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, width))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.net(v)  # (B, W)


class VSIBlock(nn.Module):
    """h <- h + tanh(g) * CrossAttn(LN(h), K=W_k T, V=W_v T) at the chosen positions.

    The gate g starts at 0, so training starts from plain token injection.
    """

    def __init__(self, width: int, token_dim: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"VSI heads ({heads}) must divide the text width ({width}).")
        self.ln = nn.LayerNorm(width)
        self.to_width = nn.Linear(token_dim, width)  # visual tokens -> text width
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.gate = nn.Parameter(torch.zeros(1))

    def forward(self, h: torch.Tensor, mask: torch.Tensor, visual: torch.Tensor,
                scope: str = "placeholder") -> torch.Tensor:
        """h (B, L, W); mask (B, L) placeholder positions; visual (B, M, Dt)."""
        t = self.to_width(visual.to(h.dtype))  # (B, M, W)
        out, _ = self.attn(self.ln(h), t, t, need_weights=False)  # (B, L, W)
        if scope == "placeholder":
            where = mask
        else:  # every position, but only of prompts that hold a pseudo-word
            where = mask.any(dim=1, keepdim=True).expand_as(mask)
        return h + torch.tanh(self.gate) * out * where.unsqueeze(-1).to(h.dtype)


class Mapper(nn.Module):
    """Stage I: phi plus the VSI blocks. `encode` runs the frozen text tower with both."""

    def __init__(self, cfg: MappingConfig):
        super().__init__()
        if cfg.vsi_scope not in ("placeholder", "all"):
            raise ValueError(f"Unknown VSI scope '{cfg.vsi_scope}': placeholder or all.")
        bad = [i for i in cfg.vsi_layers if not 1 <= i <= cfg.text_depth]
        if bad:
            raise ValueError(f"VSI layers {','.join(map(str, bad))} outside the text encoder's "
                             f"depth (blocks 1..{cfg.text_depth}).")
        self.cfg = cfg
        self.phi = TokenLearner(cfg.image_dim, cfg.text_width, cfg.hidden_mult, cfg.dropout)
        self.vsi = nn.ModuleDict({str(i): VSIBlock(cfg.text_width, cfg.token_dim, cfg.vsi_heads)
                                  for i in cfg.vsi_layers})

    def hooks(self, visual: torch.Tensor | None) -> dict[int, list]:
        if visual is None or not self.cfg.vsi_layers:
            return {}
        scope = self.cfg.vsi_scope
        return {int(i): [lambda x, _tok, mask, blk=blk: blk(x, mask, visual, scope)]
                for i, blk in self.vsi.items()}

    def encode(self, encoder: TextEncoder, tokens: torch.Tensor, v: torch.Tensor,
               visual: torch.Tensor | None = None, extra_hooks: dict[int, list] | None = None,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, L) holding the placeholder; v (B, D); visual (B, M, D) -> (B, E) normalised.

        mask (B, L): the pseudo-word positions (see `compose_tokens`); None: every placeholder.
        """
        hooks = self.hooks(visual)
        for i, fns in (extra_hooks or {}).items():
            hooks[i] = hooks.get(i, []) + list(fns)
        feats = encoder(tokens, pseudo=self.phi(v), block_hooks=hooks, truncate=True, placeholder_mask=mask)
        return F.normalize(feats.float(), dim=-1)

    # -- persistence ------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(folder / WEIGHTS))
        (folder / CONFIG).write_text(json.dumps(asdict(self.cfg), indent=2) + "\n")

    @staticmethod
    def load(folder: Path, device: torch.device | str = "cpu") -> Mapper:
        from safetensors.torch import load_file

        cfg = MappingConfig(**json.loads((Path(folder) / CONFIG).read_text()))
        mapper = Mapper(cfg)
        load_strict(mapper, load_file(str(Path(folder) / WEIGHTS)), Path(folder) / WEIGHTS)
        return mapper.to(device).eval()


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """load_state_dict with a key-by-key account of what does not match."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or extra or shapes:
        parts = ([f"missing {missing[:3]}"] if missing else []) + \
                ([f"unexpected {extra[:3]}"] if extra else []) + shapes[:3]
        raise ValueError(f"{source} does not fit its config: " + "; ".join(parts) + "; the run is "
                         "damaged or from another version.")
    module.load_state_dict(state)
