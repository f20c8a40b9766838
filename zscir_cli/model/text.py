"""Encoding prompts that hold a pseudo-word.

The pseudo-word is one placeholder token of the prompt (default '$') whose input embedding
is replaced by a learned vector. Its id comes from the tokenizer, never a constant, and the
replacement is done by mask, so any number of placeholders at any position work. A prompt
without the placeholder encodes exactly as `model.encode_text` does.

By default every placeholder token is a pseudo-word. A prompt that embeds user text passes the
mask of the positions its template put there (`placeholder_mask`), so a '$' the user typed
("make it $5 cheaper") stays an ordinary token.

`TextEncoder` re-runs OpenCLIP's text tower block by block so that later stages can insert
modules after chosen blocks (`block_hooks`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

DEFAULT_PLACEHOLDER = "$"

# A hook receives the hidden states (B, L, C) after a block, the tokens (B, L) and the
# placeholder mask (B, L), and returns new hidden states.
BlockHook = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def placeholder_token_id(tokenizer, placeholder: str = DEFAULT_PLACEHOLDER) -> int:
    """The id of `placeholder` in this tokenizer; it must be exactly one BPE token."""
    row = tokenizer([placeholder])[0].tolist()
    special = {0}
    for name in ("sot_token_id", "eot_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            special.add(value)
    ids = [t for t in row if t not in special]
    if len(ids) != 1:
        raise ValueError(f"The placeholder '{placeholder}' is {len(ids)} tokens for this tokenizer, "
                         "not a single token such as '$' or '*'.")
    return int(ids[0])


class TextEncoder(nn.Module):
    """OpenCLIP's CLIP text tower with pseudo-word injection and per-block hooks.

    Holds a reference to the (frozen) CLIP model; it does not own its parameters, so a
    state_dict of a module built on it carries only the trainable parts.
    """

    def __init__(self, clip: nn.Module, placeholder_id: int):
        super().__init__()
        for attr in ("token_embedding", "positional_embedding", "transformer", "ln_final",
                     "text_projection"):
            if not hasattr(clip, attr):
                raise ValueError("This model's text tower is not an OpenAI-style CLIP transformer "
                                 f"(no '{attr}'), which the pseudo-word method needs; CLIP "
                                 "architectures such as ViT-L-14 or ViT-B-32 have one.")
        object.__setattr__(self, "clip", clip)  # not a submodule: see the class docstring
        self.placeholder_id = int(placeholder_id)

    @property
    def width(self) -> int:
        return int(self.clip.token_embedding.weight.shape[1])

    @property
    def can_truncate(self) -> bool:
        """Truncation is exact only for a causal mask and end-of-text (argmax) pooling."""
        return self.clip.attn_mask is not None and getattr(self.clip, "text_pool_type", "argmax") == "argmax"

    @property
    def depth(self) -> int:
        return len(self.clip.transformer.resblocks)

    def forward(self, tokens: torch.Tensor, pseudo: torch.Tensor | None = None,
                block_hooks: dict[int, Sequence[BlockHook]] | None = None,
                truncate: bool = False, placeholder_mask: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, L); pseudo (B, C) or None -> unnormalised features (B, D).

        `placeholder_mask` (B, L) marks the positions that take `pseudo` (and that VSI hooks see);
        None marks every placeholder token.

        `block_hooks[i]` run after block i (1-based, as the paper counts layers); `block_hooks[0]`
        run on the token embeddings (with positions added), before the first block.
        `truncate` drops the padding after the batch's last end-of-text token before running the
        tower. Under CLIP's causal mask no position attends to a later one, so the pooled
        end-of-text feature is the same (up to float rounding), while "a photo of $" costs 6
        positions instead of 77.
        """
        clip = self.clip
        attn_mask = clip.attn_mask
        pos = clip.positional_embedding
        mask = tokens == self.placeholder_id if placeholder_mask is None else placeholder_mask  # (B, L)
        if truncate and self.can_truncate:
            length = int(tokens.argmax(dim=-1).max()) + 1
            tokens, pos, mask = tokens[:, :length], pos[:length], mask[:, :length]
            attn_mask = attn_mask[:length, :length]
        cast_dtype = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(tokens).to(cast_dtype)  # (B, L, C)
        if pseudo is not None:
            x = torch.where(mask.unsqueeze(-1), pseudo.to(cast_dtype).unsqueeze(1), x)
        x = x + pos.to(cast_dtype)
        batch_first = getattr(clip.transformer, "batch_first", True)
        for hook in (block_hooks or {}).get(0, ()):
            x = hook(x, tokens, mask)
        if not batch_first:
            x = x.transpose(0, 1)
        for i, block in enumerate(clip.transformer.resblocks, start=1):
            x = block(x, attn_mask=attn_mask)
            for hook in (block_hooks or {}).get(i, ()):
                if batch_first:
                    x = hook(x, tokens, mask)
                else:
                    x = hook(x.transpose(0, 1), tokens, mask).transpose(0, 1)
        if not batch_first:
            x = x.transpose(0, 1)
        x = clip.ln_final(x)  # (B, L, C)
        x = _pool(clip, x, tokens)  # (B, C)
        proj = clip.text_projection
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj  # (B, D)


def _pool(clip: nn.Module, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    pool_type = getattr(clip, "text_pool_type", "argmax")
    rows = torch.arange(x.shape[0], device=x.device)
    if pool_type == "argmax":  # the EOT token has the highest id
        return x[rows, tokens.argmax(dim=-1)]
    if pool_type == "eos":
        eos = getattr(clip, "text_eos_id", None)
        return x[rows, (tokens == eos).int().argmax(dim=-1)]
    if pool_type == "first":
        return x[:, 0]
    if pool_type == "last":
        return x[:, -1]
    return x
