"""Solutions to notebook 06's exercises: a decode step's cost, the step itself, mean-pool conversion."""

import math


def decode_cost(n_heads, n_kv_heads, seq_len, head_dim, bytes_per_elem):
    bytes_read = 2 * n_kv_heads * seq_len * head_dim * bytes_per_elem  # every cached key and value, once
    flops = 2 * 2 * n_heads * seq_len * head_dim  # q.k and weights.v for every QUERY head
    return bytes_read, flops


def decode_attention(q, k, v):
    b, n_heads, _, d = q.shape
    n_kv = k.shape[1]
    rows = q.reshape(b, n_kv, n_heads // n_kv, d)  # (b, n_kv, group_size, d): the group's queries as rows
    weights = (rows @ k.transpose(-2, -1) / math.sqrt(d)).softmax(dim=-1)  # no mask for the newest token
    return (weights @ v).reshape(b, n_heads, 1, d)


def mean_pool_kv(w, n_kv_heads, new_n_kv_heads):
    d_model = w.shape[1]
    r = n_kv_heads // new_n_kv_heads  # old heads merged into each new one
    blocks = w.view(new_n_kv_heads, r, -1, d_model)  # (new, r, head_dim, d_model): contiguous blocks
    return blocks.mean(dim=1).reshape(-1, d_model)
