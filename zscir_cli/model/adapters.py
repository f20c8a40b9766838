"""Stage II modules: composing adapters in the text encoder.

A bottleneck adapter after a text block: h + W_up(GELU(W_down(LN(h)))). W_up starts at zero,
so a fresh set of adapters leaves the Stage I encoder exactly as it was. Layer 0 is an adapter
on the token embeddings (positions added), before the first block: it lets Stage II re-map
the words of modification texts, which a text tower may know poorly, before any attention.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from zscir_cli.model.mapping import load_strict

WEIGHTS = "adapters.safetensors"
EMBEDDING_POSITIONS = ("all", "pseudo-word", "words")
CONFIG = "adapters.json"


@dataclass
class AdapterConfig:
    width: int  # text token width W
    depth: int  # blocks in the text tower
    dim: int = 64  # bottleneck width
    layers: list[int] = field(default_factory=list)  # 1-based blocks followed by an adapter; 0: embeddings
    # which token positions the embedding adapter (layer 0) changes: every one, or only the
    # pseudo-word's ("pseudo-word") or only the words' ("words"); the block adapters change all
    embedding_positions: str = "all"


class Adapter(nn.Module):
    def __init__(self, width: int, dim: int):
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.down = nn.Linear(width, dim)
        self.act = nn.GELU()
        self.up = nn.Linear(dim, width)
        nn.init.zeros_(self.up.weight)  # start as the identity
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, L, W) -> (B, L, W)
        return h + self.up(self.act(self.down(self.ln(h))))


class ComposingAdapters(nn.Module):
    def __init__(self, cfg: AdapterConfig):
        super().__init__()
        layers = cfg.layers or list(range(1, cfg.depth + 1))
        bad = [i for i in layers if not 0 <= i <= cfg.depth]
        if bad:
            raise ValueError(f"Adapter layers {','.join(map(str, bad))} outside the text encoder's depth "
                             f"(blocks 1..{cfg.depth}; 0: on the token embeddings).")
        if cfg.embedding_positions not in EMBEDDING_POSITIONS:
            raise ValueError(f"Unknown embedding adapter positions '{cfg.embedding_positions}' "
                             f"(one of {', '.join(EMBEDDING_POSITIONS)}).")
        self.cfg = AdapterConfig(cfg.width, cfg.depth, cfg.dim, layers, cfg.embedding_positions)
        self.blocks = nn.ModuleDict({str(i): Adapter(cfg.width, cfg.dim) for i in layers})

    def hooks(self) -> dict[int, list]:
        hooks = {int(i): [lambda x, _tok, _mask, a=a: a(x)] for i, a in self.blocks.items()}
        where = self.cfg.embedding_positions
        if "0" in self.blocks and where != "all":
            a = self.blocks["0"]
            keep = (lambda m: m) if where == "pseudo-word" else (lambda m: ~m)
            hooks[0] = [lambda x, _tok, mask: torch.where(keep(mask).unsqueeze(-1), a(x), x)]
        return hooks

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(folder / WEIGHTS))
        (folder / CONFIG).write_text(json.dumps(asdict(self.cfg), indent=2) + "\n")

    @staticmethod
    def load(folder: Path, device: torch.device | str = "cpu") -> ComposingAdapters:
        from safetensors.torch import load_file

        adapters = ComposingAdapters(AdapterConfig(**json.loads((Path(folder) / CONFIG).read_text())))
        load_strict(adapters, load_file(str(Path(folder) / WEIGHTS)), Path(folder) / WEIGHTS)
        return adapters.to(device).eval()
