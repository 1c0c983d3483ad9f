"""Figures printed in the papers and model cards of model-facts.md, reproduced by gqa_lib's arithmetic.

Each test names its source. Where a source prints a figure without the shapes behind it, the test says
which shapes reproduce it and checks that they are the only ones that do.
"""

import re
from pathlib import Path

from gqa_lib.core.cache_math import (
    format_bytes,
    kv_cache_bytes,
    mla_cache_bytes,
    mla_elements_per_token_per_layer,
    reduction_vs_mha,
)
from gqa_lib.models.catalog import get_model

FACTS = Path(__file__).resolve().parent.parent / "data" / "reference" / "model-facts.md"  # kept in the repository


def thousands(n: int) -> float:
    """How the DeepSeek-V2 paper prints element counts: 110,592 -> 110.6 (read '110.6K')."""
    return round(n / 1000, 1)


def elements_mha(n_layers: int, n_heads: int, head_dim: int) -> int:
    return kv_cache_bytes(n_layers, n_heads, head_dim, seq_len=1, batch=1, bytes_per_elem=1)


def elements_mla(n_layers: int, d_c: int = 512, d_rope: int = 64) -> int:
    return mla_cache_bytes(n_layers, d_c, d_rope, seq_len=1, batch=1, bytes_per_elem=1)


def test_deepseek_v2_table9_small_moe_110_6k_mha_vs_15_6k_mla():
    """DeepSeek-V2 report, Table 9: small MoE (27 layers), KV cache per token 110.6K (MHA) vs 15.6K (MLA) elements.

    The table gives no heads; 16 heads x 128 dims (h*d_h = 2048, as in DeepSeek-V2-Lite) reproduce 110.6K,
    and d_c = 512, d_h^R = 64 reproduce 15.6K.
    """
    assert thousands(elements_mha(27, 16, 128)) == 110.6  # 2 * 27 * 16 * 128 = 110,592
    assert thousands(elements_mla(27)) == 15.6  # 27 * (512 + 64) = 15,552
    # Among head widths h * d_h that are multiples of 64 (every width in model-facts.md is), only 2048 prints 110.6K:
    assert [w for w in range(64, 10_000, 64) if thousands(2 * 27 * w) == 110.6] == [2048]


def test_deepseek_v2_table9_large_moe_860_2k_mha_vs_34_6k_mla():
    """DeepSeek-V2 report, Table 9: large MoE (60 layers), 860.2K (MHA) vs 34.6K (MLA) elements per token.

    h * d_h = 7168 (for example 56 heads x 128) is the only head width that gives 860.2K; it is not the
    128 x 128 of DeepSeek-V2 itself (which would give 1,966.1K), so Table 9's baseline is a smaller model.
    """
    assert thousands(elements_mha(60, 56, 128)) == 860.2  # 2 * 60 * 7168 = 860,160
    assert thousands(elements_mla(60)) == 34.6  # 60 * 576 = 34,560
    assert [w for w in range(1, 20_000) if thousands(2 * 60 * w) == 860.2] == [7168]
    v2 = get_model("DeepSeek-V2 236B")
    assert thousands(v2.mha_cache_bytes(seq_len=1, dtype="int8")) == 1966.1
    assert v2.elements_per_token() == 34_560  # the same 34.6K: DeepSeek-V2 has 60 layers and d_c + d_h^R = 576


def test_deepseek_v2_table1_mla_is_9_over_2_head_dims_like_gqa_with_2_25_groups():
    """DeepSeek-V2 report, Table 1: MLA caches (d_c + d_h^R) * l = 9/2 * d_h * l, 'equal to GQA with only 2.25 groups'.
    """
    v2 = get_model("DeepSeek-V2 236B")
    d_h, per_layer = v2.head_dim, mla_elements_per_token_per_layer(v2.mla.d_c, v2.mla.d_rope)
    assert (v2.mla.d_c, v2.mla.d_rope) == (4 * d_h, d_h // 2)  # d_c = 4 d_h and d_h^R = d_h / 2
    assert per_layer / d_h == 9 / 2
    groups = per_layer / (2 * d_h)  # GQA caches 2 * n_g * d_h per layer
    assert groups == 2.25
    assert v2.elements_per_token() == 9 * d_h * v2.n_layers // 2


def test_deepseek_v2_93_3_percent_less_cache_than_deepseek_67b_needs_6_bit_kv():
    """DeepSeek-V2 report, abstract: '93.3% less KV cache' than DeepSeek 67B.

    At equal bf16 precision the arithmetic gives 82.2% (69,120 vs 389,120 bytes a token). The 93.3% is
    reproduced when MLA's cache is stored at 6 bits an element (the report quantizes its KV cache).
    """
    v2, dense = get_model("DeepSeek-V2 236B"), get_model("DeepSeek LLM 67B")
    v2_bf16, dense_bf16 = v2.cache_bytes(seq_len=1), dense.cache_bytes(seq_len=1)
    assert (v2_bf16, dense_bf16) == (69_120, 389_120)
    assert round(100 * (1 - v2_bf16 / dense_bf16), 1) == 82.2
    v2_6bit = v2.elements_per_token() * 6 / 8  # bytes a token at 6 bits an element
    assert round(100 * (1 - v2_6bit / dense_bf16), 1) == 93.3


def test_llama3_8b_cache_is_1_gib_at_8192_tokens_in_bf16():
    """Llama-3 8B (llama3 MODEL_CARD.md and params: 32 layers, 8 KV heads of 128): 128 KiB a token, 1 GiB at 8K."""
    llama = get_model("Llama-3 8B")
    assert llama.cache_bytes(seq_len=1) == 2 * 32 * 8 * 128 * 2 == 131_072
    assert llama.cache_bytes() == 2**30  # the released context, 8192 tokens, batch 1, bf16
    assert format_bytes(llama.cache_bytes(), "GiB") == "1.00 GiB"
    assert format_bytes(llama.cache_bytes(), "GB") == "1.07 GB"  # the same bytes in powers of ten


def test_llama2_70b_gqa_cache_is_8x_smaller_than_its_mha_shape():
    """Llama-2 (llama2 MODEL_CARD.md: GQA only on 70B, 64 query heads, 8 KV heads); Ainslie et al. 2023's GQA-8."""
    llama70 = get_model("Llama-2 70B")
    assert reduction_vs_mha(llama70.n_heads, llama70.n_kv_heads) == 64 / 8 == 8
    assert llama70.mha_cache_bytes() == 8 * llama70.cache_bytes()
    assert llama70.cache_bytes(seq_len=1) == 327_680  # 320 KiB a token in bf16
    assert format_bytes(llama70.cache_bytes(), "GiB") == "1.25 GiB"  # 4096 tokens


def test_llama2_7b_mha_caches_half_a_mib_a_token():
    """Llama-2 7B (llama2 MODEL_CARD.md: MHA, 32 layers, 32 heads of 128): 0.5 MiB a token, 2 GiB at 4096 in bf16.

    A 7B MHA model caches more a token than the 70B GQA model (512 vs 320 KiB).
    """
    llama7 = get_model("Llama-2 7B")
    assert llama7.cache_bytes(seq_len=1) == 2 * 32 * 32 * 128 * 2 == 2**19
    assert format_bytes(llama7.cache_bytes(), "GiB") == "2.00 GiB"
    assert llama7.cache_bytes(seq_len=1) > get_model("Llama-2 70B").cache_bytes(seq_len=1)


def test_shazeer_2019_mqa_decoder_speedup_about_12x_follows_from_its_timings():
    """Shazeer 2019, WMT14 EN-DE: decoder 46 vs 3.8 microseconds a token, 'about 12x faster' (model-facts.md)."""
    text = FACTS.read_text()
    line = next(s for s in text.splitlines() if s.startswith("- Shazeer 2019"))
    mha_us, mqa_us = map(float, re.search(r"(\d+(?:\.\d+)?) vs (\d+(?:\.\d+)?) µs per token", line).groups())
    claimed = int(re.search(r"about (\d+)x faster", line).group(1))
    assert round(mha_us / mqa_us) == claimed  # 46 / 3.8 = 12.1


def test_ainslie_2023_table1_gqa8_keeps_most_of_mha_quality_at_near_mqa_speed():
    """Ainslie et al. 2023 (GQA), Table 1, T5-XXL: seconds a sample / average score, as model-facts.md cites them."""
    rows = {name: (float(seconds), float(score)) for name, seconds, score in
            re.findall(r"(MHA-XXL|MQA-XXL|GQA-8-XXL|MHA-Large) (\d\.\d+) / (\d+\.\d)", FACTS.read_text())}
    assert set(rows) == {"MHA-XXL", "MQA-XXL", "GQA-8-XXL", "MHA-Large"}
    assert round(rows["MHA-XXL"][0] / rows["GQA-8-XXL"][0], 1) == 5.4  # GQA-8 is 5.4x faster than MHA (1.51 / 0.28)
    assert round(rows["GQA-8-XXL"][0] / rows["MQA-XXL"][0], 2) == 1.17  # and 17% slower than MQA (0.28 / 0.24)
    assert rows["MQA-XXL"][1] < rows["GQA-8-XXL"][1] < rows["MHA-XXL"][1]  # its quality sits between the two
    # and beats the smaller MHA-Large on both counts: faster (0.28 vs 0.37 s) and better (47.1 vs 46.0)
    assert rows["GQA-8-XXL"][0] < rows["MHA-Large"][0] and rows["GQA-8-XXL"][1] > rows["MHA-Large"][1]
