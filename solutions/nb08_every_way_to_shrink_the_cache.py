"""Solutions to notebook 08's exercises: a sliding window with attention sinks, an integer round trip, and the
bytes of an integer cache."""

import math

import torch


def window_mask(n, window, sinks):
    i = torch.arange(n)[:, None]  # query positions, as rows
    j = torch.arange(n)[None, :]  # key positions, as columns
    in_window = i - j < window  # the last `window` keys, the query's own included
    return (j <= i) & (in_window | (j < sinks))  # never a later key, sinks included


def int_round_trip(x, bits):
    levels = 2 ** bits - 1  # steps between the smallest and the largest integer
    g = x.float().unflatten(-1, (-1, 64))  # (..., n_groups, 64)
    low = bf16_toward(g.amin(-1, keepdim=True), -math.inf)  # (..., n_groups, 1): stored minimum, at or below them all
    high = g.amax(-1, keepdim=True)  # (..., n_groups, 1)
    step = ((high - low) / levels).clamp_min(torch.finfo(torch.bfloat16).tiny)  # a group of equal numbers: every q is 0
    scale = bf16_toward(step, math.inf)  # (..., n_groups, 1): stored scale, so that the top level reaches the maximum
    q = ((g - low) / scale).round().clamp(0, levels)  # (..., n_groups, 64): the integers the cache holds
    return (q * scale + low).flatten(-2).to(x.dtype)  # x's shape and dtype


def bf16_toward(v, direction):
    """Each float32 number of v rounded to bf16 on the side of `direction`: -inf gives the largest bf16 number at
    or below it, +inf the smallest at or above it. Returned as float32, v's shape."""
    b = v.to(torch.bfloat16)  # the nearest bf16 number: on either side of v
    wrong_side = b.float() > v if direction < 0 else b.float() < v
    return torch.where(wrong_side, torch.nextafter(b, torch.full_like(b, direction)), b).float()  # one bf16 step back


def quantized_cache_bytes(n_layers, numbers_per_token, tokens, bits):
    integers = numbers_per_token * bits // 8  # bytes of one token's integers in one layer
    scales = numbers_per_token // 64 * 4  # a bf16 scale and a bf16 minimum per group of 64
    return n_layers * tokens * (integers + scales)
