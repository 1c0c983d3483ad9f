"""Exercises of notebook 03: multi-query attention, and new tokens against a longer cache."""

from __future__ import annotations

import torch

from gqa_lib.core.attention import grouped_attention
from gqa_lib.exercises.checking import Case, Exercise, attention_case, seeded_cases
from gqa_lib.exercises.museum import mistakes_for


def reference_attention(q, k, v):
    """gqa_lib.grouped_attention (causal, bottom-right aligned when there are more keys than queries)."""
    return grouped_attention(q, k, v, causal=True)


def _cases(name: str, rows) -> list[Case]:
    """MQA inputs, one per row of (batch, n_heads, s_q, s_k, head_dim, dtype): one KV head."""
    return seeded_cases(name, [(b, h, 1, s_q, s_k, d, dtype) for b, h, s_q, s_k, d, dtype in rows], attention_case)


def _mqa_cases() -> list[Case]:
    return _cases("mqa", [(1, 1, 1, 1, 4, torch.float32), (2, 4, 5, 5, 8, torch.float32),
                          (3, 6, 7, 7, 16, torch.float32), (2, 8, 6, 6, 8, torch.bfloat16)])


mqa = Exercise("mqa", "mqa(q, k, v)", reference_attention, _mqa_cases, mistakes_for("mqa"),
               reference_name="gqa_lib.grouped_attention (n_kv_heads = 1)")
check_mqa = mqa.check


def _new_token_cases() -> list[Case]:
    return _cases("attend_new_tokens", [(1, 2, 1, 1, 4, torch.float32), (1, 2, 2, 2, 4, torch.float32),
                                        (2, 4, 1, 9, 8, torch.float32), (2, 4, 3, 7, 8, torch.float32),
                                        (3, 2, 4, 10, 16, torch.float32), (2, 4, 3, 12, 8, torch.bfloat16)])


attend_new_tokens = Exercise("attend_new_tokens", "attend_new_tokens(q, k, v)", reference_attention,
                             _new_token_cases, mistakes_for("attend_new_tokens"),
                             reference_name="gqa_lib.grouped_attention with its bottom-right causal mask")
check_attend_new_tokens = attend_new_tokens.check
