"""Solutions to notebook 08's exercises: a sliding window with attention sinks, an integer round trip, and the
bytes of an integer cache."""

import torch


def window_mask(n, window, sinks):
    i = torch.arange(n)[:, None]  # query positions, as rows
    j = torch.arange(n)[None, :]  # key positions, as columns
    in_window = i - j < window  # the last `window` keys, the query's own included
    return (j <= i) & (in_window | (j < sinks))  # never a later key, sinks included


def int_round_trip(x, bits):
    levels = 2 ** bits - 1  # steps between the smallest and the largest integer
    g = x.float().unflatten(-1, (-1, 64))  # (..., n_groups, 64)
    low = g.amin(-1, keepdim=True).to(torch.bfloat16).float()  # the minimum as stored
    scale = ((g.amax(-1, keepdim=True) - low) / levels).to(torch.bfloat16).float()  # the scale as stored
    scale = scale.clamp_min(torch.finfo(torch.bfloat16).tiny)  # a group of equal numbers: every q is 0
    q = ((g - low) / scale).round().clamp(0, levels)  # the integers the cache holds
    return (q * scale + low).flatten(-2).to(x.dtype)


def quantized_cache_bytes(n_layers, numbers_per_token, tokens, bits):
    integers = numbers_per_token * bits // 8  # bytes of one token's integers in one layer
    scales = numbers_per_token // 64 * 4  # a bf16 scale and a bf16 minimum per group of 64
    return n_layers * tokens * (integers + scales)
