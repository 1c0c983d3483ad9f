"""Exercises of notebook 04: which KV head a query head reads, copying KV heads, GQA by stacking rows."""

from __future__ import annotations

import torch

from gqa_lib.core.attention import expand_kv as lib_expand_kv
from gqa_lib.core.attention import grouped_attention
from gqa_lib.core.layout import AttentionLayout
from gqa_lib.exercises.checking import Case, Exercise, attention_case, dtype_name, randn, seeded_cases
from gqa_lib.exercises.museum import mistakes_for

# (n_heads, n_kv_heads): MHA and MQA ends, GQA between, SmolLM2's and Llama-3 8B's shapes.
LAYOUTS = [(1, 1), (4, 1), (4, 4), (6, 2), (6, 3), (8, 2), (9, 3), (32, 8)]


def reference_kv_head_of(query_head, n_heads, n_kv_heads):
    """gqa_lib.AttentionLayout.kv_head_of: query head i reads KV head i // group_size."""
    return AttentionLayout(n_heads, n_kv_heads, 1).kv_head_of(query_head)


def _kv_head_cases() -> list[Case]:
    return [Case(f"query_head={i}, n_heads={h}, n_kv_heads={kv}", (i, h, kv), size=h * 100 + i)
            for h, kv in LAYOUTS for i in range(h)]


kv_head_of = Exercise("kv_head_of", "kv_head_of(query_head, n_heads, n_kv_heads)", reference_kv_head_of,
                      _kv_head_cases, mistakes_for("kv_head_of"),
                      reference_name="gqa_lib.AttentionLayout.kv_head_of",
                      summary="every query head of " + ", ".join(f"{h} query / {kv} KV heads" for h, kv in LAYOUTS),
                      index=True)  # the answer indexes the KV heads: 1.0 (from `/`) is wrong, np.int64(1) right
check_kv_head_of = kv_head_of.check


def _expand_cases() -> list[Case]:
    # (batch, n_kv_heads, seq, head_dim, group_size, dtype)
    rows = [(1, 1, 1, 2, 1, torch.float32), (1, 2, 3, 4, 2, torch.float32), (2, 3, 5, 4, 3, torch.float32),
            (2, 1, 4, 8, 4, torch.float32), (2, 8, 6, 16, 4, torch.bfloat16)]
    return seeded_cases("expand_kv", rows, _expand_case)


def _expand_case(gen, b, kv, s, d, group_size, dtype) -> Case:
    """x of shape (b, kv, s, d) = (batch, n_kv_heads, seq, head_dim) and the group size."""
    label = (f"x of shape ({b}, {kv}, {s}, {d}) = (batch, n_kv_heads, seq, head_dim), group_size {group_size} "
             f"({kv * group_size} query heads), {dtype_name(dtype)}")
    return Case(label, (randn(gen, b, kv, s, d, dtype=dtype), group_size), size=b * kv * s * d * group_size,
                info={"n_heads": kv * group_size, "n_kv_heads": kv})


expand_kv = Exercise("expand_kv", "expand_kv(x, group_size)", lib_expand_kv, _expand_cases, mistakes_for("expand_kv"),
                     reference_name="gqa_lib.expand_kv (= x.repeat_interleave(group_size, dim=1))")
check_expand_kv = expand_kv.check


def reference_gqa(q, k, v):
    """gqa_lib.grouped_attention: causal, the queries being the last s_q of the s_k tokens."""
    return grouped_attention(q, k, v, causal=True)


def _gqa_cases() -> list[Case]:
    # (batch, n_heads, n_kv_heads, s_q, s_k, head_dim, dtype)
    rows = [(1, 1, 1, 1, 1, 4, torch.float32), (1, 2, 2, 3, 3, 4, torch.float32), (2, 4, 2, 3, 3, 8, torch.float32),
            (2, 4, 1, 4, 4, 8, torch.float32), (2, 6, 3, 1, 9, 8, torch.float32), (2, 6, 2, 3, 8, 8, torch.float32),
            (3, 8, 2, 5, 5, 16, torch.float32), (2, 9, 3, 4, 11, 8, torch.bfloat16)]
    return seeded_cases("gqa", rows, attention_case)


gqa = Exercise("gqa", "gqa(q, k, v)", reference_gqa, _gqa_cases, mistakes_for("gqa"),
               reference_name="gqa_lib.grouped_attention")
check_gqa = gqa.check
