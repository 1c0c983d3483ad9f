"""Exercises of notebook 03: one MQA decode step for a batch whose sequences hold caches of different lengths, and
new tokens against a longer cache."""

from __future__ import annotations

import torch

from gqa_lib.core.attention import grouped_attention
from gqa_lib.exercises.checking import Case, Exercise, attention_case, dtype_name, masked_row_hint, randn, seeded_cases
from gqa_lib.exercises.museum import mistakes_for


def reference_attention(q, k, v):
    """gqa_lib.grouped_attention (causal, bottom-right aligned when there are more keys than queries)."""
    return grouped_attention(q, k, v, causal=True)


def _cases(name: str, rows) -> list[Case]:
    """MQA inputs, one per row of (batch, n_heads, s_q, s_k, head_dim, dtype): one KV head."""
    return seeded_cases(name, [(b, h, 1, s_q, s_k, d, dtype) for b, h, s_q, s_k, d, dtype in rows], attention_case)


def reference_mqa_decode_ragged(q, k_cache, v_cache, lengths):
    """Each sequence on its own: sequence b's new query against the first ``lengths[b]`` cached keys and values,
    with gqa_lib.grouped_attention (one query sees every key it is given). What lies beyond ``lengths[b]`` in the
    padded cache never counts."""
    rows = [grouped_attention(q[i:i + 1], k_cache[i:i + 1, :, :n], v_cache[i:i + 1, :, :n])
            for i, n in enumerate(lengths)]
    return torch.cat(rows, dim=0)  # (batch, n_heads, 1, head_dim)


def _ragged_cases() -> list[Case]:
    # (n_heads, cache slots S, head_dim, lengths, dtype): a full cache, sequences of one token, every length
    # different, a batch whose longest sequence leaves slots free, bf16
    rows = [(1, 1, 4, [1], torch.float32), (2, 4, 4, [4, 2], torch.float32), (4, 6, 8, [1, 6, 3], torch.float32),
            (3, 5, 8, [2, 5, 5, 1], torch.float32), (8, 9, 8, [5, 7], torch.float32),
            (4, 7, 16, [7, 2], torch.bfloat16)]
    return seeded_cases("mqa_decode_ragged", rows, _ragged_case)


def _ragged_case(gen, h, slots, d, lengths, dtype) -> Case:
    """q (b, h, 1, d); k_cache and v_cache (b, 1, slots, d), whose slots past each sequence's length hold leftovers
    (random numbers three times as large as the real ones, so that reading them shows); lengths, a list of b
    ints."""
    b = len(lengths)
    q = randn(gen, b, h, 1, d, dtype=dtype)
    caches = []
    for _ in range(2):  # keys, then values
        real, leftover = randn(gen, b, 1, slots, d), 3 * randn(gen, b, 1, slots, d)
        used = torch.arange(slots)[None, None, :, None] < torch.tensor(lengths)[:, None, None, None]
        caches.append(torch.where(used, real, leftover).to(dtype))
    label = (f"batch {b}, {h} query head{'s' * (h > 1)}, 1 KV head, a cache of {slots} slot{'s' * (slots > 1)}, "
             f"lengths {lengths}, head_dim {d}, {dtype_name(dtype)}")
    return Case(label, (q, *caches, list(lengths)), size=b * h * slots * d,
                info={"lengths": list(lengths), "slots": slots, "n_heads": h})


mqa_decode_ragged = Exercise(
    "mqa_decode_ragged", "mqa_decode_ragged(q, k_cache, v_cache, lengths)", reference_mqa_decode_ragged,
    _ragged_cases, mistakes_for("mqa_decode_ragged"), nan_hint=masked_row_hint,
    reference_name="gqa_lib.grouped_attention on each sequence's first lengths[b] keys and values alone")
check_mqa_decode_ragged = mqa_decode_ragged.check


def _new_token_cases() -> list[Case]:
    return _cases("attend_new_tokens", [(1, 2, 1, 1, 4, torch.float32), (1, 2, 2, 2, 4, torch.float32),
                                        (2, 4, 1, 9, 8, torch.float32), (2, 4, 3, 7, 8, torch.float32),
                                        (3, 2, 4, 10, 16, torch.float32), (2, 4, 3, 12, 8, torch.bfloat16)])


attend_new_tokens = Exercise("attend_new_tokens", "attend_new_tokens(q, k, v)", reference_attention,
                             _new_token_cases, mistakes_for("attend_new_tokens"), nan_hint=masked_row_hint,
                             reference_name="gqa_lib.grouped_attention with its bottom-right causal mask")
check_attend_new_tokens = attend_new_tokens.check
