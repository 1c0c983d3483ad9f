"""SmolLM2 with gqa_lib's attention and caches: the same logits and greedy tokens as transformers, cached or not."""

import pytest
import torch

from gqa_lib.core.attention import GroupedQueryAttention
from gqa_lib.core.kv_cache import KVCache
from gqa_lib.models.smollm_decoder import SmolLMDecoder


@pytest.fixture(scope="module")
def smollm(single_thread):
    from gqa_lib.models.smollm import load_smollm

    return load_smollm()


@pytest.fixture(scope="module")
def decoder(smollm):
    return SmolLMDecoder.from_transformers(smollm[0])


@pytest.fixture(scope="module")
def prompt(smollm):
    return smollm[1]("Grouped query attention lets several query heads share", return_tensors="pt")["input_ids"]


def test_layers_hold_the_real_weights(smollm, decoder):
    model = smollm[0]
    assert decoder.n_layers == 30
    attn = decoder.attention[7]
    assert isinstance(attn, GroupedQueryAttention) and (attn.n_heads, attn.n_kv_heads, attn.head_dim) == (9, 3, 64)
    assert torch.equal(attn.k_proj.weight, model.model.layers[7].self_attn.k_proj.weight)
    assert decoder.mlps[7] is model.model.layers[7].mlp  # shared, not copied


@torch.no_grad()
def test_logits_match_transformers(smollm, decoder, prompt):
    model = smollm[0]
    noise = torch.randint(0, model.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(0))
    ids = torch.cat([prompt, noise], 1)
    ids = torch.cat([ids, ids.flip(1)])  # batch 2
    expected = model(input_ids=ids, use_cache=False).logits
    assert (decoder(ids) - expected).abs().max().item() <= 1e-3


@torch.no_grad()
def test_cached_steps_equal_the_uncached_pass(decoder, prompt):
    full = decoder(prompt)  # (1, seq, vocab)
    caches = decoder.new_caches(1, prompt.shape[1])
    assert all(isinstance(c, KVCache) and c.n_kv_heads == 3 for c in caches)
    split = prompt.shape[1] // 2
    parts = [decoder(prompt[:, :split], caches)] + [decoder(prompt[:, t:t + 1], caches)
                                                   for t in range(split, prompt.shape[1])]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)
    assert decoder.cache_nbytes(caches) == 30 * 2 * 3 * 64 * prompt.shape[1] * 4  # layers, K and V, heads, dim, fp32


@torch.no_grad()
def test_greedy_tokens_match_transformers(smollm, decoder, prompt):
    model = smollm[0]
    expected = model.generate(prompt, max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(prompt))
    assert decoder.generate(prompt, 6).tolist() == expected[:, prompt.shape[1]:].tolist()


def test_attention_can_be_swapped(decoder, prompt):
    from gqa_lib.core.kv_head_conversion import expand_to_mha

    mha = decoder.with_attention([expand_to_mha(a) for a in decoder.attention])  # the MHA twin: same function
    assert mha.attention[0].n_kv_heads == 9 and mha.mlps[0] is decoder.mlps[0]
    with torch.no_grad():
        assert (mha(prompt) - decoder(prompt)).abs().max().item() <= 1e-4
    assert mha.cache_nbytes(mha.new_caches(1, 10)) == 3 * decoder.cache_nbytes(decoder.new_caches(1, 10))


def test_bad_input_is_named(decoder):
    with pytest.raises(ValueError, match="ids="):
        decoder(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="attention has 2 layers"):
        decoder.with_attention(list(decoder.attention)[:2])
    with pytest.raises(ValueError, match="caches has 1 entries"):
        decoder(torch.zeros(1, 2, dtype=torch.long), caches=[None])
