"""TinyLM: decoding through the KV caches gives the same tokens as re-running the whole sequence.

That the cached logits equal the full pass (float32 and bfloat16) and that a bad config or bad ids are named is
the attention contract's, TinyLM's row in tests/test_attention_contract.py.
"""

import pytest
import torch

from gqa_lib.models.tiny_lm import TinyLM, TinyLMConfig, decode, encode

pytestmark = pytest.mark.usefixtures("single_thread")


def small_model(n_kv_heads: int, seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    cfg = TinyLMConfig(d_model=32, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, d_ff=64, max_len=48)
    return TinyLM(cfg).eval()


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])  # MHA, GQA, MQA
def test_generate_with_and_without_cache_gives_the_same_tokens(n_kv_heads):
    model = small_model(n_kv_heads)
    prompt = torch.stack([encode("The cache")[0], encode("Attention")[0, :9]])  # (2, 9): a batch of two
    steps = []
    cached = model.generate(prompt, 20, use_cache=True, on_step=steps.append)
    uncached = model.generate(prompt, 20, use_cache=False)
    assert cached.shape == (2, 29)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, :9], prompt)
    assert steps == list(range(20))


def test_encode_decode_round_trip():
    text = "grouped query attention, ünïcode too"
    ids = encode(text)
    assert ids.shape == (1, len(text.encode("utf-8"))) and ids.dtype == torch.long
    assert decode(ids) == text


def test_bad_generate_arguments():
    model = small_model(2)
    with pytest.raises(ValueError, match=r"prompt length 40 \+ n_new=10 exceeds max_len=48"):
        model.generate(torch.zeros(1, 40, dtype=torch.long), 10)
    with pytest.raises(ValueError, match=r"n_new=0 must be a positive integer"):
        model.generate(torch.zeros(1, 4, dtype=torch.long), 0)
    with pytest.raises(ValueError, match=r"idx\.shape=\(4,\) must be \(batch, seq\)"):
        model.generate(torch.zeros(4, dtype=torch.long), 2)
    with pytest.raises(ValueError, match=r"got 1 caches for 2 layers"):
        model(torch.zeros(1, 4, dtype=torch.long), model.new_caches(1)[:1])
