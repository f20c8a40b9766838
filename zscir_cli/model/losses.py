"""Stage I and II losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Symmetric InfoNCE: row i of a (B, E) matches row i of b (B, E); both normalised."""
    logits = a @ b.T / temperature  # (B, B)
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def soft_text_alignment(t: torch.Tensor, u: torch.Tensor, temperature: float = 0.07,
                        target_temperature: float = 0.05) -> torch.Tensor:
    """KL(q_i || p_i) averaged over i, where

    q_i = softmax_j(u_i . u_j / tau_s): caption-to-caption similarity, so near-duplicate
          captions are soft positives rather than negatives;
    p_i = softmax_j(t_i . u_j / tau): the pseudo-word prompt against the batch's captions.
    """
    q = F.softmax(u @ u.T / target_temperature, dim=1)  # (B, B)
    log_p = F.log_softmax(t @ u.T / temperature, dim=1)  # (B, B)
    return F.kl_div(log_p, q, reduction="batchmean")


def candidate_logits(query: torch.Tensor, candidates: torch.Tensor, banned: torch.Tensor,
                     temperature: float = 0.07) -> torch.Tensor:
    """(B, C) logits of queries (B, E) over candidates (C, E); -inf where banned (B, C) is True,
    so a candidate that may show the query's target is neither a positive nor a negative.
    Stage II's loss is their cross-entropy against the index of each query's target."""
    logits = query @ candidates.T / temperature  # (B, C)
    return logits.masked_fill(banned, float("-inf"))
