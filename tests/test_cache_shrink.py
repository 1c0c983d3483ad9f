"""The cache-shrinking methods of notebook 08: their parts, their bytes, and how they stand to the layer.

That each computes what a decoder holding that cache would (a window with sinks, int8 and int4 per token, KIVI's
per-channel keys, a cache shared across layers), in float32 and bfloat16, and that bad policies are named, is the
attention contract's: tests/test_attention_contract.py decodes each of them token by token.
"""

import pytest
import torch

from gqa_lib.core.attention import GroupedQueryAttention
from gqa_lib.core.cache_math import ElementType
from gqa_lib.experiments.cache_pareto import policy_of, scored_bytes_per_token
from gqa_lib.experiments.cache_shrink import (
    SCALE_BYTES,
    CachePolicy,
    ShrunkCacheAttention,
    bytes_per_token_over,
    calibrated_amax,
    fake_quantize,
    fp8_group_round_trip,
    fp8_round_trip,
    layer_cache_bytes,
    pareto_front,
    quantize_blocks,
    shrink_layers,
    shrunk_cache_bytes_per_token,
    stored_element,
    tokens_kept,
    visible,
)
from gqa_lib.experiments.latent_conversion import to_latent
from gqa_lib.experiments.results import RESULTS_DIR, read_results

D_MODEL, N_HEADS, N_KV, HEAD_DIM = 48, 6, 2, 64


def layer(seed=0, n_kv=N_KV):
    torch.manual_seed(seed)
    return GroupedQueryAttention(D_MODEL, N_HEADS, n_kv, head_dim=HEAD_DIM).eval()


def x_of(seq, seed=1):
    return torch.randn(1, seq, D_MODEL, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_full_cache_is_the_layer_but_for_bf16_keys_and_values():
    base, x = layer(), x_of(40)
    assert (ShrunkCacheAttention(base)(x) - base(x)).abs().max() < 2e-2  # bf16 rounding of K and V only


@torch.no_grad()
def test_a_window_longer_than_the_text_changes_nothing():
    base, x = layer(), x_of(20)
    torch.testing.assert_close(ShrunkCacheAttention(base, CachePolicy(window=20))(x), ShrunkCacheAttention(base)(x))


def test_visible_mask():
    m = visible(6, window=2, sinks=1)
    assert m[5].tolist() == [True, False, False, False, True, True]
    assert m[1].tolist() == [True, True, False, False, False, False]
    assert visible(4).equal(torch.ones(4, 4).tril().bool())


@pytest.mark.parametrize("offset", [0.0, 3.0, 40.0, 200.0, -200.0])
@pytest.mark.parametrize("bits", [8, 4])
def test_fake_quantize_error_is_half_a_step(bits, offset):
    """Within half a step of the exact (max - min) / levels, plus the bf16 rounding of the stored scale and
    minimum: each may widen the step by one bf16 unit. The old tolerance (1% of the group's largest value)
    hid groups far from zero, where a minimum rounded up to the nearest bf16 clipped everything below it:
    near 200 the old rule was 14 steps off."""
    x = offset + torch.randn(3, 5, 128, generator=torch.Generator().manual_seed(0)) * 0.5
    g = x.reshape(3, 5, 2, 64)
    lo, hi = g.amin(-1), g.amax(-1)
    levels = 2 ** bits - 1
    bf16_unit = 2.0 ** -7  # bf16 keeps 8 significant bits: one unit is at most 2**-7 of the value
    widened = (hi - lo + bf16_unit * lo.abs()) / levels * (1 + bf16_unit)  # the largest step the rounding allows
    err = (fake_quantize(x, bits) - x).reshape(3, 5, 2, 64).abs().amax(-1)
    fp32 = 4 * torch.finfo(torch.float32).eps * g.abs().amax(-1)  # q * scale + low, computed in float32
    assert (err <= 0.5 * widened + fp32).all(), f"worst: {(err / (0.5 * widened)).max():.2f} half-steps"


def test_int8_is_much_closer_than_int4():
    x = torch.randn(3, 5, 128, generator=torch.Generator().manual_seed(0))
    assert (fake_quantize(x, 8) - x).abs().mean() < (fake_quantize(x, 4) - x).abs().mean() / 8


def test_fake_quantize_keeps_a_constant_group_and_checks_its_arguments():
    x = torch.full((2, 64), 0.75)
    assert torch.equal(fake_quantize(x, 4), x)
    with pytest.raises(ValueError, match="bits=3"):
        fake_quantize(x, 3)
    with pytest.raises(ValueError, match="multiple of group=64"):
        fake_quantize(torch.zeros(2, 48), 8)


@torch.no_grad()
def test_per_channel_keys_leave_the_unfinished_block_as_it_is():
    _, k, _ = layer().qkv(x_of(21))
    assert torch.equal(quantize_blocks(k, 4, 8)[..., 16:, :], k[..., 16:, :])  # 2 blocks of 8 done, 5 tokens wait


def test_shared_layers_point_to_the_layer_below_and_cache_nothing():
    wrapped = shrink_layers([layer(0), layer(1), layer(2)], share_every=2)
    assert wrapped[1].share_from is wrapped[0] and wrapped[0].caches and not wrapped[1].caches
    assert wrapped[2].share_from is None and wrapped[1].numbers_per_token() == 0


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
    # KIVI after 2048 tokens: the 2048th token's own block (positions 1984 to 2047) is the unfinished one, in
    # bf16, as the simulation attends it; 31 finished blocks of 64 before it.
    assert per_token(CachePolicy(bits=4, axis="channel")) == \
        30 * (1984 * 384 * (0.5 + 4 / 128 + 4 / 64 / 2) + 64 * 384 * 2) / 2048
    # at 2050 tokens, 2 tokens wait in bf16
    assert layer_cache_bytes(384, 2050, CachePolicy(bits=4, axis="channel")) == pytest.approx(
        2048 * 384 * (0.5 + 4 / 128 + 4 / 128) + 2 * 384 * 2)


def _bytes_before_the_one_model(numbers_per_token, context, policy, head_dim=64):
    """layer_cache_bytes as it was written by hand before it went through core.cache_math.ElementType (with the
    newest block counted by position since, as the simulation holds it)."""
    n = tokens_kept(context, policy)
    if policy.bits is None:
        return 2.0 * numbers_per_token * n
    per_number = policy.bits / 8
    if policy.axis == "token":
        group = (64 if numbers_per_token % 64 == 0 else numbers_per_token) if numbers_per_token % head_dim else head_dim
        return n * numbers_per_token * (per_number + 4 / group)
    # the newest token's own block in bf16, counted by position, as the simulation attends (the one change since)
    b, current = policy.block, (context - 1) // policy.block
    kept = range(context) if policy.window is None or context <= n else \
        [*range(policy.sinks), *range(context - policy.window, context)]
    quantized = [p for p in kept if p // b < current]
    done = len(quantized)
    half = numbers_per_token / 2
    keys = done * half * per_number + len({p // b for p in quantized}) * half * 4
    values = done * half * (per_number + 4 / head_dim)
    return keys + values + (n - done) * numbers_per_token * 2.0


@pytest.mark.parametrize("numbers", [64, 128, 192, 256, 384, 640, 2048])
@pytest.mark.parametrize("policy", [CachePolicy(), CachePolicy(bits=8), CachePolicy(bits=4),
                                    CachePolicy(bits=8, axis="channel"), CachePolicy(bits=4, axis="channel"),
                                    CachePolicy(window=1024, sinks=4, bits=4, axis="channel"),
                                    CachePolicy(window=256, sinks=4), CachePolicy(window=512, bits=8)])
def test_bytes_through_the_one_model_are_the_bytes_counted_before(numbers, policy):
    for context in (1, 63, 64, 65, 1028, 2047, 2048, 2050, 8192):
        if policy.axis == "channel" and numbers % 128:
            continue  # per channel needs whole heads of 64 (K and V)
        assert layer_cache_bytes(numbers, context, policy) == _bytes_before_the_one_model(numbers, context, policy)


def test_bytes_are_priced_by_core_cache_math():
    assert SCALE_BYTES == ElementType("int8").group_bytes == 4  # a bf16 scale and a bf16 minimum
    assert stored_element(8) == ElementType("int8") and stored_element(None) == ElementType("bf16")
    # one token of one head's K or V (64 numbers): the same bytes as notebooks 01 and 03 count
    assert layer_cache_bytes(64, 1, CachePolicy(bits=8)) == ElementType("int8").vector_bytes(64) == 68
    assert layer_cache_bytes(64, 1, CachePolicy(bits=4)) == ElementType("int4").vector_bytes(64) == 36
    # a latent of 96 numbers (64 does not divide it) is one group a token
    assert layer_cache_bytes(96, 10, CachePolicy(bits=8)) == 10 * ElementType("int8", None).vector_bytes(96) == 1000
    # KIVI: per key channel, a finished block of 64 tokens is one vector of 64 numbers with its scale and minimum
    # (after 65 tokens: the 65th token's own block is the unfinished one, in bf16)
    assert layer_cache_bytes(128, 65, CachePolicy(bits=4, axis="channel")) == \
        64 * ElementType("int4").vector_bytes(64) + 64 * ElementType("int4").vector_bytes(64) + 128 * 2
    with pytest.raises(ValueError, match=r"numbers_per_token=96 must be a multiple of 2 x head_dim=128"):
        layer_cache_bytes(96, 64, CachePolicy(bits=4, axis="channel"))


def test_the_shipped_chart_bytes_are_what_layer_cache_bytes_gives():
    """Every row of data/results/cache_pareto*.csv: its bytes per token, recomputed from its parameters, exactly
    (averaged over the scored predictions where the file says so; eviction rows measured their bytes)."""
    files = sorted(RESULTS_DIR.glob("cache_pareto*.csv"))
    assert files, "data/results/cache_pareto.csv is missing"
    for path in files:
        table = read_results(path)
        averaged = "score_from" in table.columns
        for context, part in table.groupby("context"):
            original = None
            for row in part.to_dict("records"):
                if str(row.get("evicts", False)) == "True":
                    continue
                if averaged:
                    per_token = scored_bytes_per_token(row)
                else:
                    per_layer = layer_cache_bytes(int(row["numbers_per_token_layer"]), int(context), policy_of(row))
                    per_token = per_layer * int(row["caching_layers"]) / int(context)
                assert round(per_token, 1) == row["kv_bytes_per_token"], (path.name, row["method"], context)
                if row["source"] == "original" and row["policy"] == "bf16, every token" and row["share_every"] == 1:
                    original = per_token
            for row in part.to_dict("records"):
                # the file rounds the ratio of its unrounded bytes to 4 places: within half a unit of the 4th
                # place, plus what rounding the bytes to 0.1 moves the ratio (under 1e-5 here)
                assert row["kv_bytes_per_token"] / original == pytest.approx(row["bytes_vs_original"], abs=6e-5), \
                    row["method"]


def test_policy_label():
    assert CachePolicy(window=512, sinks=4, bits=8).label() == "window 512 + 4 sinks, int8 per token"
    assert CachePolicy().label() == "bf16, every token"


def test_pareto_front():
    pts = [(10, 3.0), (5, 3.5), (5, 4.0), (20, 2.9), (20, 3.1), (1, 9.0)]
    assert pareto_front(pts) == [True, True, False, True, False, True]


@pytest.mark.parametrize(("window", "sinks", "named"), [(0, 0, "window=0"), (-3, 0, "window=-3"),
                                                        (4, -1, "sinks=-1"), (None, 2, "sinks=2 needs a window")])
def test_a_mask_the_policy_refuses_is_refused_too(window, sinks, named):
    """visible(8, window=0) was all False (no query saw even itself) where CachePolicy(window=0) refuses."""
    with pytest.raises(ValueError, match=named):
        visible(8, window, sinks)


@pytest.mark.parametrize("bits", [None, 8])
def test_one_nan_in_the_input_is_named_not_spread(bits):
    x = x_of(12)
    x[0, 5, 7] = float("nan")
    with pytest.raises(ValueError, match=r"x .*position 5"):
        ShrunkCacheAttention(layer(), CachePolicy(bits=bits))(x)


def test_a_flat_input_is_named():
    with pytest.raises(ValueError, match=r"x.shape=\(12, 48\) must be \(batch, seq, d_model=48\)"):
        ShrunkCacheAttention(layer())(x_of(12)[0])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_failed_measurement_is_not_put_on_the_front(bad):
    with pytest.raises(ValueError, match=r"points\[1\]=.* is not finite"):
        pareto_front([(100.0, 2.0), (50.0, bad), (80.0, 2.5)])


def _attention_by_hand(q, k_now, v_now, k_old, v_old, block, n_kv):
    """Query i reads key j <= i: the quantized copy when j's block finished before i's, else the bf16 one."""
    b, n_heads, s, d = q.shape
    out = torch.zeros_like(q)
    for h in range(n_heads):
        g = h // (n_heads // n_kv)
        for i in range(s):
            old = torch.arange(i + 1) // block < i // block
            keys = torch.where(old[:, None], k_old[0, g, :i + 1], k_now[0, g, :i + 1])
            vals = torch.where(old[:, None], v_old[0, g, :i + 1], v_now[0, g, :i + 1])
            w = (q[0, h, i] @ keys.T / d ** 0.5).softmax(-1)
            out[0, h, i] = w @ vals
    return out


@torch.no_grad()
@pytest.mark.parametrize("policy", [CachePolicy(bits=4, newest_bf16=True, block=8),
                                    CachePolicy(bits=2, axis="channel", block=8)])
def test_newest_block_in_bf16_and_kivi_2_bit_read_what_the_cache_holds(policy):
    base, x = layer(), x_of(21)
    q, k, v = base.qkv(x)
    bf = lambda t: t.to(torch.bfloat16).float()  # noqa: E731
    if policy.axis == "token":
        k_old, v_old = fake_quantize(k, policy.bits), fake_quantize(v, policy.bits)
    else:
        k_old, v_old = quantize_blocks(k, policy.bits, policy.block), fake_quantize(v, policy.bits)
    want = _attention_by_hand(q, bf(k), bf(v), k_old, v_old, policy.block, N_KV)
    want = base.o_proj(want.transpose(1, 2).reshape(1, 21, -1))
    torch.testing.assert_close(ShrunkCacheAttention(base, policy)(x), want, atol=1e-5, rtol=1e-5)


def test_fp8_round_trip_is_torch_float8_with_saturation():
    x = torch.tensor([0.1, -3.0, 500.0, -1e6, 0.0])
    got = fp8_round_trip(x, "e4m3", 1.0)
    assert got[2] == 448 and got[3] == -448  # saturates at the largest number, never nan
    assert got[1] == -3.0 and got[4] == 0
    assert got[0] == torch.tensor(0.1).to(torch.float8_e4m3fn).float()
    torch.testing.assert_close(fp8_round_trip(x[:2], "e5m2", 0.5), (x[:2] / 0.5).to(torch.float8_e5m2).float() * 0.5)
    g = torch.randn(3, 256) * 40
    back = fp8_group_round_trip(g, "e4m3")
    assert ((back - g).abs() / g.abs().clamp_min(1)).max() < 0.07  # 3 mantissa bits: half a step is 1/16
    with pytest.raises(ValueError, match="fmt='e3m4'"):
        fp8_round_trip(x, "e3m4", 1.0)


@torch.no_grad()
def test_fp8_caches_use_calibrated_scales_per_tensor_or_per_head():
    base, x = layer(), x_of(30)
    amax = calibrated_amax([base], [x])[0]
    _, k, v = base.qkv(x)
    torch.testing.assert_close(amax[0], k.abs().amax(dim=(0, 2, 3)))
    for scope in ("tensor", "head"):
        got = ShrunkCacheAttention(base, CachePolicy(fp8="e4m3", fp8_scale=scope), amax=amax)(x)
        assert (got - base(x)).abs().max() < 0.05, scope
    with pytest.raises(ValueError, match="needs amax"):
        ShrunkCacheAttention(base, CachePolicy(fp8="e4m3"))
    with pytest.raises(ValueError, match="two number formats"):
        CachePolicy(bits=8, fp8="e4m3")
    with pytest.raises(ValueError, match="newest_bf16"):
        CachePolicy(bits=4, axis="channel", newest_bf16=True)


def test_bytes_of_the_new_formats():
    n = 100  # tokens; SmolLM2: 384 numbers a token and layer, 6 vectors of 64
    assert layer_cache_bytes(384, n, CachePolicy(fp8="e4m3")) == n * 384 + 2 * 4
    assert layer_cache_bytes(384, n, CachePolicy(fp8="e5m2", fp8_scale="head")) == n * 384 + 2 * 3 * 4
    assert layer_cache_bytes(384, n, CachePolicy(bits=4, newest_bf16=True)) == 64 * 6 * 36 + 36 * 768
    kivi2 = CachePolicy(bits=2, axis="channel")  # keys per channel, values per head
    assert layer_cache_bytes(384, 65, kivi2) == 192 * 20 + 64 * 3 * 20 + 384 * 2  # the 65th token waits in bf16
    assert layer_cache_bytes(256, n, CachePolicy(fp8="e4m3", fp8_scale="group")) == n * (256 + 2 * 4)
    assert CachePolicy(fp8="e4m3", fp8_scale="head").label() == "FP8 E4M3, scale per head"
    assert CachePolicy(bits=4, newest_bf16=True).label() == "int4 per token + newest block in bf16"


def test_bytes_averaged_over_the_scored_predictions_are_a_ratio_of_means():
    layers = shrink_layers([layer(), layer(1)], CachePolicy(window=16))
    assert bytes_per_token_over(layers, [40]) == shrunk_cache_bytes_per_token(layers, 40)
    held = sum(2 * 16 * 2 * 2 * 64 * 2 for _ in range(20, 40)) / 20  # 2 layers, 2 KV heads, K and V, bf16
    assert bytes_per_token_over(layers, range(20, 40)) == pytest.approx(held / (sum(range(20, 40)) / 20))


@pytest.mark.parametrize("policy", [CachePolicy(bits=4, axis="channel"), CachePolicy(bits=4, newest_bf16=True),
                                    CachePolicy(bits=4, axis="channel", window=512, sinks=4),
                                    CachePolicy(bits=4, axis="channel", window=64, sinks=4),
                                    CachePolicy(bits=2, axis="channel", window=128)])
def test_blocks_held_counts_by_position_as_the_simulation_attends(policy):
    """The bytes count what the simulation holds: the newest token's own block in bf16 (1 to 64 tokens, by
    position: `_attend_blocks`), every older kept token quantized, and the scales of every block a kept quantized
    token is in. A window of 516 tokens does not end 4 tokens into a block (a reviewer's catch)."""
    from gqa_lib.experiments.cache_shrink import blocks_held

    for context in range(1, 1200):
        b, current = policy.block, (context - 1) // policy.block
        if policy.window is None or context <= policy.window + policy.sinks:
            kept = range(context)
        else:
            kept = [*range(policy.sinks), *range(context - policy.window, context)]
        quantized = [p for p in kept if p // b < current]
        assert blocks_held(context, policy) == (len(quantized), len(kept) - len(quantized),
                                                len({p // b for p in quantized})), context
