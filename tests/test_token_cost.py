"""Notebook 01's arithmetic: what a generation step costs with and without a KV cache, and the lecture's figures."""

import numpy as np
import pytest
import torch

from gqa_lib.core.cache_math import GB, GIB, kv_cache_bytes
from gqa_lib.experiments.token_cost import (
    CacheShape,
    StepMacs,
    cache_table,
    context_lengths,
    counted_generation_macs,
    crossover_tokens,
    forward_macs,
    generation_macs,
    random_tiny_lm,
    rolling_median,
    round_sig,
    search_cache_figure,
    step_shapes,
    time_generation,
    weight_bytes,
)
from gqa_lib.models.catalog import get_model, load_models
from gqa_lib.models.tiny_lm import TinyLMConfig, encode

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = TinyLMConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48, max_len=64)


# ---- counting -----------------------------------------------------------------------------------

def test_forward_macs_by_hand():
    # d=8, 1 layer, 2 query heads of dim 4, 1 KV head, d_ff=16, vocab=10; 3 new tokens against 5 keys.
    cfg = TinyLMConfig(vocab_size=10, d_model=8, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=16, max_len=16)
    m = forward_macs(cfg, n_queries=3, n_keys=5)
    assert m.projections == 3 * (8 * 8 + 8 * 4 + 8 * 4 + 8 * 8)  # q, k, v, out
    assert m.scores == m.weighted_sum == 2 * 3 * 5 * 4
    assert m.mlp == 3 * 3 * 8 * 16
    assert m.head == 3 * 8 * 10
    assert m.total == 576 + 240 + 1152 + 240 and m.attention == 240
    assert m.as_dict()["total"] == m.total


@pytest.mark.parametrize("use_cache", [False, True])
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_analytic_count_equals_pytorch_flop_counter(use_cache, n_kv_heads):
    cfg = TinyLMConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, d_ff=48, max_len=64)
    model = random_tiny_lm(cfg, seed=1)
    idx = encode("abcde")
    counted = counted_generation_macs(model, idx, n_new=12, use_cache=use_cache)
    analytic = [m.total for m in generation_macs(cfg, prompt_len=5, n_new=12, use_cache=use_cache)]
    assert counted == analytic


def test_step_shapes_follow_generate():
    assert step_shapes(3, 4, use_cache=False) == [(3, 3), (4, 4), (5, 5), (6, 6)]
    assert step_shapes(3, 4, use_cache=True) == [(3, 3), (1, 4), (1, 5), (1, 6)]  # prefill, then one token
    assert list(context_lengths(3, 4)) == [3, 4, 5, 6]


def test_growth_per_token_linear_with_cache_quadratic_without():
    cfg = TinyLMConfig()
    cached = {n: forward_macs(cfg, 1, n).attention for n in (100, 200, 400)}
    full = {n: forward_macs(cfg, n, n).attention for n in (100, 200, 400)}
    assert cached[200] / cached[100] == cached[400] / cached[200] == 2
    assert full[200] / full[100] == full[400] / full[200] == 4
    # the rest of the network: constant per token with the cache, linear without
    assert forward_macs(cfg, 1, 400).mlp == forward_macs(cfg, 1, 100).mlp
    assert forward_macs(cfg, 400, 400).mlp == 4 * forward_macs(cfg, 100, 100).mlp


def test_counting_rejects_bad_input():
    with pytest.raises(ValueError, match="n_keys=2 must be at least n_queries=3"):
        forward_macs(SMALL, 3, 2)
    with pytest.raises(TypeError, match="cfg=.* must be a TinyLMConfig"):
        forward_macs({"d_model": 8}, 1, 1)
    with pytest.raises(ValueError, match="n_new=0 must be a positive integer"):
        generation_macs(SMALL, 4, 0, True)
    assert isinstance(forward_macs(SMALL, 1, 1), StepMacs)


# ---- generating and timing ----------------------------------------------------------------------

def test_cached_and_recomputed_generation_give_the_same_varied_tokens():
    model = random_tiny_lm(SMALL, seed=0)
    idx = encode("The KV")
    a = model.generate(idx, 40, use_cache=False)
    b = model.generate(idx, 40, use_cache=True)
    assert torch.equal(a, b)
    assert len(set(a[0, idx.shape[1]:].tolist())) > 3  # the untied head keeps the output from repeating one byte


def test_random_tiny_lm_unties_the_head_and_is_seeded():
    m1, m2 = random_tiny_lm(SMALL, seed=3), random_tiny_lm(SMALL, seed=3)
    assert m1.head.weight is not m1.embed.weight and not m1.training
    torch.testing.assert_close(m1.head.weight, m2.head.weight)


def test_time_generation_returns_one_time_per_step_and_restores_threads():
    model = random_tiny_lm(SMALL)
    before = torch.get_num_threads()
    out, seconds = time_generation(model, encode("ab"), 6, use_cache=True, repeats=2, threads=1)
    assert out.shape == (1, 8) and seconds.shape == (6,) and np.all(seconds > 0)
    assert torch.get_num_threads() == before


def test_rolling_median():
    assert list(rolling_median([1, 100, 3, 4, 5], window=3)) == [50.5, 3, 4, 4, 4.5]
    with pytest.raises(ValueError, match="window=0"):
        rolling_median([1.0], window=0)


# ---- the lecture's figures ----------------------------------------------------------------------

def _matches(rows):
    return {(r["model"], r["tokens"], r["dtype"], r["cached"], r["unit"]) for r in rows if r["matches"]}


def test_gpt2_36_mb_is_gpt2_small_in_fp16_measured_in_mib():
    shapes = [CacheShape.from_spec(get_model(n)) for n in ("GPT-2 small", "GPT-2 medium", "GPT-2 large", "GPT-2 XL")]
    rows = search_cache_figure(36, shapes, [1024], ["fp32", "fp16"], ["MB", "MiB"])
    assert len(rows) == 32
    assert _matches(rows) == {("GPT-2 small", 1024, "fp16", "K and V", "MiB"),
                              ("GPT-2 small", 1024, "fp32", "K only", "MiB")}
    assert kv_cache_bytes(12, 12, 64, 1024, 1, 2) == 37_748_736 == 36 * 2**20
    # figures the notebook's prose quotes: GPT-2 small in fp32, and the other sizes in fp16
    assert get_model("GPT-2 small").cache_bytes(None, 1, "fp32") == 72 * 2**20
    assert get_model("GPT-2 medium").cache_bytes(None, 1, "fp16") == 96 * 2**20
    assert get_model("GPT-2 XL").cache_bytes(None, 1, "fp16") == 300 * 2**20


def test_gpt3_4_5_gb_is_half_of_its_fp16_cache():
    shapes = [CacheShape.from_spec(get_model("GPT-3 175B"))]
    rows = search_cache_figure(4.5, shapes, [1024, 2048], ["fp32", "fp16", "int8"], ["GB", "GiB"])
    assert _matches(rows) == {("GPT-3 175B", 1024, "fp16", "K and V", "GiB"),
                              ("GPT-3 175B", 2048, "fp16", "K only", "GiB"),
                              ("GPT-3 175B", 2048, "int8", "K and V", "GiB"),
                              ("GPT-3 175B", 1024, "fp32", "K only", "GiB")}
    assert get_model("GPT-3 175B").cache_bytes(1, 1, "int8") == 2_359_296  # numbers per token
    full = get_model("GPT-3 175B").cache_bytes(None, 1, "fp16")
    assert full == 9_663_676_416 and full / GIB == 9.0  # at its own 2048-token context: twice the figure


def test_deepseek_400_gb_is_an_mha_count_and_mla_caches_57x_less():
    v3 = get_model("DeepSeek-V3 671B")
    shape = CacheShape.from_spec(v3, mha=True)
    assert (shape.n_layers, shape.n_kv_heads, shape.head_dim) == (61, 128, 128)  # the lecture's numbers
    rows = search_cache_figure(400, [shape], [100_000, 102_400, 128_000, 131_072], ["fp32", "bf16", "fp8"],
                               ["GB", "GiB"])
    assert _matches(rows) == {(shape.name, 100_000, "bf16", "K and V", "GB"),
                              (shape.name, 100_000, "fp32", "K only", "GB")}
    mla = v3.cache_bytes(100_000, 1, "bf16")
    assert mla == 61 * (512 + 64) * 100_000 * 2 == 7_027_200_000
    assert round(v3.mha_cache_bytes(100_000) / mla) == 57
    # caching every head's rebuilt key (128 + 64 RoPE) and value (128) instead: about 500 GB
    assert round(61 * 128 * (v3.head_dim + v3.mla.d_rope + v3.mla.v_head_dim) * 100_000 * 2 / GB) == 500
    with pytest.raises(ValueError, match="uses MLA"):
        CacheShape.from_spec(v3)


def test_search_rejects_bad_input():
    shape = [CacheShape("x", 1, 1, 1)]
    with pytest.raises(ValueError, match="unit='Mb' is not known"):
        search_cache_figure(1, shape, [1], ["fp16"], ["Mb"])
    with pytest.raises(ValueError, match="figure=0 must be a positive number"):
        search_cache_figure(0, shape, [1], ["fp16"], ["MB"])
    with pytest.raises(ValueError, match="tensors=3"):
        search_cache_figure(1, shape, [1], ["fp16"], ["MB"], tensors=(3,))
    assert round_sig(399.77, 2) == 400 and round_sig(35.4, 2) == 35


# ---- real models ---------------------------------------------------------------------------------

def test_cache_table_has_every_model_and_handles_mla():
    models = list(load_models().values())
    rows = {r["model"]: r for r in cache_table(models)}
    assert len(rows) == len(models)
    assert rows["Llama-3 8B"]["bytes"] == 1_073_741_824 and rows["Llama-3 8B"]["cache GiB"] == 1.0
    assert rows["DeepSeek-V3 671B"]["bytes"] == 61 * 576 * 131_072 * 2 and rows["DeepSeek-V3 671B"]["kv heads"] is None
    assert rows["GPT-2 small"]["KiB per token"] == 36.0
    llama = rows["Llama-3 8B"]
    assert llama["all-global bytes"] == llama["bytes"] and not llama["local layers"]


def test_cache_table_keeps_only_the_window_in_local_layers():
    rows = {r["model"]: r for r in cache_table([get_model("Gemma 3 1B"), get_model("Mistral 7B")])}
    gemma, mistral = rows["Gemma 3 1B"], rows["Mistral 7B"]
    # Gemma 3 1B: 4 global layers keep 32,768 tokens, 22 local layers 512; 1,024 bytes a token and layer (bf16)
    assert gemma["bytes"] == (4 * 32768 + 22 * 512) * 1024 and gemma["all-global bytes"] == 26 * 32768 * 1024
    assert gemma["local layers"] == "22 of 26, window 512"
    # Mistral 7B: every layer keeps 4,096 of its 8,192 tokens
    assert mistral["bytes"] * 2 == mistral["all-global bytes"] == 1_073_741_824
    assert mistral["local layers"] == "32 of 32, window 4,096"


def test_llama_405b_cache_against_weights():
    m = get_model("Llama-3.1 405B")
    assert weight_bytes(m) == 810 * GB
    assert m.cache_bytes(1) == 516_096
    # batch 1: the cache passes the weights only far beyond the released context (131,072 tokens) ...
    assert crossover_tokens(m) == 1_569_476 > m.context
    # ... but as MHA (128 KV heads) it would pass them inside it, and so does a batch of 32 with GQA.
    assert crossover_tokens(m, mha=True) == 98_093 < m.context
    assert crossover_tokens(m, batch=32) == 49_047
    t = crossover_tokens(m)
    assert m.cache_bytes(t) > weight_bytes(m) >= m.cache_bytes(t - 1)
    # at the full 128K context, 12 sequences' caches outweigh the weights, 11 do not (a Check-yourself answer)
    assert m.cache_bytes(None, 12) > weight_bytes(m) > m.cache_bytes(None, 11)
    with pytest.raises(ValueError, match="no params_billion"):
        weight_bytes(type(m)(**{**m.__dict__, "params_billion": None}))
