"""Solutions to notebook 04's exercises: the query-head -> KV-head map, copying KV heads, GQA by stacking rows."""

import math

import torch


def kv_head_of(query_head, n_heads, n_kv_heads):
    group_size = n_heads // n_kv_heads
    return query_head // group_size  # contiguous groups


def expand_kv(x, group_size):
    return x.repeat_interleave(group_size, dim=1)  # (b, n_kv_heads * group_size, s, d)


def gqa(q, k, v):
    b, n_heads, s_q, d = q.shape
    n_kv, s_k = k.shape[1], k.shape[2]
    group_size = n_heads // n_kv
    rows = q.reshape(b, n_kv, group_size * s_q, d)  # a group's query heads stacked as rows
    scores = rows @ k.transpose(-2, -1) / math.sqrt(d)  # (b, n_kv, group_size * s_q, s_k)
    mask = torch.ones(s_q, s_k, dtype=torch.bool).tril(diagonal=s_k - s_q).repeat(group_size, 1)  # once per head
    weights = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return (weights @ v).reshape(b, n_heads, s_q, d)
