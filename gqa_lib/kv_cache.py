"""A KV cache that stores only the KV heads: (batch, n_kv_heads, max_len, head_dim) for K and for V."""

from __future__ import annotations

import torch

from .layout import check_positive_int


class KVCache:
    """Keys and values of the tokens seen so far, for one attention layer.

    Space for ``max_len`` tokens is taken once, up front, so ``nbytes`` is exactly what
    ``kv_cache_bytes(1, n_kv_heads, head_dim, max_len, batch, element_size)`` predicts.
    """

    def __init__(self, batch: int, n_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        for name, v in (("batch", batch), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim), ("max_len", max_len)):
            check_positive_int(name, v)
        self.batch, self.n_kv_heads, self.head_dim, self.max_len = batch, n_kv_heads, head_dim, max_len
        self.k = torch.zeros(batch, n_kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.length = 0  # tokens stored so far

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values of shape (batch, n_kv_heads, new, head_dim); return all stored so far."""
        want = (self.batch, self.n_kv_heads, "new", self.head_dim)
        for name, t in (("k", k), ("v", v)):
            if t.ndim != 4 or t.shape[0] != self.batch or t.shape[1] != self.n_kv_heads or t.shape[3] != self.head_dim:
                raise ValueError(f"{name}.shape={tuple(t.shape)} does not match the cache; expected {want}")
        if k.shape != v.shape:
            raise ValueError(f"k.shape={tuple(k.shape)} and v.shape={tuple(v.shape)} must be equal")
        new = k.shape[2]
        if self.length + new > self.max_len:
            raise ValueError(
                f"cache is full: {self.length} stored + {new} new > max_len={self.max_len}; make a larger KVCache")
        self.k[:, :, self.length:self.length + new] = k
        self.v[:, :, self.length:self.length + new] = v
        self.length += new
        return self.k[:, :, :self.length], self.v[:, :, :self.length]

    def reset(self) -> None:
        self.length = 0
