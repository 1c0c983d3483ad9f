"""The decode benchmark's implementations compute the same attention, and its roofline arithmetic is right."""

from pathlib import Path

import pytest
import torch
from command_probe import run_mains

from gqa_lib.core.attention import expand_kv
from gqa_lib.experiments.attention_roofline import (
    IMPLEMENTATIONS,
    SAME_CALL_AT_MHA,
    VARIANTS,
    ExpandInto,
    benchmark_case,
    cache_bytes_read,
    check_agree,
    check_targets,
    decode_flops,
    make_decode_inputs,
    repeat_kv,
    roofline,
)

pytestmark = pytest.mark.usefixtures("single_thread")
ALL = {**IMPLEMENTATIONS, **VARIANTS}
ROOT = Path(__file__).resolve().parent.parent


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


def test_repeat_kv_copies_except_with_one_kv_head_where_it_is_a_view():
    x = torch.randn(2, 3, 5, 4)
    y = repeat_kv(x, 4)
    torch.testing.assert_close(y, x.repeat_interleave(4, dim=1))
    assert y.data_ptr() != x.data_ptr() and repeat_kv(x, 1) is x
    one = torch.randn(1, 1, 5, 4)
    view = repeat_kv(one, 8)  # MQA: the reshape needs no copy, every head is the same memory (stride 0)
    assert view.data_ptr() == one.data_ptr() and view.stride(1) == 0
    torch.testing.assert_close(view, one.repeat_interleave(8, dim=1))


def test_expand_into_reuses_its_buffer_and_releases_it():
    fn = ExpandInto()
    q, k, v = make_decode_inputs(8, 2, 16, head_dim=8)
    fn(q, k, v)
    (kb, _), = fn._buffers.values()
    ptr = kb.data_ptr()
    q2, k2, v2 = make_decode_inputs(8, 2, 16, head_dim=8, seed=1)
    torch.testing.assert_close(fn(q2, k2, v2), reference_decode(q2, k2, v2), atol=1e-5, rtol=1e-5)
    assert next(iter(fn._buffers.values()))[0].data_ptr() == ptr  # same memory, new contents
    fn(*make_decode_inputs(8, 4, 16, head_dim=8))  # another shape replaces the buffers
    assert len(fn._buffers) == 1
    fn.release()
    assert not fn._buffers


def test_check_agree_catches_a_wrong_implementation():
    q, k, v = make_decode_inputs(4, 2, 9, head_dim=8)
    wrong = lambda q, k, v: IMPLEMENTATIONS["gqa_lib"](q, k.flip(1), v.flip(1))  # noqa: E731  KV heads swapped
    with pytest.raises(AssertionError, match="wrong disagrees with gqa_lib"):
        check_agree(q, k, v, {"gqa_lib": IMPLEMENTATIONS["gqa_lib"], "wrong": wrong})


def test_bytes_flops_and_arithmetic_intensity():
    assert cache_bytes_read(8, 16384, 128, torch.float32) == 2 * 8 * 16384 * 128 * 4  # 134 MB
    assert cache_bytes_read(1, 1024, 128, torch.bfloat16, batch=3) == 2 * 3 * 1024 * 128 * 2
    flops = decode_flops(32, 16384, 128)
    assert flops == 4 * 32 * 16384 * 128
    intensity = {kv: flops / cache_bytes_read(kv, 16384, 128, torch.float32) for kv in (32, 8, 1)}
    assert intensity == {32: 0.5, 8: 2.0, 1: 16.0}  # 2 * group_size / 4 bytes


def test_roofline_takes_the_slower_of_memory_and_compute():
    mem = roofline(nbytes=10e9, flops=1e9, read_bytes_per_s=10e9, peak_flops_per_s=100e9)
    assert mem["bound_s"] == pytest.approx(1.0) and mem["limit"] == "memory"
    comp = roofline(nbytes=1e9, flops=100e9, read_bytes_per_s=10e9, peak_flops_per_s=50e9)
    assert comp["bound_s"] == pytest.approx(2.0) and comp["limit"] == "compute" and comp["memory_s"] == 0.1


def test_benchmark_case_rows_carry_the_roofline_and_skip_calls_identical_at_mha():
    ceilings = {"read_bytes_per_s": 10e9, "peak": {"fp32": 100e9}}
    rows = benchmark_case(4, 2, 64, head_dim=8, reps=3, warmup=1, clock="cpu", ceilings=ceilings)
    assert [r["impl"] for r in rows] == list(IMPLEMENTATIONS)
    for r in rows:
        assert r["cache_bytes_read"] == 2 * 2 * 64 * 8 * 4 and r["kind"] == "GQA" and r["clock"] == "cpu"
        assert r["flops"] == 4 * 4 * 64 * 8 and r["flop_per_byte"] == pytest.approx(r["flops"] / r["cache_bytes_read"])
        assert r["median_ms"] > 0 and r["q1_ms"] <= r["median_ms"] <= r["q3_ms"] and r["max_abs_diff"] < 1e-5
        bound = max(r["cache_bytes_read"] / 10e9, r["flops"] / 100e9) * 1e3
        assert r["bound_ms"] == pytest.approx(bound, rel=1e-3)
        assert r["pct_of_bound"] == pytest.approx(100 * bound / r["median_ms"], rel=1e-2, abs=0.06)
    mha = benchmark_case(4, 4, 64, head_dim=8, reps=1, warmup=0, clock="cpu")
    assert {r["impl"] for r in mha} == set(IMPLEMENTATIONS) - set(SAME_CALL_AT_MHA)
    with pytest.raises(ValueError, match="clock='gpu'"):
        benchmark_case(4, 2, 64, head_dim=8, reps=1, clock="gpu")


def test_targets_read_percentages_and_the_sdpa_ratio():
    def row(impl, kv, ms, pct):
        return {"impl": impl, "n_kv_heads": kv, "seq_len": 16384, "dtype": "fp32", "threads": 1, "median_ms": ms,
                "pct_of_bound": pct}

    rows = [row("gqa_lib", 32, 60.0, 90.0), row("gqa_lib", 8, 20.0, 75.0), row("sdpa", 8, 50.0, 30.0),
            {**row("gqa_lib", 8, 10.0, 99.0), "threads": 2}]
    t = {r["target"]: r for r in check_targets(rows)}
    assert t["gqa_lib at 32 KV heads: % of roofline bound"]["met"]
    assert not t["gqa_lib at 8 KV heads: % of roofline bound"]["met"]  # 75 < 80; the 2-thread row is not read
    assert t["gqa_lib vs SDPA(enable_gqa) at 8 KV heads: speed-up"]["value"] == pytest.approx(2.5)


BAD_OPTIONS = [
    (["--kv-heads", "3"], "--kv-heads 3 must be at least 1 and divide --n-heads=32"),
    (["--flush-factor", "1.5"], "--flush-factor=1.5 must be at least 2"),
    (["--bandwidth-factor", "2"], "--bandwidth-factor=2.0 must be at least 4"),
    (["--dtypes", "fp8"], "--dtypes 'fp8' is not known"),
    (["--seq-lens", "0"], "--seq-lens 0 must be at least 1"),
    (["--threads", "0"], "--threads 0 must be at least 1"),
    (["--reps", "0"], "--reps=0 must be at least 1"),
]


@pytest.fixture(scope="module")
def refused(tmp_path_factory):
    """What the command did with each bad option: one fresh process runs its main() for all of them."""
    out = str(tmp_path_factory.mktemp("decode") / "d.csv")
    return run_mains([(ROOT / "benchmarks" / "decode_attention.py", [*option, "--out", out])
                      for option, _ in BAD_OPTIONS])


@pytest.mark.parametrize("case", range(len(BAD_OPTIONS)), ids=[m for _, m in BAD_OPTIONS])
def test_decode_command_checks_every_option_before_any_work(case, refused):
    message, result = BAD_OPTIONS[case][1], refused[case]
    assert result["code"] == 2 and message in result["stderr"], result["stderr"]
    assert "last-level cache" not in result["stdout"]  # stopped before measuring anything
