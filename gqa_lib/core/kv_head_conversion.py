"""Change how many KV heads a trained layer has (Ainslie et al. 2023, "GQA", section 2.1).

- ``reduce_kv_heads``: MHA -> GQA/MQA, or GQA -> fewer KV heads. Each new KV head is made from the
  contiguous block of old KV heads whose query heads it will serve: their mean (the paper's choice,
  best), the first of them, or a fresh random projection (worst, the paper's baseline).
- ``expand_to_mha``: GQA -> MHA by copying each KV head's projection to every query head of its
  group. Nothing changes in the output; only the cache grows back.
"""

from __future__ import annotations

import copy

import torch

from gqa_lib.core.attention import GroupedQueryAttention
from gqa_lib.core.checks import check_kv_heads

METHODS = ("mean", "first", "random")


def _check_layer(layer) -> None:
    if not isinstance(layer, GroupedQueryAttention):
        raise TypeError(f"layer={type(layer).__name__} must be a gqa_lib GroupedQueryAttention; for a transformers "
                        "model use gqa_lib.experiments.smollm_conversion.convert_kv_heads")


def _per_head(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(n_heads * head_dim, ...) -> (n_heads, head_dim, ...)"""
    return w.reshape(n_heads, w.shape[0] // n_heads, *w.shape[1:])


def _rebuild(layer: GroupedQueryAttention, n_kv_heads: int) -> GroupedQueryAttention:
    new = copy.deepcopy(layer)
    d_in, d_h = layer.d_model, layer.head_dim
    bias = layer.k_proj.bias is not None
    w = layer.k_proj.weight
    new.k_proj = torch.nn.Linear(d_in, n_kv_heads * d_h, bias=bias, device=w.device, dtype=w.dtype)
    new.v_proj = torch.nn.Linear(d_in, n_kv_heads * d_h, bias=bias, device=w.device, dtype=w.dtype)
    new.n_kv_heads = n_kv_heads
    new.layout = type(layer.layout)(layer.n_heads, n_kv_heads, d_h)
    new.group_size = new.layout.group_size
    return new


def reduce_kv_heads(layer: GroupedQueryAttention, n_kv_heads: int, method: str = "mean",
                    generator: torch.Generator | None = None) -> GroupedQueryAttention:
    """A copy of ``layer`` with ``n_kv_heads`` KV heads; ``n_kv_heads`` must divide the old count."""
    _check_layer(layer)
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not known (valid: {', '.join(METHODS)})")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator={generator!r} must be a torch.Generator or None (for a seed s: "
                        "torch.Generator().manual_seed(s))")
    check_kv_heads(layer.n_heads, n_kv_heads)
    if layer.n_kv_heads % n_kv_heads:
        raise ValueError(f"n_kv_heads={n_kv_heads} must divide the layer's n_kv_heads={layer.n_kv_heads} "
                         "so that each new KV head replaces whole old ones")
    r = layer.n_kv_heads // n_kv_heads  # old KV heads merged into one
    new = _rebuild(layer, n_kv_heads)
    with torch.no_grad():
        for old, dst in ((layer.k_proj, new.k_proj), (layer.v_proj, new.v_proj)):
            w = _per_head(old.weight, layer.n_kv_heads).reshape(n_kv_heads, r, layer.head_dim, -1)
            b = None if old.bias is None else _per_head(old.bias, layer.n_kv_heads).reshape(n_kv_heads, r, -1)
            if method == "mean":
                w_new, b_new = w.mean(1), None if b is None else b.mean(1)
            elif method == "first":
                w_new, b_new = w[:, 0], None if b is None else b[:, 0]
            else:
                std = old.weight.std().item()
                w_new = torch.randn(w[:, 0].shape, generator=generator, dtype=w.dtype) * std
                b_new = None if b is None else torch.zeros_like(b[:, 0])
            dst.weight.copy_(w_new.reshape(dst.weight.shape))
            if b_new is not None:
                dst.bias.copy_(b_new.reshape(dst.bias.shape))
    return new


def expand_to_mha(layer: GroupedQueryAttention) -> GroupedQueryAttention:
    """The MHA layer that computes exactly what ``layer`` computes: each KV projection copied per query head."""
    _check_layer(layer)
    group_size = layer.group_size
    new = _rebuild(layer, layer.n_heads)
    with torch.no_grad():
        for old, dst in ((layer.k_proj, new.k_proj), (layer.v_proj, new.v_proj)):
            w = _per_head(old.weight, layer.n_kv_heads).repeat_interleave(group_size, dim=0)
            dst.weight.copy_(w.reshape(dst.weight.shape))
            if old.bias is not None:
                dst.bias.copy_(_per_head(old.bias, layer.n_kv_heads).repeat_interleave(group_size, dim=0).reshape(-1))
    return new
