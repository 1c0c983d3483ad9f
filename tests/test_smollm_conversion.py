"""Changing a transformers Llama model's KV heads: shapes, exact expansion, the GQA paper's three methods, and
the statistics over held-out windows (per-window losses, bootstrap intervals, the control-subtracted recovery)."""

import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gqa_lib.experiments.smollm_conversion import (
    PAPER_UPTRAIN_TOKENS,
    attention_modules,
    convert_kv_heads,
    kv_heads_of,
    max_logit_difference,
    mean_nll,
    rank_methods,
    ranking_line,
    recovered_fraction,
    recovered_fraction_interval,
    uptrain,
    window_nlls,
    window_token_ids,
)
from gqa_lib.experiments.stats import bootstrap_mean, bootstrap_ratio
from gqa_lib.pictures.smollm_conversion import plot_conversion

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


def test_window_nlls_are_each_windows_own_loss_and_average_to_mean_nll(tiny_llama):
    ids = torch.randint(0, 64, (5, 12), generator=torch.Generator().manual_seed(3))
    per_window = window_nlls(tiny_llama, ids, batch=2)  # batches of 2, 2, 1: batching must not matter
    assert per_window.shape == (5,) and per_window.dtype == np.float64
    assert per_window.mean() == pytest.approx(mean_nll(tiny_llama, ids), rel=1e-6)
    alone = [mean_nll(tiny_llama, ids[i:i + 1]) for i in range(5)]
    np.testing.assert_allclose(per_window, alone, rtol=1e-6)
    assert np.ptp(per_window) > 0.01  # the windows really differ, so the agreement above says something


def test_recovered_fraction_subtracts_the_controls_change():
    # converted 10, uptrained 6, original 2.5, control 2.4: (4 - 0.1) / 7.5
    assert recovered_fraction(10.0, 6.0, 2.5, 2.4) == pytest.approx(0.52)
    assert recovered_fraction(10.0, 6.0, 2.5, 2.5) == pytest.approx(4 / 7.5)  # a control that did not move
    assert recovered_fraction(10.0, 9.9, 2.5, 2.4) == pytest.approx(0.0)  # no more than the control's own gain
    assert recovered_fraction(10.0, 2.4, 2.5, 2.4) == pytest.approx(1.0)  # where the uptrained original is


def test_recovered_interval_is_a_ratio_of_mean_changes_paired_by_window():
    rng = np.random.default_rng(0)
    original = rng.normal(2.5, 0.4, 64)  # (64,) windows of very different difficulty
    converted = original + np.linspace(0.5, 15.0, 64)  # damage varies a lot between windows
    share_won_back = np.linspace(0.9, 0.1, 64)  # windows hurt least recover most
    uptrained = converted - share_won_back * (converted - original) + rng.normal(0, 0.05, 64)
    control = original - 0.1
    value, se, low, high = recovered_fraction_interval(converted, uptrained, original, control)
    means = [x.mean() for x in (converted, uptrained, original, control)]
    assert value == pytest.approx(recovered_fraction(*means))
    per_window_mean = recovered_fraction(converted, uptrained, original, control).mean()
    assert abs(value - per_window_mean) > 0.1  # so the line above tells the two apart
    assert low < value < high and 0 < se < 0.05
    assert (value, se, low, high) == recovered_fraction_interval(converted, uptrained, original, control)  # seeded
    with pytest.raises(ValueError, match="control has 63 windows, the others 64"):
        recovered_fraction_interval(converted, uptrained, original, control[:63])


def test_bootstrap_ratio_of_two_paired_changes():
    rng = np.random.default_rng(3)
    base = rng.normal(2.0, 0.5, 16)  # each window's own difficulty, shared by the three methods
    ref = base + 0.01 + rng.normal(0, 0.002, 16)
    five = base + 0.05 + rng.normal(0, 0.002, 16)
    ratio, low, high = bootstrap_ratio(five, ref, base)
    assert ratio == pytest.approx((five - base).mean() / (ref - base).mean())
    assert low < ratio < high and 3.5 < low and high < 7  # the shared difficulty cancels: a tight interval
    assert bootstrap_ratio(five, ref, base) == (ratio, low, high)  # seeded
    with pytest.raises(ValueError, match="reference"):
        bootstrap_ratio(five, base, base)
    with pytest.raises(ValueError, match="baseline"):
        bootstrap_ratio(five, ref, base[:5])


def test_bootstrap_mean_on_a_known_case():
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 0.5, 400)
    mean, se, low, high = bootstrap_mean(x)
    assert mean == x.mean()
    assert se == pytest.approx(x.std() / math.sqrt(len(x)), rel=0.1)  # the textbook standard error of a mean
    assert low == pytest.approx(mean - 1.96 * se, abs=0.3 * se)  # close to the normal interval for 400 values
    assert high == pytest.approx(mean + 1.96 * se, abs=0.3 * se)
    assert bootstrap_mean(x) == (mean, se, low, high)  # seeded
    assert bootstrap_mean([3.0, 3.0, 3.0]) == (3.0, 0.0, 3.0, 3.0)  # a model against itself


def test_paired_differences_cancel_each_windows_difficulty():
    rng = np.random.default_rng(2)
    base = rng.normal(3.0, 1.0, 50)  # hard and easy windows
    other = base + 0.1 + rng.normal(0, 0.01, 50)  # every window 0.1 worse
    _, se_alone, _, _ = bootstrap_mean(other)
    delta, se_paired, d_low, d_high = bootstrap_mean(other, base)
    assert delta == pytest.approx(0.1, abs=0.01) and d_low < 0.1 < d_high
    assert se_paired < se_alone / 20


@pytest.mark.parametrize(("values", "needle"), [([1.0], "at least 2"), ([[1.0, 2.0]], "1-D"),
                                                ([1.0, float("nan")], "non-finite value at window 1")])
def test_bootstrap_refuses_what_it_cannot_resample(values, needle):
    with pytest.raises(ValueError, match=needle):
        bootstrap_mean(values)


def _rows():
    """A hand-made conversion table in the command's format (only the columns the readers use)."""
    def r(condition, method, draw, steps, nll, rec=float("nan")):
        return {"condition": condition, "n_kv_heads": 3 if method == "none" else 1, "method": method, "draw": draw,
                "uptrain_steps": steps, "val_nll": nll, "se": 0.05, "ci_low": nll - 0.1, "ci_high": nll + 0.1,
                "recovered_fraction": rec, "recovered_ci_low": rec - 0.02, "recovered_ci_high": rec + 0.02}
    return [r("original (3 KV heads)", "none", "", 0, 2.5), r("MQA by mean", "mean", "", 0, 10.4),
            r("MQA by first", "first", "", 0, 14.8), r("MQA by random, draw 0", "random", 0, 0, 14.2),
            r("MQA by random, draw 1", "random", 1, 0, 14.0), r("MQA by random, draw 2", "random", 2, 0, 14.4),
            r("MQA by mean, uptrained", "mean", "", 30, 5.3, 0.64),
            r("MQA by first, uptrained", "first", "", 30, 6.1, 0.7),
            r("MQA by random, draw 0, uptrained", "random", 0, 30, 5.6, 0.72),
            r("MQA by random, draw 1, uptrained", "random", 1, 30, 5.9, 0.7),
            r("MQA by random, draw 2, uptrained", "random", 2, 30, 5.9, 0.71),
            r("original, uptrained the same way (control)", "none", "", 30, 2.4)]


def test_methods_are_ranked_after_uptraining_with_random_as_the_mean_of_its_draws():
    ranked = rank_methods(_rows())
    assert [r["method"] for r in ranked] == ["mean", "random", "first"]
    random = ranked[1]
    assert random["draws"] == 3 and random["val_nll"] == pytest.approx(5.8)
    assert (random["draw_min"], random["draw_max"]) == (5.6, 5.9) and math.isnan(random["se"])
    assert ranked[0]["se"] == 0.05
    line = ranking_line(_rows())
    assert "mean 5.300 (se 0.050) < random 5.800 (mean of 3 draws, 5.600 to 5.900) < first 6.100" in line


def test_the_paper_budget_is_five_percent_of_two_trillion_tokens():
    assert PAPER_UPTRAIN_TOKENS == 100_000_000_000


def test_plot_draws_before_and_after_bars_for_every_model():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = plot_conversion(_rows(), vocab_size=49152)
    assert len(ax.patches) == 2 * 6  # original (+control), mean, first, three random draws
    assert len(ax.get_xticklabels()) == 6
    assert any(line.get_ydata()[0] == pytest.approx(math.log(49152)) for line in ax.get_lines())
    plt.close(ax.figure)


@pytest.fixture(scope="module")
def smollm():
    from gqa_lib.models.smollm import load_smollm

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
