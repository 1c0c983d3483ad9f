"""Cache arithmetic: the formulas of the DeepSeek-V2 paper's Table 1, bytes per dtype, and units."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gqa_lib.cache_math import (
    DTYPE_BYTES,
    GB,
    GIB,
    auto_format_bytes,
    bytes_per_token,
    dtype_bytes,
    elements_per_token_per_layer,
    format_bytes,
    kv_cache_bytes,
    layout_cache_bytes,
    mla_cache_bytes,
    mla_elements_per_token_per_layer,
    reduction_vs_mha,
)
from gqa_lib.layout import AttentionLayout

counts = st.integers(1, 200)


@st.composite
def layouts(draw):
    n_kv_heads = draw(st.integers(1, 16))
    n_heads = n_kv_heads * draw(st.integers(1, 16))
    return AttentionLayout(n_heads, n_kv_heads, draw(st.integers(1, 256)), draw(st.integers(1, 128)))


def test_public_name_is_importable_from_the_package():
    import gqa_lib

    assert gqa_lib.kv_cache_bytes is kv_cache_bytes


def test_dtype_bytes():
    assert DTYPE_BYTES == {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}
    assert [dtype_bytes(d) for d in ("fp32", "fp16", "bf16", "fp8", "int8")] == [4, 2, 2, 1, 1]


@given(n_layers=counts, n_kv_heads=counts, head_dim=counts, seq_len=st.integers(1, 10**6), batch=st.integers(1, 64),
       dtype=st.sampled_from(sorted(DTYPE_BYTES)))
def test_kv_cache_bytes_is_the_product_formula(n_layers, n_kv_heads, head_dim, seq_len, batch, dtype):
    b = DTYPE_BYTES[dtype]
    got = kv_cache_bytes(n_layers, n_kv_heads, head_dim, seq_len, batch, b)
    assert got == 2 * n_layers * n_kv_heads * head_dim * seq_len * batch * b
    assert isinstance(got, int)  # exact, no float rounding at 10^12 bytes


@given(layouts(), st.integers(1, 10**5), st.integers(1, 8))
def test_cache_grows_linearly_in_tokens_and_batch(layout, seq_len, batch):
    per_token = bytes_per_token(layout, "bf16")
    assert per_token == 2 * layout.n_layers * layout.n_kv_heads * layout.head_dim * 2
    assert layout_cache_bytes(layout, seq_len, batch, "bf16") == per_token * seq_len * batch


@given(layouts())
def test_mha_gqa_mqa_formulas_of_deepseek_v2_table_1(layout):
    """MHA caches 2*n_h*d_h*l, GQA 2*n_g*d_h*l, MQA 2*d_h*l elements per token (DeepSeek-V2, Table 1)."""
    n_h, n_g, d_h, n_layers = layout.n_heads, layout.n_kv_heads, layout.head_dim, layout.n_layers
    assert kv_cache_bytes(n_layers, n_h, d_h, 1, 1, 1) == 2 * n_h * d_h * n_layers
    assert kv_cache_bytes(n_layers, n_g, d_h, 1, 1, 1) == 2 * n_g * d_h * n_layers
    assert kv_cache_bytes(n_layers, 1, d_h, 1, 1, 1) == 2 * d_h * n_layers
    assert elements_per_token_per_layer(n_g, d_h) == 2 * n_g * d_h


@given(layouts())
def test_reduction_against_mha_is_the_group_size(layout):
    mha = AttentionLayout(layout.n_heads, layout.n_heads, layout.head_dim, layout.n_layers)
    ratio = layout_cache_bytes(mha, 100) / layout_cache_bytes(layout, 100)
    assert ratio == reduction_vs_mha(layout.n_heads, layout.n_kv_heads) == layout.group_size


def test_mla_caches_latent_plus_rope_key():
    assert mla_elements_per_token_per_layer(512, 64) == 576
    assert mla_cache_bytes(60, 512, 64, seq_len=1000, batch=2, bytes_per_elem=2) == 60 * 576 * 1000 * 2 * 2
    assert mla_elements_per_token_per_layer(512, 0) == 512  # no decoupled RoPE key is allowed


def test_format_bytes_says_which_unit():
    one_gib = 2**30
    assert GB == 10**9 and GIB == 2**30
    assert format_bytes(one_gib, "GiB") == "1.00 GiB"
    assert format_bytes(one_gib, "GB") == "1.07 GB"  # the same bytes are 7% more in GB
    assert format_bytes(1.5e9, "GB", digits=1) == "1.5 GB"
    assert format_bytes(123456789012, "GB") == "123.46 GB"
    assert format_bytes(0, "MiB") == "0.00 MiB"


@pytest.mark.parametrize(("n", "binary", "text"), [
    (0, False, "0 B"), (999, False, "999 B"), (1000, False, "1.00 KB"), (37_748_736, False, "37.75 MB"),
    (37_748_736, True, "36.00 MiB"), (2**30, True, "1.00 GiB"), (2**30, False, "1.07 GB"),
    (3 * 10**12, False, "3.00 TB"),
])
def test_auto_format_bytes_picks_the_largest_unit_at_or_above_one(n, binary, text):
    assert auto_format_bytes(n, binary=binary) == text
