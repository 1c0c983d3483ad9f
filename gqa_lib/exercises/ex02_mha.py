"""Exercises of notebook 02: multi-head attention from scratch, RoPE, and one cached decode step."""

from __future__ import annotations

import torch

from gqa_lib.core.attention import GroupedQueryAttention, grouped_attention
from gqa_lib.core.rope import RotaryEmbedding
from gqa_lib.exercises.checking import Case, Exercise, dtype_name, generator, randn, seeded_cases
from gqa_lib.exercises.museum import mistakes_for


def reference_mha(x, W_q, W_k, W_v, W_o, n_heads):
    """gqa_lib.GroupedQueryAttention with n_kv_heads = n_heads and no RoPE, holding the same four matrices."""
    head_dim = W_q.out_features // n_heads
    lib = GroupedQueryAttention(x.shape[-1], n_heads, n_heads, head_dim=head_dim, rope=False).to(x.dtype)
    lib.load_state_dict({"q_proj.weight": W_q.weight, "k_proj.weight": W_k.weight,
                         "v_proj.weight": W_v.weight, "o_proj.weight": W_o.weight})
    return lib(x)


def _linear(gen, n_in, n_out, dtype):
    lin = torch.nn.Linear(n_in, n_out, bias=False)
    with torch.no_grad():
        lin.weight.copy_(randn(gen, n_out, n_in) / n_in**0.5)
    return lin.to(dtype)


def _mha_cases() -> list[Case]:
    # (batch, seq, d_model, n_heads, head_dim, dtype)
    rows = [(1, 1, 8, 2, 4, torch.float32), (2, 5, 32, 4, 8, torch.float32), (2, 6, 24, 4, 8, torch.float32),
            (3, 4, 16, 1, 16, torch.float32), (2, 7, 32, 4, 8, torch.bfloat16)]
    return seeded_cases("mha", rows, _mha_case)


def _mha_case(gen, b, s, d_model, h, hd, dtype) -> Case:
    """x (b, s, d_model), W_q, W_k, W_v (d_model -> h * hd), W_o (h * hd -> d_model) and n_heads = h."""
    x = randn(gen, b, s, d_model, dtype=dtype)
    ws = [_linear(gen, d_model, h * hd, dtype) for _ in range(3)] + [_linear(gen, h * hd, d_model, dtype)]
    note = "" if h * hd == d_model else f" (n_heads x head_dim = {h * hd} is not d_model)"
    return Case(f"batch {b}, {s} token{'s' * (s > 1)}, d_model {d_model}, {h} head{'s' * (h > 1)} of "
                f"head_dim {hd}{note}, {dtype_name(dtype)}",
                (x, *ws, h), size=b * s * d_model * h, info={"d_model": d_model, "n_heads": h, "head_dim": hd})


mha = Exercise("mha", "mha(x, W_q, W_k, W_v, W_o, n_heads)", reference_mha, _mha_cases, mistakes_for("mha"),
               reference_name="gqa_lib.GroupedQueryAttention(n_kv_heads=n_heads, rope=False) with your four matrices")
check_mha = mha.check


def reference_rope(x, start_pos, base=10000.0):
    """gqa_lib.core.rope.RotaryEmbedding: rotate_half layout, angles in float32."""
    return RotaryEmbedding(x.shape[-1], base)(x, start_pos)


def _rope_cases() -> list[Case]:
    gen = generator("rope")
    rows = [(1, 1, 1, 2, 0, torch.float32), (1, 2, 3, 8, 0, torch.float32), (2, 3, 4, 8, 5, torch.float32),
            (1, 2, 2, 16, 100_000, torch.float32), (2, 2, 3, 64, 4093, torch.bfloat16)]
    cases = []
    for i, (b, h, s, d, start, dtype) in enumerate(rows):
        label = (f"x of shape ({b}, {h}, {s}, {d}) = (batch, heads, seq, head_dim), "
                 f"{dtype_name(dtype)}, start_pos {start:,}")
        # float32 angles at position 100,000 are only good to about 1e-2 rad (its float32 spacing is 2**-7), so
        # a correct float64 computation differs from the float32 reference that much; known mistakes differ by O(1).
        tol = (3e-2, 1e-2) if start >= 100_000 else None
        cases.append(Case(label, (randn(gen, b, h, s, d, dtype=dtype), start), size=i, tol=tol))
    return cases


rope = Exercise("rope", "rope(x, start_pos)", reference_rope, _rope_cases, mistakes_for("rope"),
                reference_name="gqa_lib.RotaryEmbedding")
check_rope = rope.check


def reference_decode_step(q, k, v, k_cache, v_cache, rope):
    """RoPE at position cache length, append, attend with no mask (gqa_lib.grouped_attention)."""
    pos = k_cache.shape[2]
    keys = torch.cat([k_cache, rope(k, pos)], dim=2)
    values = torch.cat([v_cache, v], dim=2)
    return grouped_attention(rope(q, pos), keys, values, causal=True)


def _decode_cases() -> list[Case]:
    # (batch, n_heads, cached tokens, head_dim, dtype)
    rows = [(1, 1, 0, 4, torch.float32), (1, 2, 1, 8, torch.float32), (2, 4, 5, 8, torch.float32),
            (2, 3, 37, 16, torch.float32), (2, 4, 9, 8, torch.bfloat16)]
    return seeded_cases("decode_step", rows, _decode_case)


def _decode_case(gen, b, h, n_cached, d, dtype) -> Case:
    """q, k, v of one new token (b, h, 1, d), k_cache and v_cache (b, h, n_cached, d), and a RotaryEmbedding(d)."""
    new = [randn(gen, b, h, 1, d, dtype=dtype) for _ in range(3)]  # q, k, v of the new token
    cache = [randn(gen, b, h, n_cached, d, dtype=dtype) for _ in range(2)]  # rotated keys, values
    label = (f"batch {b}, {h} heads, head_dim {d}, one new token after {n_cached} cached "
             f"(cache shape ({b}, {h}, {n_cached}, {d})), {dtype_name(dtype)}")
    return Case(label, (*new, *cache, RotaryEmbedding(d)), size=b * h * (n_cached + 1) * d, info={"cached": n_cached})


decode_step = Exercise("decode_step", "decode_step(q, k, v, k_cache, v_cache, rope)", reference_decode_step,
                       _decode_cases, mistakes_for("decode_step"),
                       reference_name="RoPE at the cache length, then gqa_lib.grouped_attention")
check_decode_step = decode_step.check
