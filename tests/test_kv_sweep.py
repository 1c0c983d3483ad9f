"""Fair comparison of tiny LMs: shared initial weights, same batches, seeded, and the paired summary."""

import math

import pytest
import torch

from gqa_lib.experiments.kv_sweep import (
    TrainConfig,
    init_model,
    kv_bytes_per_token,
    lr_at,
    pairwise_tests,
    summarize_sweep,
    train_lm,
)
from gqa_lib.experiments.stats import holm, t_975
from gqa_lib.models.tiny_lm import TinyLMConfig

pytestmark = pytest.mark.usefixtures("single_thread")
SMALL = dict(d_model=32, n_layers=1, n_heads=4, d_ff=64, max_len=16)


def test_variants_of_one_seed_share_every_weight_they_can():
    mha = init_model(TinyLMConfig(**SMALL, n_kv_heads=4), seed=7)
    mqa = init_model(TinyLMConfig(**SMALL, n_kv_heads=1), seed=7)
    a, b = mha.state_dict(), mqa.state_dict()
    for name, t in b.items():
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            assert t.shape == (8, 32)  # 1 KV head of head_dim 8
            torch.testing.assert_close(t, a[name][:8])  # MHA's first KV head
        else:
            torch.testing.assert_close(t, a[name], msg=name)
    other_seed = init_model(TinyLMConfig(**SMALL, n_kv_heads=4), seed=8).state_dict()
    assert not torch.equal(other_seed["blocks.0.attn.q_proj.weight"], a["blocks.0.attn.q_proj.weight"])


def test_init_leaves_the_global_random_state_alone():
    torch.manual_seed(0)
    want = torch.rand(3)
    torch.manual_seed(0)
    init_model(TinyLMConfig(**SMALL, n_kv_heads=2), seed=5)
    assert torch.equal(torch.rand(3), want)


def test_embedding_starts_small_so_the_first_loss_is_near_uniform():
    model = init_model(TinyLMConfig(**SMALL, n_kv_heads=4), seed=0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 256, (2, 2, 16), generator=g)  # inputs, and unrelated targets
    loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1))
    assert abs(loss.item() - math.log(256)) < 0.05  # TinyLM's own N(0, 1) embedding starts near 90


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3) == lr_at(10, cfg)
    assert lr_at(99, cfg) == pytest.approx(1e-4)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 99))


def test_training_is_deterministic_for_a_seed_and_learns():
    tokens = torch.tensor(list(b"the quick brown fox jumps over the lazy dog. " * 40), dtype=torch.uint8)
    cfg = TrainConfig(steps=30, warmup=3, batch=8, seq_len=16, lr=1e-2, eval_windows=16, eval_batch=8)
    model_cfg = TinyLMConfig(**SMALL, n_kv_heads=2)
    a = train_lm(model_cfg, cfg, tokens, tokens, seed=1)
    b = train_lm(model_cfg, cfg, tokens, tokens, seed=1)
    assert a["val_loss"] == b["val_loss"]
    assert a["val_loss"] < math.log(256) - 1  # a repeated sentence is easy


def test_bad_train_config_names_the_argument():
    with pytest.raises(ValueError, match="warmup=100"):
        TrainConfig(steps=100, warmup=100)
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)


def test_kv_bytes_per_token():
    cfg = TinyLMConfig(d_model=128, n_layers=2, n_heads=8, n_kv_heads=2)
    assert kv_bytes_per_token(cfg) == 2 * 2 * 2 * 16 * 4  # K and V, 2 layers, 2 heads, head_dim 16, fp32


def row(seed, kv, loss):
    return {"seed": seed, "n_heads": 8, "n_kv_heads": kv, "kv_bytes_per_token": 64 * kv, "val_loss": loss,
            "n_params": 1000 + 10 * kv}


def test_summary_pairs_each_variant_with_mha_seed_by_seed():
    mha = [1.00, 1.10, 0.90, 1.05]
    mqa = [1.02, 1.13, 0.91, 1.09]  # differences 0.02, 0.03, 0.01, 0.04
    rows = [row(s, 8, x) for s, x in enumerate(mha)] + [row(s, 1, x) for s, x in enumerate(mqa)]
    by_kv = {s["n_kv_heads"]: s for s in summarize_sweep(rows)}
    s = by_kv[1]
    assert s["diff_vs_mha_mean"] == pytest.approx(0.025)
    sd = math.sqrt(sum((d - 0.025) ** 2 for d in (0.02, 0.03, 0.01, 0.04)) / 3)
    assert s["diff_vs_mha_std"] == pytest.approx(sd)
    assert s["ci95_low"] == pytest.approx(0.025 - 3.1824 * sd / 2, abs=1e-6)  # t(0.975, 3 df) = 3.1824
    assert s["n_params"] == 1010 and s["params_vs_mha_pct"] == pytest.approx(100 * (1010 / 1080 - 1))
    assert s["n_worse"] == 4 and s["n_paired"] == 4
    assert s["val_loss_std"] > 5 * s["diff_vs_mha_std"]  # seed noise is large; pairing removes it
    assert by_kv[8]["diff_vs_mha_mean"] == 0


def test_summary_needs_an_mha_run():
    with pytest.raises(ValueError, match="no MHA run"):
        summarize_sweep([row(0, 2, 1.0), row(0, 1, 1.1)])


def test_t_quantiles_match_the_printed_tables():
    assert t_975(4) == pytest.approx(2.776, abs=5e-4) and t_975(9) == pytest.approx(2.262, abs=5e-4)
    assert t_975(22) == pytest.approx(2.074, abs=5e-4)  # a df the old hand-typed table did not hold
    with pytest.raises(ValueError, match="df"):
        t_975(0)


def test_holm_adjusts_step_down_and_keeps_order():
    # Worked example: p = 0.01, 0.04, 0.03, 0.005 -> sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1, running max.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == []


def test_pairwise_tests_cover_every_pair_with_scipys_paired_t():
    from scipy import stats

    mha = [1.00, 1.10, 0.90, 1.05]
    gqa = [1.01, 1.12, 0.90, 1.07]
    mqa = [1.03, 1.13, 0.94, 1.08]
    rows = ([row(s, 8, x) for s, x in enumerate(mha)] + [row(s, 2, x) for s, x in enumerate(gqa)]
            + [row(s, 1, x) for s, x in enumerate(mqa)])
    tests = {(t["n_kv_a"], t["n_kv_b"]): t for t in pairwise_tests(rows)}
    assert set(tests) == {(2, 8), (1, 8), (1, 2)}
    want = stats.ttest_rel(mqa, gqa)
    assert tests[1, 2]["t"] == pytest.approx(want.statistic) and tests[1, 2]["p"] == pytest.approx(want.pvalue)
    assert tests[1, 2]["mean_diff"] == pytest.approx(0.02)
    adjusted = holm([t["p"] for t in tests.values()])
    assert [t["p_holm"] for t in tests.values()] == pytest.approx(adjusted)
    assert all(t["resolved"] == (t["p_holm"] < 0.05) for t in tests.values())
    with pytest.raises(ValueError, match="share 1 seed"):
        pairwise_tests([row(0, 8, 1.0), row(0, 1, 1.1)])
