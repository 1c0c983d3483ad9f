"""Exercises of notebook 07: MLA's absorbed score with its decoupled RoPE part, and MLA's cache size."""

from __future__ import annotations

import math

import torch

from gqa_lib.core.cache_math import mla_cache_bytes as lib_mla_cache_bytes
from gqa_lib.exercises.checking import Case, Exercise, dtype_name, randn, seeded_cases
from gqa_lib.exercises.museum import mistakes_for
from gqa_lib.models.catalog import MLADims, ModelSpec, get_model


def reference_mla_scores(q_c, q_r, latent, k_rope, w_uk):
    """Scaled scores (batch, n_heads, s_q, s_k), before mask and softmax, as gqa_lib's absorbed MLA computes them.

    q_c (batch, n_heads, s_q, head_dim), q_r (batch, n_heads, s_q, d_rope) already rotated, latent
    (batch, s_k, d_c), k_rope (batch, s_k, d_rope) already rotated, w_uk (n_heads, head_dim, d_c).
    """
    scale = 1 / math.sqrt(q_c.shape[-1] + q_r.shape[-1])  # the dot product has head_dim + d_rope terms
    q_lat = torch.einsum("bhsd,hdc->bhsc", q_c.float(), w_uk.float())  # W_UK absorbed into the query
    scores = q_lat @ latent.float()[:, None].transpose(-2, -1) + q_r.float() @ k_rope.float()[:, None].transpose(-2, -1)
    return (scores * scale).to(q_c.dtype)


def _score_cases() -> list[Case]:
    # (batch, n_heads, s_q, s_k, head_dim, d_rope, d_c, dtype)
    rows = [(1, 1, 1, 1, 4, 2, 3, torch.float32), (1, 2, 1, 5, 8, 4, 6, torch.float32),
            (2, 3, 1, 9, 8, 2, 5, torch.float32), (2, 4, 3, 6, 16, 8, 24, torch.float32),
            (2, 4, 2, 7, 16, 8, 12, torch.bfloat16)]
    return seeded_cases("mla_scores", rows, _score_case)


def _score_case(gen, b, h, s_q, s_k, d_h, d_r, d_c, dtype) -> Case:
    """q_c (b, h, s_q, d_h), q_r (b, h, s_q, d_r), latent (b, s_k, d_c), k_rope (b, s_k, d_r), w_uk (h, d_h, d_c)."""
    args = (randn(gen, b, h, s_q, d_h, dtype=dtype), randn(gen, b, h, s_q, d_r, dtype=dtype),
            randn(gen, b, s_k, d_c, dtype=dtype), randn(gen, b, s_k, d_r, dtype=dtype),
            (randn(gen, h, d_h, d_c) / d_c**0.5).to(dtype))
    label = (f"batch {b}, {h} head{'s' * (h > 1)}, {s_q} quer{'ies' if s_q > 1 else 'y'} against {s_k} cached "
             f"token{'s' * (s_k > 1)}, "
             f"head_dim {d_h}, d_rope {d_r}, d_c {d_c}, {dtype_name(dtype)}")
    return Case(label, args, size=b * h * s_q * s_k * (d_h + d_r + d_c),
                info={"head_dim": d_h, "d_rope": d_r, "d_c": d_c})


mla_scores = Exercise("mla_scores", "mla_scores(q_c, q_r, latent, k_rope, w_uk)", reference_mla_scores,
                      _score_cases, mistakes_for("mla_scores"),
                      reference_name="the absorbed scores of gqa_lib.MultiHeadLatentAttention")
check_mla_scores = mla_scores.check


def reference_mla_cache_bytes(model, tokens, batch=1, bytes_per_number=2):
    """gqa_lib.mla_cache_bytes: n_layers x (d_c + d_rope) x tokens x batch x bytes per number."""
    m = model.mla
    return lib_mla_cache_bytes(model.n_layers, m.d_c, m.d_rope, tokens, batch, bytes_per_number)


TOY = ModelSpec(name="toy MLA of notebook 07", n_layers=1, d_model=64, n_heads=4, n_kv_heads=None, head_dim=16,
                context=6, attention="MLA", source="notebook 07, section 2", mla=MLADims(24, 8, 32, 16))
# Two more toys whose d_rope is not head_dim / 2 (in DeepSeek-V2 and V3 it is: 64 of 128), sized so that each known
# mistake gives its own number per token and layer: TOY_B's right answer is 24 (20 + 4), the mistakes' 84 (per-head
# keys and values), 32 (a RoPE key per head), 20 (no RoPE key), 44 (the latent twice), 28 (head_dim / 2 for d_rope).
# On notebook 07's toy "the latent twice" and "a RoPE key per head" are both 56, and "head_dim / 2" is right.
TOY_B = ModelSpec(name="toy MLA B", n_layers=2, d_model=48, n_heads=3, n_kv_heads=None, head_dim=16, context=8,
                  attention="MLA", source="the checker of notebook 07", mla=MLADims(20, 4, 24, 8))
TOY_C = ModelSpec(name="toy MLA C", n_layers=3, d_model=16, n_heads=2, n_kv_heads=None, head_dim=8, context=8,
                  attention="MLA", source="the checker of notebook 07", mla=MLADims(12, 6, 16, 8))


def _cache_cases() -> list[Case]:
    rows = [(TOY, 6, 1, 4), (TOY_B, 5, 2, 2), (TOY_C, 7, 1, 1), (get_model("DeepSeek-V2 236B"), 1, 1, 2),
            (get_model("DeepSeek-V3 671B"), 100_000, 1, 2), (get_model("DeepSeek-V3 671B"), 131_072, 4, 1)]
    cases = []
    for i, (m, tokens, batch, nb) in enumerate(rows):
        label = (f"{m.name} ({m.n_layers} layer{'s' * (m.n_layers > 1)}, {m.n_heads} heads, head_dim {m.head_dim}, "
                 f"d_c {m.mla.d_c}, d_rope {m.mla.d_rope}, v_head_dim {m.mla.v_head_dim}), {tokens:,} tokens, "
                 f"batch {batch}, {nb} bytes per number")
        cases.append(Case(label, (m, tokens, batch, nb), size=i))
    return cases


mla_cache_bytes = Exercise("mla_cache_bytes", "mla_cache_bytes(model, tokens, batch, bytes_per_number)",
                           reference_mla_cache_bytes, _cache_cases, mistakes_for("mla_cache_bytes"),
                           reference_name="gqa_lib.mla_cache_bytes")
check_mla_cache_bytes = mla_cache_bytes.check
