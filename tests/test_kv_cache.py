"""KVCache: it stores only the KV heads, and its tensors take exactly the bytes the arithmetic predicts."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gqa_lib.core.attention import GroupedQueryAttention
from gqa_lib.core.cache_math import DTYPE_BYTES, kv_cache_bytes
from gqa_lib.core.kv_cache import KVCache
from gqa_lib.models.tiny_lm import TinyLM, TinyLMConfig

pytestmark = pytest.mark.usefixtures("single_thread")

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@given(batch=st.integers(1, 4), n_kv_heads=st.integers(1, 8), head_dim=st.integers(1, 64), max_len=st.integers(1, 64),
       dtype=st.sampled_from(sorted(TORCH_DTYPES)))
def test_cache_tensors_take_exactly_the_predicted_bytes(batch, n_kv_heads, head_dim, max_len, dtype):
    cache = KVCache(batch, n_kv_heads, head_dim, max_len, dtype=TORCH_DTYPES[dtype])
    assert cache.k.element_size() == DTYPE_BYTES[dtype]
    predicted = kv_cache_bytes(1, n_kv_heads, head_dim, max_len, batch, DTYPE_BYTES[dtype])
    assert cache.nbytes == cache.k.nbytes + cache.v.nbytes == predicted
    assert cache.k.shape == cache.v.shape == (batch, n_kv_heads, max_len, head_dim)


@pytest.mark.parametrize("dtype", sorted(TORCH_DTYPES))
def test_layer_cache_holds_kv_heads_not_query_heads(dtype):
    gqa = GroupedQueryAttention(d_model=64, n_heads=8, n_kv_heads=2)
    mha = GroupedQueryAttention(d_model=64, n_heads=8, n_kv_heads=8)
    b = DTYPE_BYTES[dtype]
    gqa_cache = gqa.new_cache(batch=3, max_len=100, dtype=TORCH_DTYPES[dtype])
    mha_cache = mha.new_cache(batch=3, max_len=100, dtype=TORCH_DTYPES[dtype])
    assert gqa_cache.nbytes == kv_cache_bytes(1, 2, 8, 100, 3, b)
    assert mha_cache.nbytes == 4 * gqa_cache.nbytes  # group size 4: four times smaller


@pytest.mark.parametrize(("n_kv_heads", "dtype"), [(4, torch.float32), (2, torch.bfloat16), (1, torch.float16)])
def test_tiny_lm_caches_over_all_layers_take_the_predicted_bytes(n_kv_heads, dtype):
    cfg = TinyLMConfig(d_model=32, n_layers=3, n_heads=4, n_kv_heads=n_kv_heads, d_ff=64, max_len=40)
    model = TinyLM(cfg).to(dtype)
    caches = model.new_caches(batch=2)
    predicted = kv_cache_bytes(cfg.n_layers, n_kv_heads, cfg.d_model // cfg.n_heads, cfg.max_len, 2,
                               torch.tensor([], dtype=dtype).element_size())
    assert sum(c.nbytes for c in caches) == predicted


def test_append_fills_in_order_and_returns_everything_so_far():
    cache = KVCache(batch=1, n_kv_heads=2, head_dim=4, max_len=5)
    bytes_before = cache.nbytes
    k1, v1 = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    k2, v2 = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4)
    cache.append(k1, v1)
    k, v = cache.append(k2, v2)
    assert cache.length == 4
    assert torch.equal(k, torch.cat([k1, k2], dim=2)) and torch.equal(v, torch.cat([v1, v2], dim=2))
    assert cache.nbytes == bytes_before  # space was taken once, up front
    cache.reset()
    assert cache.length == 0
    k, _ = cache.append(k2, v2)
    assert torch.equal(k, k2)


def test_full_cache_refuses_and_keeps_its_contents():
    cache = KVCache(batch=1, n_kv_heads=1, head_dim=2, max_len=3)
    cache.append(torch.ones(1, 1, 3, 2), torch.ones(1, 1, 3, 2))
    with pytest.raises(ValueError, match=r"cache is full: 3 stored \+ 1 new > max_len=3"):
        cache.append(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
    assert cache.length == 3 and torch.all(cache.k == 1)
