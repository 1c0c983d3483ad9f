"""Multi-Head Latent Attention: shapes, the two decode forms, cached decoding, and DeepSeek-V3's cache figures."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gqa_lib.core.cache_math import GB, GIB, kv_cache_bytes, mla_cache_bytes, mla_elements_per_token_per_layer
from gqa_lib.core.mla import MLACache, MultiHeadLatentAttention, decode_step_flops, decode_step_traffic
from gqa_lib.models.catalog import get_model


def make_layer(seed=0, d_model=32, n_heads=4, d_c=16, d_rope=8, head_dim=12, v_head_dim=10, d_q=24):
    torch.manual_seed(seed)
    layer = MultiHeadLatentAttention(d_model, n_heads, d_c, d_rope, head_dim, v_head_dim, d_q=d_q)
    with torch.no_grad():  # norms start at weight 1; make them matter so the tests see them
        for norm in (layer.kv_norm, getattr(layer, "q_norm", None)):
            if norm is not None:
                norm.weight.uniform_(0.5, 1.5)
    return layer.eval()


# --- shapes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("d_q", [None, 24])
def test_shapes_of_every_stage(d_q):
    layer = make_layer(d_q=d_q)
    x = torch.randn(2, 7, 32)
    latent, k_rope = layer.compress_kv(x)
    assert latent.shape == (2, 7, 16) and k_rope.shape == (2, 7, 8)
    q_c, q_r = layer.queries(x)
    assert q_c.shape == (2, 4, 7, 12) and q_r.shape == (2, 4, 7, 8)
    k, v = layer.expand_kv(latent, k_rope)
    assert k.shape == (2, 4, 7, 12 + 8) and v.shape == (2, 4, 7, 10)
    y, w = layer(x, return_weights=True)
    assert y.shape == (2, 7, 32) and w.shape == (2, 4, 7, 7)
    assert layer.absorbed_key_weight().shape == (4, 12, 16)
    assert layer.absorbed_value_weight().shape == (4, 10, 16)


def test_softmax_scale_counts_nope_and_rope_parts():
    assert make_layer().scale == pytest.approx(1 / math.sqrt(12 + 8))


def test_query_latent_is_optional():
    assert not hasattr(make_layer(d_q=None), "q_down")
    assert make_layer(d_q=24).q_down.weight.shape == (24, 32)


def test_every_head_shares_one_rope_key():
    layer = make_layer()
    latent, k_rope = layer.compress_kv(torch.randn(1, 5, 32))
    k, _ = layer.expand_kv(latent, k_rope)
    for head in range(4):
        torch.testing.assert_close(k[0, head, :, 12:], k_rope[0])


def test_causal_rows_sum_to_one_and_never_look_ahead():
    _, w = make_layer()(torch.randn(1, 6, 32), return_weights=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(1, 4, 6))
    assert (w.triu(diagonal=1) == 0).all()


# --- explicit and absorbed agree ------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(n_heads=st.integers(1, 4), d_c=st.integers(1, 12), half_rope=st.integers(1, 4), head_dim=st.integers(1, 9),
       v_head_dim=st.integers(1, 9), use_dq=st.booleans(), seq=st.integers(1, 6), batch=st.integers(1, 2),
       seed=st.integers(0, 2**16))
def test_explicit_and_absorbed_agree_on_random_shapes(n_heads, d_c, half_rope, head_dim, v_head_dim, use_dq,
                                                      seq, batch, seed):
    layer = make_layer(seed, 16, n_heads, d_c, 2 * half_rope, head_dim, v_head_dim, d_q=8 if use_dq else None)
    x = torch.randn(batch, seq, 16)
    with torch.no_grad():
        y_explicit, w_explicit = layer(x, mode="explicit", return_weights=True)
        y_absorbed, w_absorbed = layer(x, mode="absorbed", return_weights=True)
    torch.testing.assert_close(y_absorbed, y_explicit, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(w_absorbed, w_explicit, atol=1e-4, rtol=1e-4)


def test_absorbed_step_builds_no_per_head_key_or_value():
    """Record every tensor the absorbed decode step makes: none is as large as a per-head K or V."""
    from torch.overrides import TorchFunctionMode

    class Sizes(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.numels = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, tuple) else (out,):
                if isinstance(t, torch.Tensor) and t._base is None:  # new memory, not a view of the cache
                    self.numels.append(t.numel())
            return out

    n_heads, head_dim, d_c, seq = 8, 16, 12, 64
    layer = make_layer(d_model=32, n_heads=n_heads, d_c=d_c, head_dim=head_dim, v_head_dim=head_dim)
    cache = layer.new_cache(1, seq + 1)
    with torch.no_grad():
        layer(torch.randn(1, seq, 32), cache=cache)
        sizes = {}
        for mode in ("explicit", "absorbed"):
            cache.length = seq
            with Sizes() as rec:
                layer(torch.randn(1, 1, 32), cache=cache, mode=mode)
            sizes[mode] = max(rec.numels)
    per_head_keys = n_heads * (seq + 1) * (head_dim + 8)
    assert sizes["explicit"] >= per_head_keys
    assert sizes["absorbed"] == n_heads * (seq + 1)  # the largest new tensor: one row of scores per head


# --- cached decoding ----------------------------------------------------------------------------
# Decoding token by token (explicit and absorbed, with and without a query latent) equals the full pass, and bad
# arguments, modes and input shapes are named: the attention contract, tests/test_attention_contract.py.

@pytest.mark.parametrize("mode", ["explicit", "absorbed"])
def test_a_bf16_cache_serves_an_fp32_layer(mode):
    layer = make_layer()
    x = torch.randn(1, 5, 32)
    cache = layer.new_cache(1, 5, dtype=torch.bfloat16)
    with torch.no_grad():
        out = torch.cat([layer(x[:, t:t + 1], cache=cache, mode=mode) for t in range(5)], dim=1)
        full = layer(x)
    assert cache.nbytes == mla_cache_bytes(1, 16, 8, 5, 1, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out, full, atol=3e-2, rtol=3e-2)  # bf16 keeps about 3 significant digits


def test_cache_holds_only_latent_and_rope_key():
    layer = make_layer()
    cache = layer.new_cache(3, 20)
    assert cache.latent.shape == (3, 20, 16) and cache.k_rope.shape == (3, 20, 8)
    assert cache.nbytes == mla_cache_bytes(1, 16, 8, 20, 3, 4) == cache.expected_nbytes()


@pytest.mark.parametrize("dtype, elem", [(torch.float32, 4), (torch.bfloat16, 2), (torch.float16, 2)])
def test_cache_nbytes_equals_the_arithmetic(dtype, elem):
    cache = MLACache(batch=2, d_c=512, d_rope=64, max_len=100, dtype=dtype)
    assert cache.nbytes == mla_cache_bytes(1, 512, 64, 100, 2, elem) == 2 * 100 * 576 * elem


def test_cached_latent_is_what_compress_kv_makes():
    layer = make_layer()
    x = torch.randn(1, 5, 32)
    cache = layer.new_cache(1, 5)
    with torch.no_grad():
        layer(x, cache=cache)
        latent, k_rope = layer.compress_kv(x)
    torch.testing.assert_close(cache.latent, latent)
    torch.testing.assert_close(cache.k_rope, k_rope)


# --- bad input ----------------------------------------------------------------------------------

def test_full_cache_and_wrong_cache_fail_clearly():
    layer = make_layer()
    cache = layer.new_cache(1, 3)
    layer(torch.randn(1, 3, 32), cache=cache)
    with pytest.raises(ValueError, match="cache is full: 3 stored \\+ 1 new > max_len=3"):
        layer(torch.randn(1, 1, 32), cache=cache)
    with pytest.raises(ValueError, match="does not fit"):
        layer(torch.randn(2, 1, 32), cache=layer.new_cache(1, 3))
    with pytest.raises(TypeError, match="must be an MLACache"):
        layer(torch.randn(1, 1, 32), cache=object())


# --- DeepSeek-V3's real shape, from data/ --------------------------------------------------------

def test_deepseek_v3_cache_figures_from_data():
    v3 = get_model("DeepSeek-V3 671B")
    assert (v3.n_layers, v3.n_heads, v3.mla.d_c, v3.mla.d_rope) == (61, 128, 512, 64)
    assert v3.n_layers * mla_elements_per_token_per_layer(v3.mla.d_c, v3.mla.d_rope) == 35_136
    assert v3.elements_per_token() == 35_136
    at_100k = v3.cache_bytes(100_000, 1, "bf16")
    assert at_100k == 7_027_200_000
    assert at_100k / GB == pytest.approx(7.0272)
    assert at_100k / GIB == pytest.approx(6.5446, abs=1e-4)


def test_lecture_400_gb_is_an_mha_cache_of_v3_shape():
    v3 = get_model("DeepSeek-V3 671B")
    mha = v3.mha_cache_bytes(100_000, 1, "bf16")
    assert mha == 2 * 61 * 128 * 128 * 100_000 * 2
    assert mha / GB == pytest.approx(399.77, abs=0.01)
    assert mha / v3.cache_bytes(100_000) == pytest.approx(56.89, abs=0.01)


def test_deepseek_v2_equals_gqa_with_2_25_kv_heads():
    v2 = get_model("DeepSeek-V2 236B")
    per_layer = mla_elements_per_token_per_layer(v2.mla.d_c, v2.mla.d_rope)
    assert per_layer == 576 == 4.5 * v2.head_dim
    assert per_layer / (2 * v2.head_dim) == 2.25


def test_deepseek_v2_against_67b_at_equal_precision():
    v2, dense = get_model("DeepSeek-V2 236B"), get_model("DeepSeek LLM 67B")
    assert dense.elements_per_token() == 2 * 95 * 8 * 128
    saving = 1 - v2.cache_bytes(1000) / dense.cache_bytes(1000)
    assert saving == pytest.approx(0.8224, abs=1e-4)  # the paper's 93.3% also quantises the cache


def test_table_9_mla_figures():
    # DeepSeek-V2 Table 9: 15.6K (27 layers) and 34.6K (60 layers) elements per token with MLA
    assert 27 * mla_elements_per_token_per_layer(512, 64) == 15_552
    assert 60 * mla_elements_per_token_per_layer(512, 64) == 34_560
    assert kv_cache_bytes(60, 56, 128, 1, 1, 1) == 860_160  # MHA at 60 x 7168 wide: the 860.2K


# --- decode-step accounting ---------------------------------------------------------------------

def test_decode_traffic_and_flops():
    t = decode_step_traffic(128, 512, 64, 128, 128, 1000, 2)
    assert t["cache_read"] == 1000 * 576 * 2
    assert t["explicit_built"] == 1000 * 128 * (128 + 64 + 128) * 2
    assert t["absorbed_built"] == 128 * 1000 * 2
    assert decode_step_flops(128, 512, 64, 128, 128, 1000, "absorbed") == 2 * 128 * 1000 * (576 + 512)
    explicit = decode_step_flops(128, 512, 64, 128, 128, 1000, "explicit")
    assert explicit == 2 * 1000 * 512 * 128 * 256 + 2 * 128 * 1000 * (192 + 128)
    with pytest.raises(ValueError, match="mode='x'"):
        decode_step_flops(1, 1, 2, 1, 1, 1, "x")


def test_tensor_parallel_splits_kv_heads_but_every_device_keeps_the_whole_latent():
    from gqa_lib.core.mla import tensor_parallel_numbers

    # GQA-8 of 128: 8 KV heads split 8 ways is 1 KV head a device; 16 ways copies each KV head on 2 devices.
    assert [tensor_parallel_numbers(tp, n_kv_heads=8, head_dim=128) for tp in (1, 2, 8, 16)] == [2048, 1024, 256, 256]
    assert tensor_parallel_numbers(8, n_kv_heads=128, head_dim=128) == 2 * 16 * 128  # MHA: 16 KV heads a device
    # MLA: the latent and the RoPE key, on every device, whatever tp is
    assert {tensor_parallel_numbers(tp, d_c=512, d_rope=64) for tp in (1, 4, 8, 16, 3)} == {576}
    with pytest.raises(ValueError, match=r"tp=3 must divide n_kv_heads=8 or be a multiple of it"):
        tensor_parallel_numbers(3, n_kv_heads=8, head_dim=128)
    with pytest.raises(ValueError, match="not both or neither"):
        tensor_parallel_numbers(2, n_kv_heads=8, head_dim=128, d_c=512)
    with pytest.raises(ValueError, match="tp=0"):
        tensor_parallel_numbers(0, d_c=512, d_rope=64)
