"""The cache-shrinking methods of notebook 08: each must compute what a decoder holding that cache would."""

import math

import pytest
import torch
from torch.nn import functional as F

from gqa_lib.core.attention import GroupedQueryAttention
from gqa_lib.experiments.cache_shrink import (
    CachePolicy,
    ShrunkCacheAttention,
    fake_quantize,
    layer_cache_bytes,
    pareto_front,
    quantize_blocks,
    shrink_layers,
    shrunk_cache_bytes_per_token,
    visible,
)
from gqa_lib.experiments.latent_conversion import to_latent

D_MODEL, N_HEADS, N_KV, HEAD_DIM = 48, 6, 2, 64


def layer(seed=0, n_kv=N_KV):
    torch.manual_seed(seed)
    return GroupedQueryAttention(D_MODEL, N_HEADS, n_kv, head_dim=HEAD_DIM).eval()


def x_of(seq, seed=1):
    return torch.randn(1, seq, D_MODEL, generator=torch.Generator().manual_seed(seed))


def bf16(t):
    return t.to(torch.bfloat16).float()


def step_by_step(base, x, keep, k_of=None, v_of=None):
    """Decode position by position: query i attends to the keys ``keep(i)`` returns, as given by k_of / v_of."""
    q, k, v = base.qkv(x)
    k_of = k_of or (lambda i: bf16(k))
    v_of = v_of or (lambda i: bf16(v))
    g = N_HEADS // k.shape[1]
    rows = []
    for i in range(x.shape[1]):
        idx = torch.tensor(keep(i))
        ki, vi = k_of(i)[:, :, idx], v_of(i)[:, :, idx]
        ki, vi = ki.repeat_interleave(g, 1), vi.repeat_interleave(g, 1)
        w = (q[:, :, i:i + 1] @ ki.transpose(-2, -1) / math.sqrt(HEAD_DIM)).softmax(-1)
        rows.append(w @ vi)  # (1, n_heads, 1, head_dim)
    out = torch.cat(rows, 2)
    return base.o_proj(out.transpose(1, 2).reshape(1, x.shape[1], -1))


@torch.no_grad()
def test_full_cache_is_the_layer_with_bf16_keys_and_values():
    base, x = layer(), x_of(40)
    got = ShrunkCacheAttention(base)(x)
    torch.testing.assert_close(got, step_by_step(base, x, lambda i: list(range(i + 1))), atol=1e-5, rtol=1e-5)
    assert (got - base(x)).abs().max() < 2e-2  # bf16 rounding of K and V only


@torch.no_grad()
@pytest.mark.parametrize("window, sinks", [(5, 0), (5, 2), (1, 0), (8, 3)])
def test_sliding_window_matches_decoding_with_a_rolling_cache(window, sinks):
    base, x = layer(), x_of(30)

    def keep(i):  # a rolling cache: the first `sinks` tokens and the last `window`
        return sorted(set(range(min(sinks, i + 1))) | set(range(max(0, i - window + 1), i + 1)))

    got = ShrunkCacheAttention(base, CachePolicy(window=window, sinks=sinks))(x)
    torch.testing.assert_close(got, step_by_step(base, x, keep), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_a_window_longer_than_the_text_changes_nothing():
    base, x = layer(), x_of(20)
    torch.testing.assert_close(ShrunkCacheAttention(base, CachePolicy(window=20))(x), ShrunkCacheAttention(base)(x))


def test_visible_mask():
    m = visible(6, window=2, sinks=1)
    assert m[5].tolist() == [True, False, False, False, True, True]
    assert m[1].tolist() == [True, True, False, False, False, False]
    assert visible(4).equal(torch.ones(4, 4).tril().bool())


def test_fake_quantize_error_is_half_a_step():
    x = torch.randn(3, 5, 128, generator=torch.Generator().manual_seed(0))
    for bits in (8, 4):
        y = fake_quantize(x, bits)
        g = x.reshape(3, 5, 2, 64)
        step = (g.amax(-1) - g.amin(-1)) / (2 ** bits - 1)  # (3, 5, 2)
        err = (y - x).reshape(3, 5, 2, 64).abs().amax(-1)
        assert (err <= 0.5 * step * 1.02 + 0.01 * g.abs().amax(-1)).all()  # half a step, plus bf16 scale rounding
    assert (fake_quantize(x, 8) - x).abs().mean() < (fake_quantize(x, 4) - x).abs().mean() / 8


def test_fake_quantize_keeps_a_constant_group_and_checks_its_arguments():
    x = torch.full((2, 64), 0.75)
    assert torch.equal(fake_quantize(x, 4), x)
    with pytest.raises(ValueError, match="bits=3"):
        fake_quantize(x, 3)
    with pytest.raises(ValueError, match="multiple of group=64"):
        fake_quantize(torch.zeros(2, 48), 8)


@torch.no_grad()
def test_int8_per_token_matches_decoding_with_a_quantized_cache():
    base, x = layer(), x_of(24)
    _, k, v = base.qkv(x)
    got = ShrunkCacheAttention(base, CachePolicy(bits=8))(x)
    want = step_by_step(base, x, lambda i: list(range(i + 1)),
                        lambda i: fake_quantize(k, 8), lambda i: fake_quantize(v, 8))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_per_channel_keys_quantize_finished_blocks_only():
    base, x = layer(), x_of(21)
    block = 8
    _, k, v = base.qkv(x)

    def k_of(i):  # at step i, blocks finished before i's block are quantized; i's block is still bf16
        done = (i // block) * block
        return torch.cat([quantize_blocks(k[..., :done, :], 4, block), bf16(k[..., done:, :])], 2)

    def v_of(i):
        done = (i // block) * block
        return torch.cat([fake_quantize(v[..., :done, :], 4), bf16(v[..., done:, :])], 2)

    got = ShrunkCacheAttention(base, CachePolicy(bits=4, axis="channel", block=block))(x)
    want = step_by_step(base, x, lambda i: list(range(i + 1)), k_of, v_of)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(quantize_blocks(k, 4, block)[..., 16:, :], k[..., 16:, :])  # the unfinished block


@torch.no_grad()
def test_cross_layer_sharing_uses_the_lower_layers_keys_and_values():
    lower, upper, x = layer(0), layer(1), x_of(12)
    wrapped = shrink_layers([lower, upper], share_every=2)
    assert wrapped[1].share_from is wrapped[0] and wrapped[0].caches and not wrapped[1].caches
    wrapped[0](x)
    _, k, v = lower.qkv(x)
    q = upper.qkv(x)[0]
    out = F.scaled_dot_product_attention(q, bf16(k).repeat_interleave(3, 1), bf16(v).repeat_interleave(3, 1),
                                         is_causal=True)
    want = upper.o_proj(out.transpose(1, 2).reshape(1, 12, -1))
    torch.testing.assert_close(wrapped[1](x), want, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_a_latent_layer_goes_through_the_same_cache():
    base, x = layer(), x_of(16)
    full = to_latent(base, 2 * N_KV * HEAD_DIM if 2 * N_KV * HEAD_DIM <= D_MODEL else D_MODEL)
    assert (ShrunkCacheAttention(full)(x) - base(x)).abs().max() < 2e-2
    assert (ShrunkCacheAttention(full, CachePolicy(bits=8))(x) - base(x)).abs().max() < 5e-2
    with pytest.raises(ValueError, match="per token"):
        ShrunkCacheAttention(full, CachePolicy(bits=8, axis="channel"))


def test_bytes_of_smollm2_cache_each_way():
    """SmolLM2-135M: 30 layers, 3 KV heads of 64: 384 numbers a token and layer, 23,040 bytes a token in bf16."""
    smol = [layer(n_kv=3) for _ in range(2)]

    def per_token(policy, share=1, context=2048):
        return shrunk_cache_bytes_per_token(shrink_layers(smol, policy, share), context) * 15  # 2 layers -> 30

    assert per_token(CachePolicy()) == 23040
    assert per_token(CachePolicy(bits=8)) == 30 * 384 * (1 + 4 / 64)  # 12,240
    assert per_token(CachePolicy(bits=4)) == 30 * 384 * (0.5 + 4 / 64)  # 6,480
    assert per_token(CachePolicy(window=1024, sinks=4)) == 23040 * 1028 / 2048
    assert per_token(CachePolicy(window=1024), context=512) == 23040  # the window is not full yet
    assert per_token(CachePolicy(), share=2) == 23040 / 2
    # KIVI at 2048 tokens: 32 finished blocks of 64, nothing left in bf16.
    assert per_token(CachePolicy(bits=4, axis="channel")) == 30 * 384 * (0.5 + 4 / 128 + 4 / 64 / 2)
    # at 2050 tokens, 2 tokens wait in bf16
    assert layer_cache_bytes(384, 2050, CachePolicy(bits=4, axis="channel")) == pytest.approx(
        2048 * 384 * (0.5 + 4 / 128 + 4 / 128) + 2 * 384 * 2)


def test_policy_refuses_what_it_cannot_mean():
    with pytest.raises(ValueError, match="sinks=4 needs a window"):
        CachePolicy(sinks=4)
    with pytest.raises(ValueError, match="bits=2"):
        CachePolicy(bits=2)
    with pytest.raises(ValueError, match="axis='head'"):
        CachePolicy(bits=8, axis="head")
    with pytest.raises(ValueError, match="window=0"):
        CachePolicy(window=0)
    with pytest.raises(TypeError, match="GroupedQueryAttention"):
        ShrunkCacheAttention(torch.nn.Linear(2, 2))
    assert CachePolicy(window=512, sinks=4, bits=8).label() == "window 512 + 4 sinks, int8 per token"


def test_pareto_front():
    pts = [(10, 3.0), (5, 3.5), (5, 4.0), (20, 2.9), (20, 3.1), (1, 9.0)]
    assert pareto_front(pts) == [True, True, False, True, False, True]
