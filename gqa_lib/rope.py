"""Rotary position embedding (RoPE), as LLaMA uses it.

Each head vector is split into two halves (x1, x2); the pair (x1[i], x2[i]) is rotated by the angle
``position * base ** (-2 i / head_dim)``. This is the "rotate_half" layout of transformers' LLaMA,
so weights loaded from a transformers LLaMA model give the same numbers here.
"""

from __future__ import annotations

import torch
from torch import nn

from .layout import check_positive_int


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        check_positive_int("head_dim", head_dim)
        if head_dim % 2:
            raise ValueError(f"head_dim={head_dim} must be even for RoPE (it rotates pairs)")
        if not base > 0:
            raise ValueError(f"base={base!r} must be positive")
        self.head_dim = head_dim
        self.base = float(base)
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)  # (head_dim/2,)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin tables for integer ``positions`` of shape (seq,): each (seq, head_dim)."""
        angles = positions.to(self.inv_freq.dtype)[:, None] * self.inv_freq[None, :]  # (seq, head_dim/2)
        angles = torch.cat([angles, angles], dim=-1)  # (seq, head_dim)
        return angles.cos(), angles.sin()

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """Rotate ``x`` of shape (batch, heads, seq, head_dim); token t sits at position start_pos + t."""
        if x.ndim != 4 or x.shape[-1] != self.head_dim:
            raise ValueError(f"x.shape={tuple(x.shape)} must be (batch, heads, seq, {self.head_dim})")
        positions = torch.arange(start_pos, start_pos + x.shape[2], device=x.device)
        cos, sin = self.cos_sin(positions)
        x1, x2 = x.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
        return (x * cos.to(x.dtype) + rotated * sin.to(x.dtype)).to(x.dtype)
