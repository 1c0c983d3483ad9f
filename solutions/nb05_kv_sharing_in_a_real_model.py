"""Solutions to notebook 05's exercises: which query heads share a KV head; GQA weights as MHA weights."""

import torch


def same_kv_head(n_heads, n_kv_heads):
    kv_of = torch.arange(n_heads) // (n_heads // n_kv_heads)  # query head i -> KV head i // group_size
    return kv_of[:, None] == kv_of[None, :]  # (n_heads, n_heads)


def expand_kv_projection(w, n_heads, n_kv_heads):
    d_model = w.shape[1]
    blocks = w.view(n_kv_heads, -1, d_model)  # (n_kv_heads, head_dim, d_model): one block per KV head
    return blocks.repeat_interleave(n_heads // n_kv_heads, dim=0).reshape(-1, d_model)
