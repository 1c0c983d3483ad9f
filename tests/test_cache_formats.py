"""KVCache keeps only formats that can hold keys and values, and says so when a value does not fit.

Before: fp8 caches were accepted although the error message's list did not name them (values up to
1,102 saturated at 448 and moved the output by 31.5%), and fp16 turned values past 65,504 into inf
and the attention output into NaN, both without a word.
"""

from __future__ import annotations

import pytest
import torch

from gqa_lib import KVCache, grouped_attention


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3", "e5m2"])
def test_fp8_is_refused_with_the_valid_types(dtype):
    with pytest.raises(ValueError, match=r"dtype=torch\.float8.*needs scales.*valid: torch\.float32"):
        KVCache(1, 2, 8, 4, dtype=dtype)


@pytest.mark.parametrize(("dtype", "top"), [(torch.float16, 65504.0), (torch.bfloat16, 3.3895e38)],
                         ids=["fp16", "bf16"])
def test_a_value_past_the_dtype_is_refused_and_nothing_is_stored(dtype, top):
    cache = KVCache(1, 2, 8, 4, dtype=dtype)
    k = torch.ones(1, 2, 1, 8, dtype=torch.float64)
    cache.append(k.to(dtype), k.to(dtype))
    big = k.clone()
    big[0, 1, 0, 3] = 2 * top
    with pytest.raises(OverflowError, match=r"v holds .*past torch\.(float16|bfloat16)'s largest number"):
        cache.append(k, big)
    assert cache.length == 1  # the refused token is not counted
    k_all, v_all = cache.append(k, k)
    assert torch.isfinite(k_all).all() and torch.isfinite(v_all).all()


def test_a_value_that_rounds_down_to_the_largest_fits():
    cache = KVCache(1, 1, 4, 2, dtype=torch.float16)
    k = torch.full((1, 1, 1, 4), 65510.0)  # past 65,504 but rounds to it, not to inf
    stored, _ = cache.append(k, k)
    assert stored.max().item() == 65504.0


def test_fp16_cache_output_stays_finite_or_refuses():
    """What a learner sees: either the output is finite or the append says why it cannot be."""
    q = torch.randn(1, 2, 1, 8)
    k = torch.randn(1, 1, 3, 8) * 1e5  # past fp16's range
    cache = KVCache(1, 1, 8, 3, dtype=torch.float16)
    with pytest.raises(OverflowError, match="k holds"):
        cache.append(k, k)
    cache32 = KVCache(1, 1, 8, 3, dtype=torch.float32)
    k_all, v_all = cache32.append(k, k)
    assert torch.isfinite(grouped_attention(q, k_all, v_all)).all()


def test_inf_given_is_not_called_an_overflow():
    """An inf in the input is the caller's value, not the cache's rounding: stored as given (the attention
    layers refuse non-finite inputs, naming the position)."""
    cache = KVCache(1, 1, 4, 2, dtype=torch.float16)
    k = torch.zeros(1, 1, 1, 4)
    k[0, 0, 0, 0] = float("inf")
    stored, _ = cache.append(k, k)
    assert torch.isinf(stored).any()


def _mla_cache(dtype):
    from gqa_lib.core.mla import MLACache

    return MLACache(1, 16, 8, 4, dtype=dtype)


def _latent_cache(dtype):
    from gqa_lib.experiments.latent_conversion import LatentCache

    return LatentCache(1, 16, 4, dtype=dtype)


@pytest.mark.parametrize("make", [_mla_cache, _latent_cache], ids=["MLACache", "LatentCache"])
def test_every_cache_refuses_what_it_cannot_hold(make):
    """The same kind as KVCache's: the latent caches took fp8 and int8, and stored values past fp16 as inf."""
    for bad in (torch.float8_e4m3fn, torch.int8):
        with pytest.raises(ValueError, match="dtype=torch"):
            make(bad)
    cache = make(torch.float16)
    big = torch.full((1, 1, 16), 1e6)
    args = (big, torch.zeros(1, 1, 8)) if hasattr(cache, "k_rope") else (big,)
    with pytest.raises(OverflowError, match=r"latent holds 1e\+06, past torch\.float16's largest number 65,504"):
        cache.append(*args)
    assert cache.length == 0
