"""Exercises of notebook 02: multi-head attention over a left-padded batch, RoPE, and one cached decode step."""

from __future__ import annotations

import torch

from gqa_lib.core.attention import GroupedQueryAttention, grouped_attention
from gqa_lib.core.rope import RotaryEmbedding
from gqa_lib.exercises.checking import (
    Case,
    Exercise,
    dtype_name,
    generator,
    masked_row_hint,
    randn,
    seeded_cases,
)
from gqa_lib.exercises.museum import mistakes_for


def reference_mha(x, W_q, W_k, W_v, W_o, n_heads):
    """gqa_lib.GroupedQueryAttention with n_kv_heads = n_heads and no RoPE, holding the same four matrices."""
    head_dim = W_q.out_features // n_heads
    lib = GroupedQueryAttention(x.shape[-1], n_heads, n_heads, head_dim=head_dim, rope=False).to(x.dtype)
    lib.load_state_dict({"q_proj.weight": W_q.weight, "k_proj.weight": W_k.weight,
                         "v_proj.weight": W_v.weight, "o_proj.weight": W_o.weight})
    return lib(x)


def reference_mha_left_padded(x, W_q, W_k, W_v, W_o, n_heads, n_pad):
    """Each sequence on its own: sequence b's real tokens, ``x[b, n_pad[b]:]``, through :func:`reference_mha`
    (gqa_lib's MHA), and 0 at its ``n_pad[b]`` pad positions. A left-padded batch computed right gives exactly
    this: padding changes nothing for the real tokens, and a pad position has no key it may see."""
    b, s, _ = x.shape
    out = torch.zeros(b, s, W_o.out_features, dtype=x.dtype)  # (batch, seq, d_model)
    for i, pad in enumerate(n_pad):
        if pad < s:
            out[i, pad:] = reference_mha(x[i:i + 1, pad:], W_q, W_k, W_v, W_o, n_heads)[0]
    return out


def _linear(gen, n_in, n_out, dtype):
    lin = torch.nn.Linear(n_in, n_out, bias=False)
    with torch.no_grad():
        lin.weight.copy_(randn(gen, n_out, n_in) / n_in**0.5)
    return lin.to(dtype)


def _padded_cases() -> list[Case]:
    # (seq, d_model, n_heads, head_dim, n_pad per sequence, dtype): no padding, one pad, a sequence that is all
    # padding (3 pads of 3 tokens), two layers whose n_heads x head_dim is not d_model, one head, bf16
    rows = [(1, 8, 2, 4, [0], torch.float32), (4, 16, 2, 8, [0, 2], torch.float32),
            (5, 24, 4, 8, [1, 0, 3], torch.float32), (3, 16, 4, 4, [3, 1], torch.float32),
            (6, 32, 1, 16, [2, 4], torch.float32), (7, 32, 4, 8, [0, 3], torch.bfloat16)]
    return seeded_cases("mha_left_padded", rows, _padded_case)


def _padded_case(gen, s, d_model, h, hd, n_pad, dtype) -> Case:
    """x (b, s, d_model) with pad tokens drawn like the others, W_q, W_k, W_v (d_model -> h * hd), W_o
    (h * hd -> d_model), n_heads = h and n_pad, a list of b ints."""
    b = len(n_pad)
    x = randn(gen, b, s, d_model, dtype=dtype)
    ws = [_linear(gen, d_model, h * hd, dtype) for _ in range(3)] + [_linear(gen, h * hd, d_model, dtype)]
    note = "" if h * hd == d_model else f" (n_heads x head_dim = {h * hd} is not d_model)"
    label = (f"batch {b}, {s} token{'s' * (s > 1)} a sequence, n_pad {n_pad}, d_model {d_model}, "
             f"{h} head{'s' * (h > 1)} of head_dim {hd}{note}, {dtype_name(dtype)}")
    return Case(label, (x, *ws, h, list(n_pad)), size=b * s * d_model * h,
                info={"d_model": d_model, "n_heads": h, "head_dim": hd, "seq": s, "n_pad": list(n_pad)})


mha_left_padded = Exercise(
    "mha_left_padded", "mha_left_padded(x, W_q, W_k, W_v, W_o, n_heads, n_pad)", reference_mha_left_padded,
    _padded_cases, mistakes_for("mha_left_padded"), nan_hint=masked_row_hint,
    reference_name="gqa_lib.GroupedQueryAttention(n_kv_heads=n_heads, rope=False) run on each sequence's real "
                   "tokens alone, 0 at the pad positions")
check_mha_left_padded = mha_left_padded.check


def reference_rope(x, start_pos, base=10000.0):
    """gqa_lib.core.rope.RotaryEmbedding: rotate_half layout, angles and rotation in float64, rounded to x's dtype
    once."""
    return RotaryEmbedding(x.shape[-1], base)(x, start_pos)


def _rope_cases() -> list[Case]:
    gen = generator("rope")
    # (batch, heads, seq, head_dim, start_pos, dtype, base): base 500,000 is Llama-3's; two bf16 cases, at positions
    # bf16 cannot all hold (it has 8 significant bits: 301 and 4,095 are not bf16 numbers)
    rows = [(1, 1, 1, 2, 0, torch.float32, None), (1, 2, 3, 8, 0, torch.float32, None),
            (2, 3, 4, 8, 5, torch.float32, None), (1, 2, 3, 8, 5, torch.float32, 500_000.0),
            (1, 2, 2, 16, 100_000, torch.float32, None), (2, 2, 3, 16, 300, torch.bfloat16, None),
            (2, 2, 3, 64, 4093, torch.bfloat16, None)]
    cases = []
    for i, (b, h, s, d, start, dtype, base) in enumerate(rows):
        label = (f"x of shape ({b}, {h}, {s}, {d}) = (batch, heads, seq, head_dim), "
                 f"{dtype_name(dtype)}, start_pos {start:,}" + (f", base {base:,.0f}" if base else ""))
        # float32 angles at position 100,000 are only good to about 1e-2 rad (its float32 spacing is 2**-7), so a
        # learner's float32 computation differs from this float64 reference that much; known mistakes differ by O(1).
        tol = (3e-2, 1e-2) if start >= 100_000 else None
        args = (randn(gen, b, h, s, d, dtype=dtype), start) + ((base,) if base else ())
        cases.append(Case(label, args, size=i, tol=tol))
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
                       _decode_cases, mistakes_for("decode_step"), nan_hint=masked_row_hint,
                       reference_name="RoPE at the cache length, then gqa_lib.grouped_attention")
check_decode_step = decode_step.check
