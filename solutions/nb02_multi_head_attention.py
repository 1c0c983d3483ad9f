"""Solutions to notebook 02's exercises: MHA over a left-padded batch, RoPE, one cached decode step."""

import math

import torch


def mha_left_padded(x, W_q, W_k, W_v, W_o, n_heads, n_pad):
    b, s, _ = x.shape

    def split(t):  # (b, s, n_heads * head_dim) -> (b, n_heads, s, head_dim)
        return t.view(b, s, n_heads, -1).transpose(1, 2)

    q, k, v = split(W_q(x)), split(W_k(x)), split(W_v(x))
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (b, n_heads, s, s); head_dim from q
    is_pad = torch.arange(s)[None, :] < torch.tensor(n_pad)[:, None]  # (b, s): the first n_pad[b] tokens
    causal = torch.ones(s, s, dtype=torch.bool).tril()  # (s, s)
    allowed = causal[None] & ~is_pad[:, None, :]  # (b, s, s): no query sees a pad key
    weights = scores.masked_fill(~allowed[:, None], float("-inf")).softmax(dim=-1)  # pad queries' rows: all NaN
    weights = weights.masked_fill(is_pad[:, None, :, None], 0.0)  # a pad position sees nothing: weights 0, not NaN
    out = (weights @ v).transpose(1, 2).reshape(b, s, -1)  # (b, s, n_heads * head_dim)
    return W_o(out)


def rope(x, start_pos, base=10000.0):
    d = x.shape[-1]
    # float64 angles and rotation, rounded to x's dtype once, as gqa_lib.core.rope does: float32 angles at position
    # 100,000 are good only to about 1e-2 rad, and bf16 cos and sin would round a second time
    inv_freq = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
    positions = torch.arange(start_pos, start_pos + x.shape[2], dtype=torch.float64)  # (seq,)
    angles = positions[:, None] * inv_freq[None, :]  # (seq, d/2)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()  # (seq, d)
    x64 = x.double()
    x1, x2 = x64.chunk(2, dim=-1)  # rotate_half layout: pair i is (x[i], x[i + d/2])
    return (x64 * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


def decode_step(q, k, v, k_cache, v_cache, rope):
    pos = k_cache.shape[2]  # the new token's position: how many tokens came before it
    q, k = rope(q, pos), rope(k, pos)
    keys = torch.cat([k_cache, k], dim=2)  # (b, heads, pos + 1, head_dim)
    values = torch.cat([v_cache, v], dim=2)
    weights = (q @ keys.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(dim=-1)  # no mask: one query sees all
    return weights @ values
