"""Solutions to notebook 03's exercises: an MQA decode step over caches of different lengths, and several new
tokens against a longer cache."""

import math

import torch


def mqa_decode_ragged(q, k_cache, v_cache, lengths):
    slots = k_cache.shape[2]
    scores = q @ k_cache.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (b, n_heads, 1, slots): the one KV head
    real = torch.arange(slots)[None, :] < torch.tensor(lengths)[:, None]  # (b, slots): sequence b's first slots
    weights = scores.masked_fill(~real[:, None, None, :], float("-inf")).softmax(dim=-1)  # leftovers get weight 0
    return weights @ v_cache  # (b, n_heads, 1, head_dim)


def attend_new_tokens(q, k, v):
    s_q, s_k = q.shape[2], k.shape[2]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (b, n_heads, s_q, s_k)
    mask = torch.ones(s_q, s_k, dtype=torch.bool).tril(diagonal=s_k - s_q)  # bottom-right aligned
    return scores.masked_fill(~mask, float("-inf")).softmax(dim=-1) @ v
