"""GQA -> latent attention: exact at full rank, cached = uncached, the input-weighted SVD keeps more, on SmolLM2 too."""

import pytest
import torch

from gqa_lib.core.attention import GroupedQueryAttention
from gqa_lib.experiments.latent_conversion import (
    LatentCache,
    LatentKVAttention,
    input_second_moments,
    kv_basis,
    latent_decoder,
    latent_decoders,
    to_latent,
    window_losses,
)
from gqa_lib.experiments.stats import bootstrap_interval


def gqa_layer(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return GroupedQueryAttention(48, 6, 2, head_dim=8, rope_base=100.0).to(dtype).eval()


def anisotropic_inputs(n=400, d=48, seed=1, dtype=torch.float64):
    """Inputs whose energy sits in a few directions, as a trained model's normalised activations do."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(1, -2, d, dtype=dtype)
    return torch.randn(n, d, generator=g, dtype=dtype) * scales @ torch.linalg.qr(
        torch.randn(d, d, generator=g, dtype=dtype))[0]


@pytest.mark.parametrize("weighted", [False, True])
def test_full_rank_computes_what_the_layer_computes(weighted):
    layer = gqa_layer()
    x = anisotropic_inputs()[None, :30]  # (1, 30, 48)
    moment = (x[0].T @ x[0]) / 30 if weighted else None
    latent = to_latent(layer, 2 * 2 * 8, moment)  # 2 x n_kv_heads x head_dim = 32
    assert isinstance(latent, LatentKVAttention) and latent.kv_down.weight.shape == (32, 48)
    torch.testing.assert_close(latent(x), layer(x), atol=1e-10, rtol=1e-10)


def test_cached_decoding_equals_the_full_pass_and_caches_only_the_latent():
    latent = to_latent(gqa_layer(), 12)
    x = anisotropic_inputs()[None, :9]
    cache = latent.new_cache(batch=1, max_len=9)
    steps = [latent(x[:, :4], cache)] + [latent(x[:, t:t + 1], cache) for t in range(4, 9)]
    torch.testing.assert_close(torch.cat(steps, 1), latent(x))
    assert isinstance(cache, LatentCache) and cache.nbytes == 9 * 12 * 8  # tokens x rank x float64


def test_input_weighted_svd_keeps_more_of_the_real_outputs():
    layer = gqa_layer()
    x = anisotropic_inputs()  # (400, 48)
    moment = x.T @ x / len(x)
    w = torch.cat([layer.k_proj.weight, layer.v_proj.weight]).detach()
    errors = {}
    for name, m in (("plain", None), ("weighted", moment)):
        u = kv_basis(layer, m)[0][:, :8]
        errors[name] = ((w - u @ u.T @ w) @ x.T).pow(2).mean().item()  # mean square error of [k; v]
    assert errors["weighted"] < 0.5 * errors["plain"]


def test_plain_basis_is_the_weights_own_svd():
    layer = gqa_layer()
    u, s = kv_basis(layer)
    w = torch.cat([layer.k_proj.weight, layer.v_proj.weight]).detach()
    torch.testing.assert_close(s, torch.linalg.svdvals(w))
    torch.testing.assert_close(u.T @ u, torch.eye(32, dtype=u.dtype))


@pytest.mark.parametrize("rank", [0, 33, 2.0, True])
def test_bad_rank_is_named(rank):
    with pytest.raises(ValueError, match=f"rank={rank!r} must be an integer in 1..32"):
        to_latent(gqa_layer(), rank)


def test_bad_second_moment_is_named():
    with pytest.raises(ValueError, match=r"second_moment.shape=\(4, 4\) must be \(48, 48\)"):
        to_latent(gqa_layer(), 8, torch.eye(4))


def test_bootstrap_interval_is_seeded_and_paired_differences_are_tighter():
    g = torch.Generator().manual_seed(0)
    base = 2 + torch.rand(40, generator=g, dtype=torch.float64)  # windows differ a lot from each other
    other = base + 0.1 + 0.01 * torch.randn(40, generator=g, dtype=torch.float64)  # a small, steady shift
    low, high = bootstrap_interval(other)
    assert low < other.mean().item() < high and (low, high) == bootstrap_interval(other)
    d_low, d_high = bootstrap_interval(other, base)
    assert d_low < 0.1 < d_high and d_high - d_low < (high - low) / 10


# --- the real model --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real(single_thread):
    from gqa_lib.models.smollm import load_smollm
    from gqa_lib.models.smollm_decoder import SmolLMDecoder

    model, tok = load_smollm()
    ids = tok("def greedy(prompt):\n    # pick the most likely token at every step", return_tensors="pt")["input_ids"]
    calib = tok("Return the list of lines, with trailing whitespace removed.", return_tensors="pt")["input_ids"]
    return SmolLMDecoder.from_transformers(model), ids, calib


def test_second_moment_is_the_mean_outer_product_of_the_attention_inputs(real):
    decoder, ids, _ = real
    moments = input_second_moments(decoder, ids)
    x0 = decoder.input_norms[0](decoder.embed_tokens(ids))[0].double()  # layer 0's input: (seq, d_model)
    torch.testing.assert_close(moments[0], x0.T @ x0 / ids.shape[1])
    assert len(moments) == 30


@pytest.fixture(scope="module")
def converted(real):
    """{'plain' | 'weighted': {rank: the decoder converted at that rank}}, ranks 128 and 384 (full): each layer's
    SVD made once per weighting and cut at both ranks, as notebook 07 does; the weighting calibrated on other text
    than the tests score."""
    decoder, _, calib = real
    with torch.no_grad():
        return {name: latent_decoders(decoder, [128, 384], m)
                for name, m in (("plain", None), ("weighted", input_second_moments(decoder, calib)))}


@torch.no_grad()
def test_smollm_full_rank_latent_reproduces_the_logits(real, converted):
    decoder, ids, _ = real
    original = decoder(ids)
    for name in ("plain", "weighted"):
        assert (converted[name][384](ids) - original).abs().max().item() <= 1e-4, name
    torch.testing.assert_close(latent_decoder(decoder, 128)(ids), converted["plain"][128](ids))  # one rank alone


@torch.no_grad()
def test_smollm_at_one_kv_heads_cache_input_weighted_beats_plain(real, converted):
    decoder, ids, _ = real
    loss = {name: window_losses(converted[name][128], ids).item() for name in ("plain", "weighted")}
    base = window_losses(decoder, ids).item()
    assert base < loss["weighted"] < loss["plain"]


def test_the_shipped_figure_draws_the_paired_differences_not_the_losses():
    """notebook 07's picture: each conversion's loss above the original with its interval paired by window,
    exactly the stored delta columns, on a log scale (the differences are all positive)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gqa_lib.experiments import results
    from gqa_lib.pictures.latent_conversion import plot_latent_conversion

    table = results.read_results(results.RESULTS_DIR / "mla_smollm.csv")
    fig, ax = plt.subplots()
    plot_latent_conversion(table, ax)
    drawn = {}
    for container in ax.containers:  # one ErrorbarContainer per method
        line, _, (bars,) = container
        label = container.get_label()
        for x, y, seg in zip(line.get_xdata(), line.get_ydata(), bars.get_segments(), strict=True):
            drawn[(label, int(x))] = (float(y), float(seg[0][1]), float(seg[1][1]))
    converted = table[~table["method"].str.startswith("original")]
    assert len(drawn) == len(converted)
    for _, row in converted.iterrows():
        y, low, high = drawn[(row["method"], int(row["cache_numbers_per_token_layer"]))]
        assert (y, low, high) == pytest.approx((row["delta_nll"], row["delta_ci_low"], row["delta_ci_high"]))
    assert ax.get_yscale() == "log" and "paired by window" in ax.get_title()
    plt.close(fig)
