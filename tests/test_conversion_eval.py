"""Changing a transformers Llama model's KV heads: shapes, exact expansion, and the GQA paper's three methods."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gqa_lib.conversion_eval import (
    attention_modules,
    convert_kv_heads,
    kv_heads_of,
    max_logit_difference,
    mean_nll,
    uptrain,
    window_token_ids,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny_llama():
    """A randomly initialised Llama with SmolLM2's head layout (9 query heads, 3 KV heads), small enough to test."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=36, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=9, num_key_value_heads=3, head_dim=4, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


IDS = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method", ["mean", "first", "random"])
def test_reduction_to_one_kv_head_changes_shapes_in_every_layer(tiny_llama, method):
    mqa = convert_kv_heads(tiny_llama, 1, method)
    assert kv_heads_of(mqa) == [1, 1] and mqa.config.num_key_value_heads == 1
    for attn in attention_modules(mqa):
        assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (4, 36)  # 1 head x head_dim 4
        assert attn.q_proj.weight.shape == (36, 36) and attn.num_key_value_groups == 9
    assert mqa(input_ids=IDS).logits.shape == (2, 12, 64)
    assert kv_heads_of(tiny_llama) == [3, 3] and tiny_llama.config.num_key_value_heads == 3  # original untouched


def test_mean_pooling_averages_the_three_kv_heads(tiny_llama):
    mqa = convert_kv_heads(tiny_llama, 1, "mean")
    old = attention_modules(tiny_llama)[0].k_proj.weight.reshape(3, 4, 36)
    torch.testing.assert_close(attention_modules(mqa)[0].k_proj.weight, old.mean(0))
    first = convert_kv_heads(tiny_llama, 1, "first")
    torch.testing.assert_close(attention_modules(first)[1].v_proj.weight,
                               attention_modules(tiny_llama)[1].v_proj.weight[:4])


def test_random_init_is_seeded(tiny_llama):
    a, b = convert_kv_heads(tiny_llama, 1, "random", seed=3), convert_kv_heads(tiny_llama, 1, "random", seed=3)
    c = convert_kv_heads(tiny_llama, 1, "random", seed=4)
    wa, wb, wc = (attention_modules(m)[0].k_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_expansion_to_mha_changes_no_output(tiny_llama):
    mha = convert_kv_heads(tiny_llama, 9)
    assert kv_heads_of(mha) == [9, 9] and attention_modules(mha)[0].num_key_value_groups == 1
    assert max_logit_difference(tiny_llama, mha, IDS) < 1e-5


def test_expansion_then_mean_pooling_gives_back_the_original(tiny_llama):
    back = convert_kv_heads(convert_kv_heads(tiny_llama, 9), 3, "mean")
    assert max_logit_difference(tiny_llama, back, IDS) < 1e-5


def test_bad_method_and_count_fail_early(tiny_llama):
    with pytest.raises(ValueError, match="method='median'"):
        convert_kv_heads(tiny_llama, 1, "median")
    with pytest.raises(ValueError, match="n_kv_heads=2"):
        convert_kv_heads(tiny_llama, 2)


def test_uptraining_touches_only_kv_projections_and_lowers_the_loss(tiny_llama):
    model = convert_kv_heads(tiny_llama, 1, "random", seed=0)
    ids = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(2))
    before = {n: p.clone() for n, p in model.named_parameters()}
    nll_before = mean_nll(model, ids)
    losses = uptrain(model, ids, steps=15, batch=4, lr=1e-2)
    assert len(losses) == 15 and mean_nll(model, ids) < nll_before
    for n, p in model.named_parameters():
        changed = not torch.equal(p, before[n])
        assert changed == n.endswith(("k_proj.weight", "v_proj.weight")), n
        assert p.requires_grad


def test_windows_are_fixed_and_checked():
    class ByteTokenizer:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": list(text.encode())}

    w = window_token_ids(ByteTokenizer(), "abcdefghijkl", 3, 4)
    assert [bytes(r).decode() for r in w.tolist()] == ["abcd", "efgh", "ijkl"]
    with pytest.raises(ValueError, match="n_windows=3 x window=5"):
        window_token_ids(ByteTokenizer(), "abcdefghijkl", 3, 5)


@pytest.fixture(scope="module")
def smollm():
    from gqa_lib.smollm import load_smollm

    return load_smollm()


def test_real_smollm2_conversions(smollm):
    model, tok = smollm
    ids = tok("def add(a, b):\n    return a + b\n", return_tensors="pt")["input_ids"]
    mqa = convert_kv_heads(model, 1, "mean")
    assert kv_heads_of(mqa) == [1] * 30 and attention_modules(mqa)[0].k_proj.weight.shape == (64, 576)
    mha = convert_kv_heads(model, 9)
    assert kv_heads_of(mha) == [9] * 30 and attention_modules(mha)[29].v_proj.weight.shape == (576, 576)
    assert max_logit_difference(model, mha, ids) < 1e-4
    assert math.isfinite(mean_nll(mqa, ids))
