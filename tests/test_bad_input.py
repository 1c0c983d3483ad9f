"""Bad input fails early, with a message that names the argument, its value and what would be valid."""

import pytest
import torch

from gqa_lib.core.attention import GroupedQueryAttention, expand_kv, grouped_attention
from gqa_lib.core.cache_math import dtype_bytes, format_bytes, kv_cache_bytes, layout_cache_bytes, mla_cache_bytes
from gqa_lib.core.checks import divisors
from gqa_lib.core.kv_cache import KVCache
from gqa_lib.core.layout import AttentionLayout
from gqa_lib.core.rope import RotaryEmbedding
from gqa_lib.models.catalog import UnknownModelError, get_model


@pytest.mark.parametrize(("build", "message"), [
    (lambda: AttentionLayout(0, 1, 64), r"n_heads=0 must be a positive integer"),
    (lambda: AttentionLayout(32, -8, 64), r"n_kv_heads=-8 must be a positive integer"),
    (lambda: AttentionLayout(32, 8, 0), r"head_dim=0 must be a positive integer"),
    (lambda: AttentionLayout(32, 8, 128, n_layers=-1), r"n_layers=-1 must be a positive integer"),
    (lambda: kv_cache_bytes(32, 8, 128, seq_len=0), r"seq_len=0 must be a positive integer"),
    (lambda: kv_cache_bytes(32, 8, 128, 1024, batch=-2), r"batch=-2 must be a positive integer"),
    (lambda: kv_cache_bytes(0, 8, 128, 1024), r"n_layers=0 must be a positive integer"),
    (lambda: mla_cache_bytes(60, 0, 64, 1024), r"d_c=0 must be a positive integer"),
    (lambda: mla_cache_bytes(60, 512, -1, 1024), r"d_rope=-1 must be a non-negative integer"),
    (lambda: KVCache(1, 2, 8, max_len=0), r"max_len=0 must be a positive integer"),
    (lambda: GroupedQueryAttention(0, 8, 2), r"d_model=0 must be a positive integer"),
    (lambda: divisors(0), r"n=0 must be a positive integer"),
])
def test_zero_or_negative_counts(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(("build", "message"), [
    (lambda: AttentionLayout(32.0, 8, 128), r"n_heads=32\.0 must be a positive integer \(got float\)"),
    (lambda: AttentionLayout(32, "8", 128), r"n_kv_heads='8' must be a positive integer \(got str\)"),
    (lambda: kv_cache_bytes(32, 8, 128, 1024.5), r"seq_len=1024\.5 must be a positive integer \(got float\)"),
    (lambda: kv_cache_bytes(32, 8, 128, 1024, bytes_per_elem=0.5), r"bytes_per_elem=0\.5 must be a positive integer"),
    (lambda: GroupedQueryAttention(64, 8, 2.0), r"n_kv_heads=2\.0 must be a positive integer \(got float\)"),
    (lambda: KVCache(1, None, 8, 10), r"n_kv_heads=None must be a positive integer \(got NoneType\)"),
])
def test_non_int_counts(build, message):
    with pytest.raises(TypeError, match=message):
        build()


@pytest.mark.parametrize(("build", "message"), [
    (lambda: AttentionLayout(True, 1, 64), r"n_heads=True must be a positive integer \(got bool\)"),
    (lambda: kv_cache_bytes(32, 8, 128, 1024, batch=True), r"batch=True must be a positive integer \(got bool\)"),
    (lambda: GroupedQueryAttention(64, 8, True), r"n_kv_heads=True must be a positive integer \(got bool\)"),
])
def test_bool_counts_are_not_taken_for_one(build, message):
    with pytest.raises(TypeError, match=message):
        build()


@pytest.mark.parametrize(("n_heads", "n_kv_heads", "valid"), [
    (32, 3, "1, 2, 4, 8, 16, 32"), (9, 2, "1, 3, 9"), (14, 4, "1, 2, 7, 14"), (8, 16, "1, 2, 4, 8"),
])
def test_kv_heads_that_do_not_divide_list_the_valid_divisors(n_heads, n_kv_heads, valid):
    message = rf"^n_kv_heads={n_kv_heads} must divide n_heads={n_heads} \(valid: {valid}\)$"
    with pytest.raises(ValueError, match=message):
        AttentionLayout(n_heads, n_kv_heads, 64)
    with pytest.raises(ValueError, match=message):
        GroupedQueryAttention(n_heads * 4, n_heads, n_kv_heads)


def test_unknown_dtype_lists_the_known_ones():
    message = r"dtype='float16' is not known \(valid: fp32, fp16, bf16, fp8, int8\)"
    with pytest.raises(ValueError, match=message):
        dtype_bytes("float16")
    with pytest.raises(ValueError, match=message):
        layout_cache_bytes(AttentionLayout(32, 8, 128, 32), 1024, dtype="float16")
    with pytest.raises(ValueError, match=r"dtype='fp4' is not known"):
        get_model("Llama-3 8B").cache_bytes(dtype="fp4")
    with pytest.raises(ValueError, match=r"unit='gb' is not known \(valid: B, KB, MB, GB"):
        format_bytes(10**9, "gb")


def test_unknown_model_name_suggests_close_names():
    close = r"name='Llama-3-8B' is not in data/models\.json\. Did you mean: .*Llama-3 8B"
    with pytest.raises(UnknownModelError, match=close):
        get_model("Llama-3-8B")
    with pytest.raises(UnknownModelError, match=r"name='Mistral 7' .*Did you mean: Mistral 7B"):
        get_model("Mistral 7")
    with pytest.raises(KeyError, match=r"name='zzzz' is not in data/models\.json\. Known: GPT-2 small, "):
        get_model("zzzz")  # nothing is close: the message lists every known name


def test_input_of_wrong_rank_or_width():
    layer = GroupedQueryAttention(32, 8, 2)
    with pytest.raises(ValueError, match=r"x\.shape=\(4, 32\) must be \(batch, seq, d_model=32\)"):
        layer(torch.randn(4, 32))
    with pytest.raises(ValueError, match=r"x\.shape=\(1, 4, 16\) must be \(batch, seq, d_model=32\)"):
        layer(torch.randn(1, 4, 16))
    with pytest.raises(ValueError, match=r"x\.shape=\(2, 4, 16\) must be \(batch, n_kv_heads, seq, head_dim\)"):
        expand_kv(torch.randn(2, 4, 16), 2)
    with pytest.raises(ValueError, match=r"x\.shape=\(1, 2, 3, 6\) must be \(batch, heads, seq, 8\)"):
        RotaryEmbedding(8)(torch.randn(1, 2, 3, 6))
    with pytest.raises(ValueError, match=r"head_dim=7 must be even for RoPE"):
        RotaryEmbedding(7)


def test_grouped_attention_shape_errors():
    q = torch.randn(1, 8, 4, 16)
    with pytest.raises(ValueError, match=r"q, k, v must be 4-D"):
        grouped_attention(q, torch.randn(2, 4, 16), torch.randn(2, 4, 16))
    with pytest.raises(ValueError, match=r"k\.shape=\(1, 2, 4, 8\) and v\.shape=\(1, 2, 4, 8\) must both be \(1, n_kv"):
        grouped_attention(q, torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8))
    with pytest.raises(ValueError, match=r"n_kv_heads=3 must divide n_heads=8"):
        grouped_attention(q, torch.randn(1, 3, 4, 16), torch.randn(1, 3, 4, 16))
    with pytest.raises(ValueError, match=r"causal attention needs s_q <= s_k, got q\.shape\[2\]=4 queries"):
        grouped_attention(q, torch.randn(1, 2, 3, 16), torch.randn(1, 2, 3, 16))


def test_decoding_past_the_caches_capacity():
    layer = GroupedQueryAttention(16, 4, 2)
    cache = layer.new_cache(batch=1, max_len=4)
    layer(torch.randn(1, 3, 16), cache)
    with pytest.raises(ValueError, match=r"cache is full: 3 stored \+ 2 new > max_len=4; make a larger KVCache"):
        layer(torch.randn(1, 2, 16), cache)
    assert cache.length == 3


def test_a_batch_that_does_not_match_the_cache():
    layer = GroupedQueryAttention(16, 4, 2)
    cache = layer.new_cache(batch=2, max_len=8)
    with pytest.raises(ValueError, match=r"x\.shape\[0\]=3 \(batch\) does not match the cache's batch=2"):
        layer(torch.randn(3, 1, 16), cache)
    with pytest.raises(ValueError, match=r"k\.shape=\(1, 2, 1, 4\) does not match the cache; expected \(2, 2, 'new'"):
        cache.append(torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4))


def test_a_cache_made_for_another_layout():
    cache = GroupedQueryAttention(16, 4, 4).new_cache(batch=1, max_len=8)  # 4 KV heads
    message = r"cache \(n_kv_heads=4, head_dim=4\) was made for another layer; this one has n_kv_heads=2, head_dim=4"
    with pytest.raises(ValueError, match=message):
        GroupedQueryAttention(16, 4, 2)(torch.randn(1, 1, 16), cache)
    assert cache.length == 0


def test_head_dim_must_come_from_d_model_or_be_given():
    with pytest.raises(ValueError, match=r"d_model=30 must be divisible by n_heads=8, or pass head_dim"):
        GroupedQueryAttention(30, 8, 2)
    assert GroupedQueryAttention(30, 8, 2, head_dim=4).head_dim == 4


@pytest.mark.parametrize("causal", [True, False])
def test_queries_against_no_keys_are_refused(causal):
    """softmax over zero keys has no answer: torch returns zeros, which a caller would read as a result."""
    q = torch.randn(1, 4, 1, 8)
    empty = torch.randn(1, 2, 0, 8)  # (batch, n_kv_heads, 0 tokens, head_dim): an empty cache
    with pytest.raises(ValueError, match=r"k\.shape\[2\]=0: attention needs at least one key"):
        grouped_attention(q, empty, empty, causal=causal)


@pytest.mark.parametrize(("layers", "error", "message"), [
    (5, TypeError, r"layers=5 must be a list of layer numbers in 0\.\.29, such as \[5\]"),
    ("5", TypeError, r"layers='5' must be a list of layer numbers"),
    ([5, 5], ValueError, r"layers=\[5, 5\] must name at least one layer, each once"),
    ([], ValueError, r"layers=\[\] must name at least one layer"),
])
def test_capture_layers_names_a_bad_layers_argument(layers, error, message):
    from gqa_lib.models.smollm import capture_layers

    with pytest.raises(error, match=message):
        capture_layers("def f(): pass", layers=layers)


@pytest.mark.parametrize("call", ["capture_llama_kv", "build_llama_attention"])
def test_a_dtype_given_by_name_is_called_a_dtype_not_a_device(call):
    from gqa_lib.models import llama_shapes

    with pytest.raises(TypeError, match=r"dtype='bf16' must be a torch dtype \(did you mean torch\.bfloat16\?\)"):
        getattr(llama_shapes, call)("Llama-2 7B", dtype="bf16")


def _mla():
    from gqa_lib.core.mla import MultiHeadLatentAttention

    torch.manual_seed(0)
    return MultiHeadLatentAttention(32, 4, 16, 8, 8, 8).eval()


def _latent():
    from gqa_lib.experiments.latent_conversion import to_latent

    torch.manual_seed(0)
    return to_latent(GroupedQueryAttention(32, 4, 2, head_dim=8).eval(), rank=16)


@pytest.mark.parametrize("build", [_mla, _latent], ids=["mla", "latent"])
def test_latent_layers_refuse_inputs_as_the_gqa_layer_does(build):
    """Before: a bf16 x gave torch's bare 'mat1 and mat2 must have the same dtype', and a nan in x spread to
    every later token's output without a word (GroupedQueryAttention refused both, naming them)."""
    layer = build()
    x = torch.randn(1, 6, 32)
    with pytest.raises(TypeError, match=r"x\.dtype=torch\.bfloat16 does not match the layer's dtype torch\.float32"):
        layer(x.to(torch.bfloat16))
    x[0, 3, 5] = float("nan")
    with pytest.raises(ValueError, match=r"x .*position 3"):
        layer(x)


def test_a_latent_layer_names_a_cache_of_another_type():
    with pytest.raises(TypeError, match=r"cache=object must be a LatentCache"):
        _latent()(torch.randn(1, 2, 32), cache=object())


@pytest.mark.parametrize("digits", [-1, 2.5, 16, True])
def test_format_bytes_names_a_bad_digits(digits):
    with pytest.raises(ValueError, match=rf"digits={digits!r} must be a whole number of decimals in 0\.\.15"):
        format_bytes(1e9, digits=digits)
