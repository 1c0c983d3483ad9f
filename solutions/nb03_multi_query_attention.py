"""Solutions to notebook 03's exercises: MQA, and several new tokens against a longer cache."""

import math

import torch


def mqa(q, k, v):
    s = q.shape[2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # k's one head broadcasts over q's heads
    mask = torch.ones(s, s, dtype=torch.bool).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ v


def attend_new_tokens(q, k, v):
    s_q, s_k = q.shape[2], k.shape[2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (b, n_heads, s_q, s_k)
    mask = torch.ones(s_q, s_k, dtype=torch.bool).tril(diagonal=s_k - s_q)  # bottom-right aligned
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ v
