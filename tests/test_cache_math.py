"""Cache arithmetic: the formulas of the DeepSeek-V2 paper's Table 1, bytes per dtype, and units."""

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gqa_lib.core.cache_math import (
    DTYPE_BYTES,
    ELEMENT_BITS,
    GB,
    GIB,
    CacheRecipe,
    ElementType,
    auto_format_bytes,
    bytes_per_token,
    cached_tokens,
    dtype_bytes,
    elements_per_token_per_layer,
    format_bytes,
    kv_cache_bytes,
    layer_kinds,
    layout_cache_bytes,
    mla_cache_bytes,
    mla_elements_per_token_per_layer,
    reduction_vs_mha,
    storing_layers,
)
from gqa_lib.core.layout import AttentionLayout

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


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_format_bytes_refuses_non_finite_numbers(bad):
    with pytest.raises(ValueError, match=r"n_bytes=(nan|inf|-inf) must be a finite, non-negative number"):
        format_bytes(bad)
    with pytest.raises(ValueError, match=r"finite"):
        auto_format_bytes(bad)


# ---- the cache as a real model builds it (values computed by hand in the comments) ----------------

@pytest.mark.parametrize(("element", "n", "expected"), [
    (ElementType("fp32"), 128, 512),
    (ElementType("bf16"), 128, 256),
    (ElementType("fp8"), 128, 128),
    (ElementType("int8"), 64, 64 + 2 + 2),  # the default: a 2-byte scale and a 2-byte minimum per 64 numbers
    (ElementType("int4"), 64, 32 + 2 + 2),  # two numbers a byte
    (ElementType("int8"), 128, 128 + 2 * (2 + 2)),  # two groups of 64
    (ElementType("int8"), 96, 96 + 2 * (2 + 2)),  # a group of 64 and a last group of 32
    (ElementType("int8", scale_group=None), 128, 128 + 2 + 2),  # one group: the whole vector
    (ElementType("int8", scale_group=None, minimum=False), 128, 128 + 2),  # symmetric: a scale only
    (ElementType("int4", scale_group=32), 128, 64 + 4 * (2 + 2)),  # four groups of 32 channels
    (ElementType("int8", scale_bytes=4, minimum=False), 128, 128 + 2 * 4),  # fp32 scales, no minimum
    (ElementType("int4"), 3, 2 + 2 + 2),  # an odd count still takes whole bytes
])
def test_vector_bytes_count_the_scales_and_minima(element, n, expected):
    assert element.vector_bytes(n) == expected


def test_int8_is_asymmetric_with_a_2_byte_scale_and_minimum_per_64_numbers_by_default():
    e = ElementType("int8")
    assert (e.scale_group, e.scale_bytes, e.minimum, e.group_bytes) == (64, 2, True, 4)
    assert e == ElementType("int8", scale_group=64, scale_bytes=2, minimum=True)
    assert e.describe() == "int8 + one 2-byte scale and one 2-byte minimum per 64 channels"
    assert ElementType("int4", None, minimum=False).describe() == \
        "int4 + one 2-byte scale per vector (per token, per KV head, per K and V)"
    assert ElementType("bf16") == ElementType("bf16") and ElementType("bf16").group_bytes == 0
    assert ElementType("bf16").describe() == "bf16 (2 bytes a number)"


def test_one_64_number_int8_vector_costs_the_same_in_notebooks_01_03_and_08():
    """The calculator (01), the MQA widget (03) and the shrink experiment (08) price one vector alike."""
    from gqa_lib import widgets
    from gqa_lib.experiments.cache_shrink import CachePolicy, layer_cache_bytes
    from gqa_lib.widgets.mqa_cache import cache_comparison

    for dtype, bits, vector in (("int8", 8, 64 + 2 + 2), ("int4", 4, 32 + 2 + 2), ("bf16", None, 128)):
        assert ElementType(dtype).vector_bytes(64) == vector
        # one layer, one KV head of 64: a token caches a K and a V vector
        calculator = widgets.kv_cache_calculator("custom", n_layers=1, n_heads=1, n_kv_heads=1, head_dim=64,
                                                 dtype=dtype).readout_values()["bytes_per_token"]
        mqa_widget = cache_comparison(n_heads=1, head_dim=64, n_layers=1, context=1, dtype=dtype)["mqa_bytes"]
        shrink = layer_cache_bytes(64, 1, CachePolicy(bits=bits))  # 64 numbers a token: one vector
        assert (calculator, mqa_widget, shrink) == (2 * vector, 2 * vector, vector), dtype


def test_element_type_refuses_what_it_cannot_store():
    assert set(ELEMENT_BITS) == {"fp32", "fp16", "bf16", "fp8", "int8", "int4"}
    with pytest.raises(ValueError, match=r"element='int3' is not known \(valid: fp32, fp16, bf16, fp8, int8, int4; "
                                         r"simulated caches also: int2, fp8_e4m3, fp8_e5m2\)"):
        ElementType("int3")
    with pytest.raises(ValueError, match=r"element='bf16' stores no scales; scale_group applies only to int8"):
        ElementType("bf16", scale_group=32)
    with pytest.raises(ValueError, match=r"element='fp8' stores no scales; minimum applies only to int8"):
        ElementType("fp8", minimum=True)
    with pytest.raises(TypeError, match=r"minimum=1 must be True \(asymmetric"):
        ElementType("int8", minimum=1)
    with pytest.raises(ValueError, match=r"scale_group=0 must be a positive integer"):
        ElementType("int8", scale_group=0)


def test_layer_kinds_repeat_the_pattern_from_layer_0():
    kinds = layer_kinds(26, "LLLLLG")  # Gemma 3 1B
    assert [i for i, k in enumerate(kinds) if k == "G"] == [5, 11, 17, 23]
    assert kinds.count("L") == 22
    assert layer_kinds(32, "L") == "L" * 32  # Mistral 7B
    with pytest.raises(ValueError, match=r"pattern='LLLG' has 4 layers, more than n_layers=3"):
        layer_kinds(3, "LLLG")
    with pytest.raises(ValueError, match=r"pattern='lg' must be a non-empty string of 'L'"):
        layer_kinds(4, "lg")


def test_cached_tokens_and_storing_layers():
    assert cached_tokens(8192) == 8192 and cached_tokens(8192, 4096) == 4096 and cached_tokens(100, 4096) == 100
    assert storing_layers(5, 2) == [0, 2, 4]
    with pytest.raises(ValueError, match=r"share_every=6 must be at most n_layers=5"):
        storing_layers(5, 6)


def test_recipe_without_extras_is_the_plain_formula():
    plain = CacheRecipe(32, 8, 128)  # Llama-3 8B, bf16
    assert plain.cache_bytes(8192) == kv_cache_bytes(32, 8, 128, 8192) == 1_073_741_824
    assert CacheRecipe(32, 8, 128, "fp32").cache_bytes(100, batch=3) == kv_cache_bytes(32, 8, 128, 100, 3, 4)


def test_gemma_3_1b_local_and_global_layers():
    gemma = CacheRecipe(26, 1, 256, "bf16", pattern="LLLLLG", window=512)
    per_layer_token = 2 * 1 * 256 * 2  # K and V, one KV head of 256, bf16: 1,024 bytes
    assert gemma.bytes_per_token_per_layer() == per_layer_token
    assert gemma.cache_bytes(32768) == (4 * 32768 + 22 * 512) * per_layer_token == 145_752_064
    assert gemma.cache_bytes(32768, windowed=False) == 26 * 32768 * per_layer_token == 872_415_232
    assert gemma.cache_bytes(300) == gemma.cache_bytes(300, windowed=False)  # within the window
    assert gemma.local_layers() == 22


def test_mistral_7b_window_on_every_layer():
    mistral = CacheRecipe(32, 8, 128, pattern="L", window=4096)
    assert mistral.cache_bytes(8192) == 32 * 4096 * 2 * 8 * 128 * 2 == 536_870_912
    assert mistral.cache_bytes(2048) == kv_cache_bytes(32, 8, 128, 2048)


def test_cross_layer_sharing_stores_one_layer_in_each_group():
    assert CacheRecipe(32, 8, 128, share_every=2).cache_bytes(8192) == 1_073_741_824 // 2
    assert CacheRecipe(30, 3, 64, share_every=4).tokens_per_layer(10)[:5] == [10, 0, 0, 0, 10]  # 8 of 30 store
    assert CacheRecipe(30, 3, 64, share_every=4).cache_bytes(10) == 8 * 10 * 2 * 3 * 64 * 2
    # a group mixing local and global layers: test_a_sharing_group_keeps_what_its_most_demanding_layer_reads


def test_quantized_llama_and_mla_latent():
    llama_int8 = CacheRecipe(32, 8, 128, ElementType("int8"))  # a scale and a minimum per 64 numbers: 2 per vector
    assert llama_int8.bytes_per_token_per_layer() == 2 * 8 * (128 + 2 * 4) == 2176
    assert llama_int8.cache_bytes(8192) == 32 * 2176 * 8192 == 570_425_344
    llama_int4 = CacheRecipe(32, 8, 128, ElementType("int4", scale_group=32))
    assert llama_int4.cache_bytes(1) == 32 * 2 * 8 * (64 + 4 * 4) == 40_960
    v3 = CacheRecipe(61, element="bf16", d_c=512, d_rope=64)  # DeepSeek-V3: latent + RoPE key, no K/V heads
    assert v3.cache_bytes(100_000) == mla_cache_bytes(61, 512, 64, 100_000) == 7_027_200_000
    v3_int8 = CacheRecipe(61, element=ElementType("int8"), d_c=512, d_rope=64)  # 8 groups + 1 group of 64
    assert v3_int8.cache_bytes(1) == 61 * (512 + 8 * 4 + 64 + 4)


def test_recipe_refuses_inconsistent_settings():
    with pytest.raises(ValueError, match=r"pattern='LG' has local layers but window=None"):
        CacheRecipe(4, 1, 64, pattern="LG")
    with pytest.raises(ValueError, match=r"window=512 but pattern='G' has no local"):
        CacheRecipe(4, 1, 64, window=512)
    with pytest.raises(TypeError, match=r"n_kv_heads=None must be a positive integer"):
        CacheRecipe(4)
    with pytest.raises(TypeError, match=r"element=2 must be a name"):
        CacheRecipe(4, 1, 64, element=2)


def test_a_sharing_group_keeps_what_its_most_demanding_layer_reads():
    """Gemma 3 1B (26 layers, 5 local to 1 global, window 512) with pairs sharing: the storing layer of pairs
    (4, 5), (10, 11), (16, 17) and (22, 23) is local, but the global layer beside it reads the whole context.
    Letting the storing layer's kind decide priced the cache at 6,815,744 bytes for 32,768 tokens, below what
    the 4 global layers alone need (4 x 32,768 tokens x 2 x 256 numbers x 2 bytes = 134,217,728)."""
    from gqa_lib.models.catalog import get_model

    recipe = dataclasses.replace(get_model("Gemma 3 1B").cache_recipe(), share_every=2)
    globals_alone = 4 * 32_768 * 2 * 256 * 2
    kept = recipe.tokens_per_layer(32_768)
    assert [kept[i] for i in (4, 10, 16, 22)] == [32_768] * 4 and kept[5] == kept[11] == 0
    assert recipe.cache_bytes(32_768) == globals_alone + 9 * 512 * 2 * 256 * 2  # 9 all-local pairs keep 512
    # sharing never costs more than not sharing, and never less than the layers that must see everything
    unshared = dataclasses.replace(recipe, share_every=1)
    assert globals_alone <= recipe.cache_bytes(32_768) <= unshared.cache_bytes(32_768)


def test_fp8_caches_store_a_byte_a_number_and_their_scales_where_they_live():
    e4m3 = ElementType("fp8_e4m3")  # default: a float32 scale per K and per V tensor of a layer
    assert (e4m3.vector_bytes(64), e4m3.fixed_bytes(3), e4m3.bits) == (64, 2 * 4, 8)
    per_head = ElementType("fp8_e5m2", fp8_scale="head")
    assert (per_head.vector_bytes(64), per_head.fixed_bytes(3)) == (64, 2 * 3 * 4)
    # DeepSeek's FP8 latent: 512 numbers in FP8 with a float32 scale per 128, the 64-number RoPE key in bf16
    latent = ElementType("fp8_e4m3", fp8_scale="group")
    assert latent.vector_bytes(512) + ElementType("bf16").vector_bytes(64) == 656
    assert ElementType("bf16").vector_bytes(512 + 64) == 1152
    assert latent.vector_bytes(512 + 64) == 576 + 5 * 4  # the RoPE key quantized too
    assert "one 4-byte scale per 128 channels" in latent.describe()
    assert ElementType("int8").fixed_bytes(3) == 0 and ElementType("bf16").fixed_bytes(3) == 0
    assert ElementType("int2").vector_bytes(64) == 16 + 4  # KIVI's 2 bits, scale and minimum counted
    with pytest.raises(ValueError, match=r"fp8_scale='layer' must be one of"):
        ElementType("fp8_e4m3", fp8_scale="layer")
    with pytest.raises(ValueError, match=r"scale_group=64 applies only to fp8_scale='group'"):
        ElementType("fp8_e4m3", scale_group=64)
    with pytest.raises(ValueError, match=r"fp8_scale applies only to"):
        ElementType("int8", fp8_scale="head")
    with pytest.raises(ValueError, match=r"symmetric"):
        ElementType("fp8_e5m2", minimum=True)
