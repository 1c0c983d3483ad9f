"""Scoring the cache-shrinking methods: the loss is read where promised, rows carry what the chart and widget need."""

import pytest
import torch

from gqa_lib.experiments.cache_pareto import (
    Method,
    best_within,
    bytes_per_token_at,
    default_methods,
    mark_pareto,
    score_methods,
    summarise,
    window_losses_after,
)
from gqa_lib.experiments.cache_shrink import CachePolicy
from gqa_lib.experiments.results import RESULTS_DIR, read_results


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
    assert by["original"]["delta_nll"] == 0 and by["original"]["bytes_vs_original"] == 1
    assert by["pairs"]["kv_bytes_per_token"] == by["original"]["kv_bytes_per_token"] / 2
    assert by["int4"]["kv_bytes_per_token"] == 2 * 256 * (0.5 + 4 / 64)  # 2 layers x 2 x 2 KV heads x 64
    for r in rows:  # the widget recomputes every row's bytes from its parameters
        assert bytes_per_token_at(r, r["context"]) == pytest.approx(r["kv_bytes_per_token"], abs=0.05)
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


def test_default_methods_cover_every_family_of_the_issue():
    families = {m.family for m in default_methods()}
    assert families == {"original", "fewer KV heads", "latent (MLA)", "sliding window", "quantized", "cross-layer",
                        "combined"}
    names = [m.name for m in default_methods()]
    assert len(names) == len(set(names))
    with pytest.raises(ValueError, match="family"):
        Method("x", "pruning")


def test_the_shipped_table_has_every_method_and_its_header():
    table = read_results(RESULTS_DIR / "cache_pareto.csv")
    assert sorted(table["method"]) == sorted(m.name for m in default_methods())
    assert (table["delta_ci_low"] <= table["delta_nll"] + 1e-9).all()
    assert (table["delta_nll"] <= table["delta_ci_high"] + 1e-9).all()
    assert table.loc[table["method"].str.startswith("original ("), "kv_bytes_per_token"].item() == 23040
