"""Scoring the cache-shrinking methods: the loss is read where promised, rows carry what the chart and widget need."""

import pytest
import torch

from gqa_lib.experiments.cache_pareto import (
    LATENT,
    Method,
    best_within,
    default_methods,
    mark_pareto,
    policy_of,
    score_methods,
    scored_bytes_per_token,
    summarise,
    text_losses,
    widget_methods,
    window_losses_after,
)
from gqa_lib.experiments.cache_shrink import CachePolicy
from gqa_lib.experiments.results import RESULTS_DIR, read_results
from gqa_lib.experiments.token_eviction import H2O, OracleTopK


class TinyDecoder(torch.nn.Module):
    """A stand-in with SmolLMDecoder's interface: attention layers, hidden_states, lm_head, with_attention."""

    def __init__(self, attention, vocab=11, d=48):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, d)
        self.attention = torch.nn.ModuleList(attention)
        self.lm_head = torch.nn.Linear(d, vocab)

    def hidden_states(self, ids):
        x = self.embed(ids)
        for a in self.attention:
            x = x + a(x)
        return x

    def forward(self, ids):
        return self.lm_head(self.hidden_states(ids))

    def with_attention(self, attention):
        new = TinyDecoder(attention)
        new.embed, new.lm_head = self.embed, self.lm_head
        return new


def _layers(n=2):
    from gqa_lib.core.attention import GroupedQueryAttention

    torch.manual_seed(1)
    return [GroupedQueryAttention(48, 6, 2, head_dim=64).eval() for _ in range(n)]


@torch.no_grad()
def test_the_loss_is_scored_after_score_from_only():
    dec = TinyDecoder(_layers())
    ids = torch.randint(0, 11, (2, 20), generator=torch.Generator().manual_seed(0))
    logits = dec(ids)
    want = torch.stack([torch.nn.functional.cross_entropy(logits[i, 8:-1], ids[i, 9:]) for i in range(2)])
    torch.testing.assert_close(window_losses_after(dec, ids, 8).float(), want)
    with pytest.raises(ValueError, match="score_from=19"):
        window_losses_after(dec, ids, 19)


@torch.no_grad()
def test_rows_hold_bytes_intervals_and_the_front():
    dec = TinyDecoder(_layers())
    ids = torch.randint(0, 11, (4, 24), generator=torch.Generator().manual_seed(1))
    methods = [Method("original", "original"), Method("int4", "quantized", policy=CachePolicy(bits=4)),
               Method("window 4 + 1 sink", "sliding window", policy=CachePolicy(window=4, sinks=1)),
               Method("pairs", "cross-layer", share_every=2)]
    scores = score_methods(dec, {"original": list(dec.attention)}, methods, ids, score_from=12)
    rows = summarise(scores, "original")
    by = {r["method"]: r for r in rows}
    assert text_losses(by["int4"]) == pytest.approx(scores["int4"]["losses"].tolist(), abs=1e-6)  # text by text
    assert by["original"]["delta_nll"] == 0 and by["original"]["bytes_vs_original"] == 1
    assert by["pairs"]["kv_bytes_per_token"] == by["original"]["kv_bytes_per_token"] / 2
    assert by["int4"]["kv_bytes_per_token"] == 2 * 256 * (0.5 + 4 / 64)  # 2 layers x 2 x 2 KV heads x 64
    # a window's bytes are averaged over the scored predictions (contexts 13..23), not counted at the end (24)
    held = sum(min(n, 5) for n in range(13, 24)) / sum(range(13, 24))
    assert by["window 4 + 1 sink"]["bytes_vs_original"] == round(held, 4)
    for r in rows:  # the widget recomputes every row's bytes from its parameters
        assert scored_bytes_per_token(r) == pytest.approx(r["kv_bytes_per_token"], abs=0.05)
        assert r["ci_low"] <= r["val_nll"] <= r["ci_high"]
    assert by["window 4 + 1 sink"]["pareto"] or by["pairs"]["pareto"]  # the smallest cache is always on the front


def test_the_control_is_not_a_method_on_the_front():
    rows = [{"method": "original", "source": "original", "kv_bytes_per_token": 10, "val_nll": 2.0},
            {"method": "control", "source": "control", "kv_bytes_per_token": 10, "val_nll": 1.9},
            {"method": "small", "source": "original", "kv_bytes_per_token": 5, "val_nll": 2.5}]
    mark_pareto(rows)
    assert [r["pareto"] for r in rows] == [True, False, True]
    assert best_within(rows, 7)["method"] == "small" and best_within(rows, 4) is None
    with pytest.raises(ValueError, match="budget"):
        best_within(rows, -1)


@torch.no_grad()
def test_eviction_rows_count_the_tokens_held_where_the_loss_is_scored():
    dec = TinyDecoder(_layers())
    ids = torch.randint(0, 11, (3, 24), generator=torch.Generator().manual_seed(2))
    methods = [Method("original", "original"), Method("h2o all", "token eviction", eviction=H2O(24, 0)),
               Method("h2o 6", "token eviction", eviction=H2O(6, 3)),
               Method("oracle 4", "token eviction", eviction=OracleTopK(4, "kv_sum")),
               Method("latent", LATENT, "original")]
    rows = {r["method"]: r for r in summarise(score_methods(dec, {"original": list(dec.attention)}, methods, ids, 12),
                                              "original", data_tokens={"calibration": 100})}
    assert rows["h2o all"]["kv_bytes_per_token"] == rows["original"]["kv_bytes_per_token"]
    assert rows["h2o all"]["val_nll"] == pytest.approx(rows["original"]["val_nll"], abs=1e-6)
    assert rows["h2o 6"]["kv_bytes_per_token"] == pytest.approx(
        rows["original"]["kv_bytes_per_token"] * 6 * 11 / sum(range(13, 24)), abs=0.05)
    oracle = rows["oracle 4"]
    assert oracle["kv_bytes_per_token"] == rows["original"]["kv_bytes_per_token"]  # stores every token
    assert oracle["read_bytes_per_token"] == pytest.approx(oracle["kv_bytes_per_token"] * 4 * 11 / sum(range(13, 24)),
                                                           abs=0.05)
    assert (rows["original"]["data"], rows["h2o 6"]["data"], rows["original"]["data_tokens"]) == ("none", "none", 0)
    with pytest.raises(ValueError, match="evicts tokens"):
        policy_of(oracle)
    with pytest.raises(ValueError, match="eviction method"):
        Method("x", "token eviction", policy=CachePolicy(bits=4), eviction=H2O(4, 2))


def test_each_method_names_the_data_it_was_given():
    by = {m.name: m.data for m in default_methods()}
    assert by["original (3 KV heads, bf16)"] == by["int4 per channel"] == by["H2O 256 (per KV head, sum)"] == "none"
    assert by["latent rank 128"] == by["FP8 E4M3, scale per tensor"] == "calibration"
    assert by["latent rank 256 + FP8 E4M3 (scale per 128)"] == "calibration"  # the latent's SVD, not its scales
    assert by["1 KV head, mean-pooled, uptrained"] == by["original, same uptraining (control)"] == "uptraining"
    assert by["1 KV head, mean-pooled"] == "none"


def test_default_methods_cover_every_family_of_the_issue():
    families = {m.family for m in default_methods()}
    assert families == {"original", "fewer KV heads", LATENT, "sliding window", "token eviction", "quantized",
                        "cross-layer", "combined"}
    widget = widget_methods(default_methods())
    assert all(m.eviction is None for m in widget) and widget[0].name.startswith("original (")
    for r in [{"method": m.name, "numbers_per_token_layer": 384, "caching_layers": 30, "bits": 8 if m.policy.fp8 else
               (m.policy.bits or 16), "axis": m.policy.axis, "window": m.policy.window or 0, "sinks": m.policy.sinks,
               "block": 64, "newest_bf16": m.policy.newest_bf16, "fp8": m.policy.fp8 or "",
               "fp8_scale": m.policy.fp8_scale if m.policy.fp8 else "", "evicts": False} for m in widget]:
        assert policy_of(r) == next(m.policy for m in widget if m.name == r["method"]), r["method"]
    names = [m.name for m in default_methods()]
    assert len(names) == len(set(names))
    with pytest.raises(ValueError, match="family"):
        Method("x", "pruning")


def test_the_shipped_table_has_every_method_and_its_header():
    table = read_results(RESULTS_DIR / "cache_pareto.csv")
    main, second = sorted(table["context"].unique())
    assert sorted(table.loc[table["context"] == main, "method"]) == sorted(m.name for m in default_methods())
    assert sorted(table.loc[table["context"] == second, "method"]) == sorted(
        m.name for m in widget_methods(default_methods()))
    assert (table.loc[table["context"] == main, "texts"] >= 16).all()
    assert (table["delta_ci_low"] <= table["delta_nll"] + 1e-9).all()
    assert (table["delta_nll"] <= table["delta_ci_high"] + 1e-9).all()
    assert (table.loc[table["method"].str.startswith("original ("), "kv_bytes_per_token"] == 23040).all()
    for r in table[table["evicts"].astype(str) != "True"].to_dict("records"):
        assert scored_bytes_per_token(r) == pytest.approx(r["kv_bytes_per_token"], abs=0.05), r["method"]
    for r in table.to_dict("records"):  # each text's loss, for paired comparisons: as many as texts, same mean
        losses = text_losses(r)
        assert len(losses) == r["texts"] and sum(losses) / len(losses) == pytest.approx(r["val_nll"], abs=1e-5)


def test_the_controls_error_bar_clears_the_originals_marker_on_the_chart():
    """The control (the original, uptrained) shares the original's bytes; drawn beside it, its interval, which
    spans 0, must not run through the original's marker, or the chart reads as one point with a long bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gqa_lib.pictures.cache_pareto import plot_pareto

    table = read_results(RESULTS_DIR / "cache_pareto.csv")
    main = table[table["context"] == table["context"].min()]
    fig, ax = plt.subplots(figsize=(11, 7.5))
    plot_pareto(main, ax=ax)
    fig.canvas.draw()
    original = main[main["source"] == "original"].iloc[0]
    control = main[main["source"] == "control"].iloc[0]
    assert control["delta_ci_low"] < original["delta_nll"] < control["delta_ci_high"]  # the bar would cross it
    from matplotlib.collections import LineCollection

    bars = [c for c in ax.collections if isinstance(c, LineCollection) and len(c.get_segments()) == 1]  # 1 point
    bar_x = {round(float(c.get_segments()[0][0][0]), 3) for c in bars}
    shifted = [x for x in bar_x if x > original["kv_bytes_per_token"] * 1.001]
    assert shifted, "the control's error bar was not drawn right of the original's bytes"
    to_px = ax.transData.transform
    gap = to_px((min(shifted), 0))[0] - to_px((original["kv_bytes_per_token"], 0))[0]
    marker = 7 * fig.dpi / 72  # ms=7 points: the diamond's width, in pixels, edge line included with margin
    assert gap > marker + 3, f"the control's bar is {gap:.1f} px from the original's centre (marker {marker:.1f} px)"
    plt.close(fig)
