"""Grouped Query Attention: one layer that is MHA, GQA or MQA depending on ``n_kv_heads``.

Query head ``i`` reads KV head ``i // group_size`` (contiguous groups, the order of
``repeat_interleave`` and of PyTorch's ``scaled_dot_product_attention(..., enable_gqa=True)``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from gqa_lib.core.checks import (
    NON_FINITE_WHY,
    check_finite,
    check_layer_input,
    check_positive_int,
    check_qkv,
    refuse_dtype_names,
)
from gqa_lib.core.kv_cache import KVCache
from gqa_lib.core.layout import AttentionLayout
from gqa_lib.core.rope import RopeScaling, RotaryEmbedding, check_rope_base, check_start_pos


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                      return_weights: bool = False):
    """Scaled dot-product attention where query heads share KV heads, without copying K or V.

    q: (batch, n_heads, s_q, head_dim); k, v: (batch, n_kv_heads, s_k, head_dim).
    The query heads of one group are stacked into the row dimension, so each KV head is read once:
    (batch, n_kv_heads, group_size * s_q, head_dim) against (batch, n_kv_heads, s_k, head_dim).
    With ``causal`` the queries are the last ``s_q`` of the ``s_k`` tokens (see :func:`causal_mask`).
    Returns (batch, n_heads, s_q, head_dim) and, if asked, the weights (batch, n_heads, s_q, s_k).

    Without ``return_weights`` the stacked rows go to PyTorch's fused ``scaled_dot_product_attention``
    as ordinary attention with n_kv_heads heads, which never writes the score matrix to memory; a
    single query (a decode step) may see every key, so it gets no mask at all. With
    ``return_weights`` the scores are written out, because the caller wants to see them.

    Errors: TypeError for non-tensors, integer tensors or q, k, v of different dtypes; ValueError for
    shapes that do not fit, and for a nan or inf in k or v whenever a causal mask is applied (s_q > 1;
    see NON_FINITE_WHY). That costs one pass over the output: a non-finite k or v always reaches it
    (the last query sees every key), and only then are K and V searched. A single query (a decode
    step) is not checked: it sees every key, so a non-finite key or value reaches its output in any
    exact computation, the same as in a full pass.
    """
    check_qkv(q, k, v, causal)
    s_q = q.shape[2]
    result = _attend(q, k, v, causal, return_weights)
    if causal and s_q > 1 and not _all_finite(result[0] if return_weights else result):
        check_finite("k", k, 2, NON_FINITE_WHY)  # the one pass over K and V happens only when something is wrong
        check_finite("v", v, 2, NON_FINITE_WHY)
    return result


def _attend(q, k, v, causal: bool, return_weights: bool):
    """grouped_attention's arithmetic, for inputs already checked."""
    b, n_heads, s_q, d = q.shape
    n_kv, s_k = k.shape[1], k.shape[2]
    group_size = n_heads // n_kv
    # (batch, n_kv_heads, group_size * s_q, head_dim): a group's query heads stacked as rows; K and V are not copied
    qg = q.reshape(b, n_kv, group_size * s_q, d)
    # Row r of a group is query head r // s_q at position r % s_q, so the mask repeats once per query head.
    mask = causal_mask(s_q, s_k, q.device).repeat(group_size, 1) if causal and s_q > 1 else None  # (rows, s_k)
    if not return_weights:
        return F.scaled_dot_product_attention(qg, k, v, attn_mask=mask).reshape(b, n_heads, s_q, d)
    scores = qg @ k.transpose(-2, -1) / math.sqrt(d)  # (batch, n_kv_heads, group_size * s_q, s_k)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    out = (weights @ v).reshape(b, n_heads, s_q, d)  # (batch, n_heads, s_q, head_dim)
    return out, weights.reshape(b, n_heads, s_q, s_k)


def _all_finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def expand_kv(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Copy each KV head ``group_size`` times so there is one per query head (teaching helper).

    Equivalent to ``x.repeat_interleave(group_size, dim=1)``:
    (batch, n_kv_heads, seq, head_dim) -> (batch, n_kv_heads * group_size, seq, head_dim).
    KV head j becomes heads j*group_size .. (j+1)*group_size - 1. This builds a real copy; the layer
    below never calls it.
    """
    check_positive_int("group_size", group_size)
    if x.ndim != 4:
        raise ValueError(f"x.shape={tuple(x.shape)} must be (batch, n_kv_heads, seq, head_dim)")
    b, h_kv, s, d = x.shape
    if group_size == 1:
        return x.clone()  # nothing to repeat, but still a copy, as repeat_interleave gives
    # contiguous() makes the copy: without it reshape returns a stride-0 view when h_kv == 1 (MQA).
    return x[:, :, None].expand(b, h_kv, group_size, s, d).contiguous().reshape(b, h_kv * group_size, s, d)


def causal_mask(n_queries: int, n_keys: int, device=None) -> torch.Tensor:
    """Boolean (n_queries, n_keys) mask, True where a query may look.

    The queries are the last ``n_queries`` of the ``n_keys`` tokens (bottom-right aligned), which
    is right both for a prefill (n_queries == n_keys) and for a decode step against a cache.
    """
    check_positive_int("n_queries", n_queries)
    check_positive_int("n_keys", n_keys)
    if n_queries > n_keys:
        raise ValueError(f"n_queries={n_queries} must not exceed n_keys={n_keys}: the queries are the last "
                         "tokens of the keys' sequence")
    offset = n_keys - n_queries
    q_pos = torch.arange(n_queries, device=device)[:, None] + offset
    k_pos = torch.arange(n_keys, device=device)[None, :]
    return k_pos <= q_pos


class GroupedQueryAttention(nn.Module):
    """Multi-head attention with ``n_kv_heads`` key/value heads shared by ``n_heads`` query heads.

    ``n_kv_heads == n_heads`` is MHA, ``n_kv_heads == 1`` is MQA, anything that divides ``n_heads``
    between is GQA. Input and output: (batch, seq, d_model), in the dtype of the layer's weights.
    ``rope_base``: a finite positive number (RoPE's base; ``rope=False`` turns RoPE off); ``rope_scaling``:
    a :class:`gqa_lib.core.rope.RopeScaling` for models that stretch RoPE (Llama 3.1's ``llama3``), or None.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int | None = None,
                 bias: bool = False, rope: bool = True, rope_base: float = 10000.0,
                 rope_scaling: RopeScaling | None = None):
        super().__init__()
        check_positive_int("d_model", d_model)
        check_positive_int("n_heads", n_heads)
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}, or pass head_dim")
            head_dim = d_model // n_heads
        self.layout = AttentionLayout(n_heads, n_kv_heads, head_dim)
        self.d_model, self.n_heads, self.n_kv_heads, self.head_dim = d_model, n_heads, n_kv_heads, head_dim
        self.group_size = self.layout.group_size
        if rope:
            check_rope_base("rope_base", rope_base)
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias)
        self.rope = RotaryEmbedding(head_dim, rope_base, rope_scaling) if rope else None

    @property
    def kind(self) -> str:
        return self.layout.kind

    @staticmethod
    def _refuse_non_finite(x, k, v, start: int) -> None:
        """Raise naming the first position where x, or else its keys or values, is not finite."""
        check_finite("x", x, 1, NON_FINITE_WHY, start)
        overflow = " (the projection overflowed the layer's dtype?)" + NON_FINITE_WHY
        check_finite("k = k_proj(x)", k, 2, overflow, start)
        check_finite("v = v_proj(x)", v, 2, overflow, start)

    def to(self, *args, **kwargs):
        """nn.Module.to, but a dtype's name such as 'bf16' is refused with the dtype to pass instead."""
        refuse_dtype_names("layer.to", args, kwargs)
        return super().to(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}"

    def new_cache(self, batch: int, max_len: int, dtype=None, device=None) -> KVCache:
        """An empty cache sized for this layer: it holds n_kv_heads heads, not n_heads.

        ``dtype`` (a floating torch dtype) and ``device`` default to the layer's weights'; see KVCache for errors.
        """
        w = self.k_proj.weight
        return KVCache(batch, self.n_kv_heads, self.head_dim, max_len, w.dtype if dtype is None else dtype,
                       w.device if device is None else device)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise unless ``x`` is a (batch, seq, d_model) tensor in the dtype of the layer's weights. Finiteness
        is checked later, on the output only (one pass; see ``forward``)."""
        check_layer_input(x, self.d_model, self.q_proj.weight.dtype, finite=False)

    def qkv(self, x: torch.Tensor, start_pos: int = 0):
        """Project and rotate: q (batch, n_heads, seq, head_dim), k and v (batch, n_kv_heads, seq, head_dim).

        ``start_pos``: the position of the first token of ``x`` (a non-negative int).
        """
        start_pos = check_start_pos(start_pos)
        self.check_input(x)
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.rope is not None:
            q, k = self.rope(q, start_pos), self.rope(k, start_pos)
        return q, k, v

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, return_weights: bool = False):
        """Causal attention over ``x``; with a cache, ``x`` holds the new tokens only and is appended.

        Without a cache this is a causal prefill of the whole sequence. With one, the new tokens
        sit at positions cache.length, cache.length + 1, ... and see everything cached before them.

        Errors: TypeError for ``x`` of another dtype than the layer or a ``cache`` that is not a
        KVCache; ValueError for shapes, a cache made for another layer or batch, a full cache, and a
        nan or inf in ``x`` or in its projections (both with and without a cache; the cache is then
        left as it was).
        """
        start = self._check_cache(x, cache)
        q, k, v = self.qkv(x, start)
        if cache is not None:  # check the new tokens before they are cached (cheap: new tokens only)
            self._refuse_non_finite(x, k, v, start)
            k, v = cache.append(k, v)  # everything cached so far: (batch, n_kv_heads, start + seq, head_dim)
            k, v = k.to(q.dtype), v.to(q.dtype)  # a cache may be stored in lower precision than the layer computes
        out = _attend(q, k, v, True, return_weights)  # shapes and dtypes are right by construction
        if cache is None and not _all_finite(out[0] if return_weights else out):  # one pass, over the output
            self._refuse_non_finite(x, k, v, start)  # a non-finite q only spoils its own row, as in decoding
        if return_weights:
            out, weights = out
        b, _, s, _ = out.shape
        y = self.o_proj(out.transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim))
        return (y, weights) if return_weights else y

    def _check_cache(self, x, cache: KVCache | None) -> int:
        """The position of ``x``'s first token: 0 without a cache, else the cache's length, once the cache fits."""
        if cache is None:
            return 0
        if not isinstance(cache, KVCache):
            mla = type(cache).__name__ == "MLACache"
            other = " (an MLACache belongs to MultiHeadLatentAttention)" if mla else ""
            raise TypeError(f"cache={type(cache).__name__} must be a KVCache{other}; make one with "
                        "layer.new_cache(batch, max_len)")
        if (cache.n_kv_heads, cache.head_dim) != (self.n_kv_heads, self.head_dim):
            raise ValueError(f"cache (n_kv_heads={cache.n_kv_heads}, head_dim={cache.head_dim}) was made for "
                         f"another layer; this one has n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}: "
                         "make the cache with this layer's new_cache(batch, max_len)")
        if isinstance(x, torch.Tensor) and x.ndim == 3 and x.shape[0] != cache.batch:
            raise ValueError(f"x.shape[0]={x.shape[0]} (batch) does not match the cache's batch={cache.batch}; "
                         f"make the cache with new_cache(batch={x.shape[0]}, ...)")
        return cache.length
