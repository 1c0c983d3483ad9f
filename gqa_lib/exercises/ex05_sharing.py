"""Exercises of notebook 05: which query heads share a KV head, and GQA weights made into MHA weights."""

from __future__ import annotations

import torch

from gqa_lib.core.attention import GroupedQueryAttention
from gqa_lib.core.kv_head_conversion import expand_to_mha
from gqa_lib.core.layout import AttentionLayout
from gqa_lib.exercises.checking import Case, Exercise, kv_projection_case, seeded_cases
from gqa_lib.exercises.ex04_gqa import LAYOUTS
from gqa_lib.exercises.museum import mistakes_for


def reference_same_kv_head(n_heads, n_kv_heads):
    """(n_heads, n_heads) bool: True where query heads i and j read the same KV head (i // group_size)."""
    layout = AttentionLayout(n_heads, n_kv_heads, 1)
    kv = torch.tensor([layout.kv_head_of(i) for i in range(n_heads)])
    return kv[:, None] == kv[None, :]


same_kv_head = Exercise(
    "same_kv_head", "same_kv_head(n_heads, n_kv_heads)", reference_same_kv_head,
    lambda: [Case(f"n_heads={h}, n_kv_heads={kv}", (h, kv), size=h) for h, kv in LAYOUTS],
    mistakes_for("same_kv_head"), reference_name="gqa_lib.AttentionLayout.kv_head_of for every pair of query heads")
check_same_kv_head = same_kv_head.check


def reference_expand_kv_projection(w, n_heads, n_kv_heads):
    """k_proj (or v_proj) weight of the MHA layer equal to a GQA layer:
    gqa_lib.core.kv_head_conversion.expand_to_mha."""
    head_dim, d_model = w.shape[0] // n_kv_heads, w.shape[1]
    layer = GroupedQueryAttention(d_model, n_heads, n_kv_heads, head_dim=head_dim, rope=False).to(w.dtype)
    with torch.no_grad():
        layer.k_proj.weight.copy_(w)
    return expand_to_mha(layer).k_proj.weight.detach()


def _projection_cases() -> list[Case]:
    # (n_heads, n_kv_heads, head_dim, d_model, dtype)
    rows = [(1, 1, 2, 3, torch.float32), (4, 2, 2, 4, torch.float32), (4, 1, 4, 5, torch.float32),
            (9, 3, 4, 6, torch.float32), (8, 2, 8, 16, torch.bfloat16)]
    return seeded_cases("expand_kv_projection", rows, _projection_case)


def _projection_case(gen, h, kv, hd, d, dtype) -> Case:
    """w (kv * hd, d), n_heads = h, n_kv_heads = kv."""
    return kv_projection_case(gen, kv, hd, d, dtype, f"n_heads={h}, n_kv_heads={kv}", (h, kv), size=h * hd * d)


expand_kv_projection = Exercise(
    "expand_kv_projection", "expand_kv_projection(w, n_heads, n_kv_heads)", reference_expand_kv_projection,
    _projection_cases, mistakes_for("expand_kv_projection"),
    reference_name="gqa_lib.core.kv_head_conversion.expand_to_mha")
check_expand_kv_projection = expand_kv_projection.check
