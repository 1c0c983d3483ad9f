"""Exercises of notebook 08: a sliding window with attention sinks, an integer round trip of cached numbers,
and the bytes of an integer cache with its scales and minima."""

from __future__ import annotations

import torch

from gqa_lib.exercises.checking import Case, Exercise, dtype_name, generator, randn
from gqa_lib.exercises.museum import mistakes_for
from gqa_lib.experiments.cache_shrink import GROUP, CachePolicy, fake_quantize, layer_cache_bytes, visible
from gqa_lib.models.catalog import get_model


def reference_window_mask(n, window, sinks):
    """gqa_lib.experiments.cache_shrink.visible: (n, n) bool, True where query i may see key j: j <= i, and j is one of
    the last ``window`` keys (i - window < j, the query's own key included) or one of the first ``sinks``."""
    return visible(n, window, sinks)


def _window_cases() -> list[Case]:
    rows = [(1, 1, 0, ""), (4, 1, 0, ": each query sees itself only"), (5, 2, 0, ""), (6, 3, 1, ""),
            (5, 8, 0, ": a window longer than the text"), (6, 2, 2, ": as many sinks as the window"),
            (8, 3, 4, ": more sinks than the window"), (12, 4, 2, "")]
    cases = []
    for i, (n, window, sinks, why) in enumerate(rows):
        label = (f"{n} token{'s' * (n > 1)}, window {window}, "
                 f"{f'{sinks} sink' + 's' * (sinks > 1) if sinks else 'no sinks'}{why}")
        cases.append(Case(label, (n, window, sinks), size=i))
    return cases


window_mask = Exercise("window_mask", "window_mask(n, window, sinks)", reference_window_mask, _window_cases,
                       mistakes_for("window_mask"), reference_name="gqa_lib.experiments.cache_shrink.visible")
check_window_mask = window_mask.check


def reference_int_round_trip(x, bits):
    """gqa_lib.experiments.cache_shrink.fake_quantize along the last dim, groups of 64: what an int cache gives back.

    Per group, in float32: low = the largest bf16 number at or below the group's minimum; scale = the smallest
    bf16 number at or above (max - low) / (2**bits - 1) (at least bf16's smallest normal number, so that a group
    of equal numbers has a scale above 0); q = round((x - low) / scale) clamped to 0 .. 2**bits - 1; returns
    q * scale + low in x's dtype and shape. Rounded this way, the levels low .. low + (2**bits - 1) x scale
    cover the group: no number is clipped, and each comes back at most half a step off. (Rounding both to the
    nearest bf16 can put low above the group's smallest numbers, which then come back clipped.)
    """
    return fake_quantize(x, bits)


# The tolerance, from the dtype and the rule. The reference's q x scale + low is exact in float32 on these cases
# (q has at most 8 bits, the scale 8 significant bits, the minimum is a bf16 number), so a solution that follows the
# rule returns the same numbers, up to a few float32 roundings where it orders the arithmetic differently; a bf16
# result is that number rounded once, so the same bf16 number. Another integer, minimum or scale moves a number by
# up to a step, and TOLERANCES' defaults hide that: float32's 1e-4 + 1e-4 x |expected| is 0.02 at 200, nearly two
# steps of the far case's int8 scale (0.011); bf16's 0.05 + 2 % is over two steps of the bf16 case's (0.015 to
# 0.023), and let the nearest-bf16 rule pass there, though it moves 925 of the case's 1,920 numbers by up to a step.
# So: float32, 1e-4 (under 1 % of the smallest step) + 1e-6 x |expected| (8 float32 units, 0.0002 at 200); bf16,
# exactly: the reference's float32 result is exact, so every solution that follows the rule in float32 rounds it
# to the same bf16 number, while a round trip done in bf16 arithmetic (minimum, scale and q x scale + low rounded
# to bf16 on the way) moves most of the case's numbers by a bf16 unit or more.
ROUND_TRIP_TOL = {torch.float32: (1e-4, 1e-6), torch.bfloat16: (0.0, 0.0)}


def _round_trip_cases() -> list[Case]:
    gen = generator("int_round_trip")
    constant = torch.cat([randn(gen, 1, 2, 64), torch.zeros(1, 2, 64)], dim=-1)  # (1, 2, 128)
    rows = [(randn(gen, 1, 64), 8, "1 token of 64 numbers (one group)"),
            (randn(gen, 1, 64), 4, "1 token of 64 numbers (one group)"),
            (randn(gen, 3, 64), 4, "3 tokens of 64 numbers"),
            (randn(gen, 2, 128) * 2, 8, "2 tokens of 128 numbers (two groups each)"),
            (constant, 4, "2 tokens of 128 numbers whose second group is all zeros (max = min)"),
            (torch.full((1, 64), 0.5), 8, "1 token of 64 numbers all equal to 0.5 (max = min, not zero)"),
            (randn(gen, 2, 3, 5, 64, dtype=torch.bfloat16), 8, "batch 2, 3 KV heads, 5 tokens, head_dim 64")]
    # A group far from zero, where bf16 numbers are 1 apart: rounded to the nearest bf16, its minimum 198.6 becomes
    # 199, above two of the group's numbers, which then come back clipped, dozens of int8 steps off; rounded down,
    # it is 198. Drawn last, so that the other cases keep their numbers; checked first, so that a learner who
    # rounds to the nearest bf16 is told on it (on the first ordinary case that rule is less than a step off).
    noise = randn(gen, 1, 64)
    far = 198.6 + (noise - noise.min()) / 2  # (1, 64): 198.6 to about 200.8
    rows.insert(0, (far, 8, f"1 token of 64 numbers from {far.min():.1f} to {far.max():.1f}, far from zero "
                            "(one group)"))
    cases = []
    for i, (x, bits, what) in enumerate(rows):
        label = f"x of shape {tuple(x.shape)}, {dtype_name(x.dtype)}: {what}, {bits} bits"
        cases.append(Case(label, (x, bits), size=i, tol=ROUND_TRIP_TOL[x.dtype]))
    return cases


int_round_trip = Exercise("int_round_trip", "int_round_trip(x, bits)", reference_int_round_trip,
                          _round_trip_cases, mistakes_for("int_round_trip"),
                          reference_name="gqa_lib.experiments.cache_shrink.fake_quantize")
check_int_round_trip = int_round_trip.check


def reference_quantized_cache_bytes(n_layers, numbers_per_token, tokens, bits):
    """Bytes of an int cache quantized per token: n_layers x gqa_lib.experiments.cache_shrink.layer_cache_bytes, that is
    n_layers x tokens x (numbers_per_token x bits / 8 + numbers_per_token / 64 x 4) (a bf16 scale and a bf16
    minimum per group of 64 numbers). ``numbers_per_token`` is a multiple of 64."""
    return round(n_layers * layer_cache_bytes(numbers_per_token, tokens, CachePolicy(bits=bits)))


def _cache_cases() -> list[Case]:
    smol, llama = get_model("SmolLM2-135M"), get_model("Llama-3 8B")
    rows = [(1, GROUP, 1, 8, "1 layer caching one group of 64 numbers"),
            (1, GROUP, 1, 4, "1 layer caching one group of 64 numbers")]
    for m, tokens, bits in [(smol, 8192, 8), (smol, 8192, 4), (llama, 8192, 4)]:
        per_token = 2 * m.n_kv_heads * m.head_dim
        rows.append((m.n_layers, per_token, tokens, bits,
                     f"{m.name}: {m.n_layers} layers, 2 x {m.n_kv_heads} KV heads x head_dim {m.head_dim} = "
                     f"{per_token:,} numbers per token"))
    return [Case(f"{what}, {tokens:,} token{'s' * (tokens > 1)}, int{bits}", (n, per, tokens, bits), size=i)
            for i, (n, per, tokens, bits, what) in enumerate(rows)]


quantized_cache_bytes = Exercise(
    "quantized_cache_bytes", "quantized_cache_bytes(n_layers, numbers_per_token, tokens, bits)",
    reference_quantized_cache_bytes, _cache_cases, mistakes_for("quantized_cache_bytes"),
    reference_name="gqa_lib.experiments.cache_shrink.layer_cache_bytes with CachePolicy(bits=bits)")
check_quantized_cache_bytes = quantized_cache_bytes.check
