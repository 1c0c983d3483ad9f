"""TinyLM: decoding through the KV caches gives the same tokens as re-running the whole sequence."""

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


def test_cached_logits_equal_the_full_forward():
    model = small_model(2, seed=1)
    idx = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        full = model(idx)
        caches = model.new_caches(1)
        steps = torch.cat([model(idx[:, :6], caches)] + [model(idx[:, t:t + 1], caches) for t in range(6, 10)], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=0)
    assert all(c.length == 10 and c.k.shape[1] == 2 for c in caches)


def test_encode_decode_round_trip():
    text = "grouped query attention, ünïcode too"
    ids = encode(text)
    assert ids.shape == (1, len(text.encode("utf-8"))) and ids.dtype == torch.long
    assert decode(ids) == text


@pytest.mark.parametrize(("changes", "error", "message"), [
    ({"n_kv_heads": 3}, ValueError, r"n_kv_heads=3 must divide n_heads=8 \(valid: 1, 2, 4, 8\)"),
    ({"d_model": 100}, ValueError, r"d_model=100 must be divisible by n_heads=8"),
    ({"d_model": 24}, ValueError, r"d_model=24 / n_heads=8 = head_dim 3 must be even for RoPE"),
    ({"n_layers": 0}, ValueError, r"n_layers=0 must be a positive integer"),
    ({"vocab_size": 256.0}, TypeError, r"vocab_size=256\.0 must be a positive integer"),
    ({"n_heads": True}, TypeError, r"n_heads=True must be a positive integer \(got bool\)"),
])
def test_bad_config_names_the_field(changes, error, message):
    with pytest.raises(error, match=message):
        TinyLMConfig(**changes)


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
