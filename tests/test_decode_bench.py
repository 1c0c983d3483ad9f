"""The decode benchmark's implementations compute the same attention, and its arithmetic is right."""

import pytest
import torch

from gqa_lib.attention import expand_kv
from gqa_lib.decode_bench import (
    IMPLEMENTATIONS,
    VARIANTS,
    benchmark_case,
    cache_bytes_read,
    check_agree,
    check_targets,
    make_decode_inputs,
    measure_read_bandwidth,
    repeat_kv,
)

pytestmark = pytest.mark.usefixtures("single_thread")
ALL = {**IMPLEMENTATIONS, **VARIANTS}


def reference_decode(q, k, v):
    """Textbook attention of one query per head, each query head against its own copy of its KV head."""
    g = q.shape[1] // k.shape[1]
    k_all, v_all = expand_kv(k, g), expand_kv(v, g)  # (batch, n_heads, seq, head_dim)
    w = torch.softmax((q @ k_all.transpose(-2, -1)) / q.shape[-1] ** 0.5, dim=-1)
    return w @ v_all


@pytest.mark.parametrize("n_kv_heads", [8, 4, 2, 1])
@pytest.mark.parametrize("name", sorted(ALL))
def test_every_implementation_matches_textbook_attention(name, n_kv_heads):
    q, k, v = make_decode_inputs(8, n_kv_heads, 37, head_dim=16, seed=n_kv_heads)
    out = ALL[name](q, k, v)
    assert out.shape == (1, 8, 1, 16)
    torch.testing.assert_close(out, reference_decode(q, k, v), atol=1e-5, rtol=1e-5)


def test_repeat_kv_is_repeat_interleave_and_copies():
    x = torch.randn(2, 3, 5, 4)
    y = repeat_kv(x, 4)
    torch.testing.assert_close(y, x.repeat_interleave(4, dim=1))
    assert y.data_ptr() != x.data_ptr() and repeat_kv(x, 1) is x


def test_check_agree_catches_a_wrong_implementation():
    q, k, v = make_decode_inputs(4, 2, 9, head_dim=8)
    wrong = lambda q, k, v: IMPLEMENTATIONS["gqa_lib"](q, k.flip(1), v.flip(1))  # noqa: E731  KV heads swapped
    with pytest.raises(AssertionError, match="wrong disagrees with gqa_lib"):
        check_agree(q, k, v, {"gqa_lib": IMPLEMENTATIONS["gqa_lib"], "wrong": wrong})


def test_cache_bytes_read_counts_k_and_v():
    assert cache_bytes_read(8, 16384, 128, torch.float32) == 2 * 8 * 16384 * 128 * 4  # 134 MB
    assert cache_bytes_read(1, 1024, 128, torch.bfloat16, batch=3) == 2 * 3 * 1024 * 128 * 2


def test_benchmark_case_rows_are_complete():
    rows = benchmark_case(4, 2, 64, head_dim=8, reps=3, warmup=1, clock="cpu")
    assert [r["impl"] for r in rows] == list(IMPLEMENTATIONS)
    for r in rows:
        assert r["cache_bytes_read"] == 2 * 2 * 64 * 8 * 4 and r["kind"] == "GQA" and r["clock"] == "cpu"
        assert r["median_ms"] > 0 and r["q1_ms"] <= r["median_ms"] <= r["q3_ms"] and r["max_abs_diff"] < 1e-5
    with pytest.raises(ValueError, match="clock='gpu'"):
        benchmark_case(4, 2, 64, head_dim=8, reps=1, clock="gpu")


def test_bandwidth_measurement_reports_bytes_per_second():
    bw = measure_read_bandwidth(8 * 10**6, reps=3, warmup=1)
    assert bw["bytes"] == 8 * 10**6 and bw["bytes_per_s"] > 1e8 and bw["cpu_bytes_per_s"] > 0


def test_targets_are_ratios_of_medians():
    def row(impl, kv, ms):
        nbytes = cache_bytes_read(kv, 16384, 128, torch.float32)
        return {"impl": impl, "n_kv_heads": kv, "seq_len": 16384, "median_ms": ms, "effective_GBps": nbytes / ms / 1e6}

    rows = [row("gqa_lib", 32, 60.0), row("gqa_lib", 8, 20.0), row("gqa_lib", 1, 5.0), row("expand", 8, 50.0),
            row("sdpa", 32, 60.0), row("sdpa", 8, 50.0), row("sdpa", 1, 4.0)]
    t = {r["target"]: r for r in check_targets(rows, read_bytes_per_s=10e9)}
    assert t["gqa_lib: MHA -> 8 KV heads speed-up"]["value"] == pytest.approx(3.0)
    assert t["gqa_lib: MHA -> MQA speed-up"]["value"] == pytest.approx(12.0)
    assert t["gqa_lib: speed-up over expand-then-attend at 8 KV heads"]["value"] == pytest.approx(2.5)
    assert not t["gqa_lib: speed vs PyTorch SDPA(enable_gqa) at 1 KV heads"]["met"]  # 0.8 < 0.9
    mha_bw = t["gqa_lib: effective / read bandwidth at 32 KV heads"]
    assert mha_bw["value"] == pytest.approx(2 * 32 * 16384 * 128 * 4 / 0.060 / 10e9) and mha_bw["met"]
