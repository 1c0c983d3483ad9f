"""Exercises of notebook 06: the cost of a decode step, the decode step itself, and mean-pool conversion."""

from __future__ import annotations

import torch

from gqa_lib.core.attention import GroupedQueryAttention, grouped_attention
from gqa_lib.core.kv_head_conversion import reduce_kv_heads
from gqa_lib.exercises.checking import Case, Exercise, attention_case, kv_projection_case, masked_row_hint, seeded_cases
from gqa_lib.exercises.museum import mistakes_for

_DTYPE_OF_BYTES = {1: torch.int8, 2: torch.bfloat16, 4: torch.float32}


def reference_decode_cost(n_heads, n_kv_heads, seq_len, head_dim, bytes_per_elem):
    """(bytes read, FLOPs) of one decode step's attention, batch 1:
    gqa_lib.experiments.attention_roofline.cache_bytes_read
    and 2 products x 2 FLOPs per multiply-add x n_heads x seq_len x head_dim."""
    from gqa_lib.experiments.attention_roofline import cache_bytes_read

    return (cache_bytes_read(n_kv_heads, seq_len, head_dim, _DTYPE_OF_BYTES[bytes_per_elem]),
            2 * 2 * n_heads * seq_len * head_dim)


def _cost_cases() -> list[Case]:
    rows = [(1, 1, 1, 1, 1), (32, 32, 16384, 128, 4), (32, 8, 16384, 128, 4), (32, 1, 16384, 128, 4),
            (9, 3, 8192, 64, 2)]
    return [Case(f"n_heads={h}, n_kv_heads={kv}, seq_len={s:,}, head_dim={d}, bytes_per_elem={nb}",
                 (h, kv, s, d, nb), size=i) for i, (h, kv, s, d, nb) in enumerate(rows)]


decode_cost = Exercise("decode_cost", "decode_cost(n_heads, n_kv_heads, seq_len, head_dim, bytes_per_elem)",
                       reference_decode_cost, _cost_cases, mistakes_for("decode_cost"),
                       reference_name="gqa_lib.experiments.attention_roofline.cache_bytes_read and the FLOP count "
                                      "of section 1")
check_decode_cost = decode_cost.check


def reference_decode_attention(q, k, v):
    """gqa_lib.grouped_attention for one query: no mask, every cached key visible."""
    return grouped_attention(q, k, v, causal=True)


def _decode_cases() -> list[Case]:
    # (batch, n_heads, n_kv_heads, s_k, head_dim, dtype), one query
    rows = [(1, 1, 1, 1, 4, torch.float32), (1, 2, 1, 3, 4, torch.float32), (2, 4, 2, 6, 8, torch.float32),
            (2, 8, 8, 5, 8, torch.float32), (2, 32, 8, 64, 16, torch.float32), (2, 9, 3, 12, 8, torch.bfloat16)]
    return seeded_cases("decode_attention", [(b, h, kv, 1, s, d, dtype) for b, h, kv, s, d, dtype in rows],
                        attention_case)


decode_attention = Exercise("decode_attention", "decode_attention(q, k, v)", reference_decode_attention,
                            _decode_cases, mistakes_for("decode_attention"), nan_hint=masked_row_hint,
                            reference_name="gqa_lib.grouped_attention")
check_decode_attention = decode_attention.check


def reference_mean_pool_kv(w, n_kv_heads, new_n_kv_heads):
    """gqa_lib.core.kv_head_conversion.reduce_kv_heads(method='mean') applied to a k_proj weight of shape
    (n_kv_heads * head_dim, d_model): new KV head j is the mean of old heads j*r .. (j+1)*r - 1."""
    head_dim, d_model = w.shape[0] // n_kv_heads, w.shape[1]
    layer = GroupedQueryAttention(d_model, n_kv_heads, n_kv_heads, head_dim=head_dim, rope=False).to(w.dtype)
    with torch.no_grad():
        layer.k_proj.weight.copy_(w)
    return reduce_kv_heads(layer, new_n_kv_heads, "mean").k_proj.weight.detach()


def _pool_cases() -> list[Case]:
    # (n_kv_heads, new_n_kv_heads, head_dim, d_model, dtype)
    rows = [(1, 1, 2, 3, torch.float32), (2, 1, 2, 3, torch.float32), (3, 1, 4, 5, torch.float32),
            (4, 2, 2, 6, torch.float32), (6, 3, 4, 8, torch.float32), (4, 2, 8, 16, torch.bfloat16)]
    return seeded_cases("mean_pool_kv", rows, _pool_case)


def _pool_case(gen, kv, new, hd, d, dtype) -> Case:
    """w (kv * hd, d), n_kv_heads = kv, new_n_kv_heads = new."""
    return kv_projection_case(gen, kv, hd, d, dtype, f"{kv} KV heads -> {new}", (kv, new), size=kv * hd * d)


mean_pool_kv = Exercise("mean_pool_kv", "mean_pool_kv(w, n_kv_heads, new_n_kv_heads)", reference_mean_pool_kv,
                        _pool_cases, mistakes_for("mean_pool_kv"),
                        reference_name="gqa_lib.core.kv_head_conversion.reduce_kv_heads(method='mean')")
check_mean_pool_kv = mean_pool_kv.check
