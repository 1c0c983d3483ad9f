"""How different the attention heads of one layer are from each other.

Head diversity here is the mean, over pairs of heads, of the Jensen-Shannon distance between their
attention distributions, averaged over query positions. Each row of an attention map is a
probability distribution over keys, so the distance is defined row by row; it is 0 when two heads
attend identically and at most 1 (log base 2) when they attend to disjoint tokens.
"""

from __future__ import annotations

import torch


def _check_maps(weights: torch.Tensor) -> torch.Tensor:
    if weights.ndim != 3 or weights.shape[1] != weights.shape[2]:
        raise ValueError(f"weights.shape={tuple(weights.shape)} must be (n_heads, seq, seq)")
    return weights.double()


def js_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon distance (base 2, in [0, 1]) between distributions along the last dim."""
    m = 0.5 * (p + q)

    def kl(a, b):
        return torch.where(a > 0, a * (torch.log2(a.clamp_min(1e-300)) - torch.log2(b.clamp_min(1e-300))), 0.0).sum(-1)

    return (0.5 * kl(p, m) + 0.5 * kl(q, m)).clamp_min(0).sqrt()


def pairwise_head_distance(weights: torch.Tensor) -> torch.Tensor:
    """(n_heads, n_heads) matrix: mean over query positions of the JS distance between two heads' rows.

    ``weights``: (n_heads, seq, seq) attention maps of one layer and one sentence. The first query
    position is skipped: with a causal mask it can only attend to itself, in every head.
    """
    w = _check_maps(weights)[:, 1:, :]  # (n_heads, seq - 1, seq)
    # every pair at once: (n_heads, 1, seq-1, seq) against (1, n_heads, seq-1, seq)
    return js_distance(w[:, None], w[None, :]).mean(-1)  # (n_heads, n_heads)


def head_diversity(weights: torch.Tensor) -> float:
    """Mean pairwise JS distance between all heads of a layer (0 = all heads attend alike)."""
    d = pairwise_head_distance(weights)
    h = d.shape[0]
    if h < 2:
        return 0.0
    return float(d.sum() / (h * (h - 1)))


def within_across_diversity(weights: torch.Tensor, group_size: int) -> tuple[float, float]:
    """Mean pairwise distance for head pairs in the same group and in different groups.

    Groups are contiguous: query heads i and j share a KV head when i // group_size == j // group_size.
    Returns (within, across); within is nan when group_size == 1, across is nan with one group.
    """
    d = pairwise_head_distance(weights)
    h = d.shape[0]
    if group_size < 1 or h % group_size:
        raise ValueError(f"group_size={group_size} must divide n_heads={h}")
    kv_head_of = torch.arange(h) // group_size
    same = (kv_head_of[:, None] == kv_head_of[None, :]) & ~torch.eye(h, dtype=torch.bool)
    diff = kv_head_of[:, None] != kv_head_of[None, :]
    within = float(d[same].mean()) if same.any() else float("nan")
    across = float(d[diff].mean()) if diff.any() else float("nan")
    return within, across
