"""The machine's ceilings (gqa_lib.experiments.machine): one last-level-cache reader, the read bandwidth and
matrix-multiply peak they are measured as, the flush, and the clocks."""

import pytest
import torch

from gqa_lib.experiments.machine import (
    FALLBACK_LLC_BYTES,
    CacheFlusher,
    RotatingBuffers,
    bandwidth_buffer_bytes,
    clock_for,
    last_level_cache,
    measure_decode_gemm,
    measure_kernel_in_cache,
    measure_matmul_peak,
    measure_read_bandwidth,
    measure_stream_bandwidth,
    parse_cache_size,
    stream_read,
    stream_view,
)


@pytest.mark.parametrize("text, size", [("307200K", 307200 * 1024), ("2048K", 2 * 2**20), ("1M", 2**20),
                                        ("32M", 32 * 2**20), ("512", 512)])
def test_cache_sizes_parse_as_sysfs_writes_them(text, size):
    assert parse_cache_size(text + "\n") == size


@pytest.mark.parametrize("text", ["big", "", "12T", "1.5M"])
def test_a_size_sysfs_would_not_write_is_named(text):
    with pytest.raises(ValueError, match=repr(text)):
        parse_cache_size(text)


def _sysfs(tmp_path, entries, with_type=True):
    for i, (level, kind, size) in enumerate(entries):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        if with_type:
            (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    return tmp_path


@pytest.mark.parametrize("with_type", [True, False])  # some kernels write no type file
def test_last_level_cache_is_the_highest_level_data_cache(tmp_path, with_type):
    where = _sysfs(tmp_path, [(1, "Data", "48K"), (1, "Instruction", "32K"), (2, "Unified", "2048K"),
                              (3, "Unified", "307200K")], with_type)
    llc = last_level_cache(where)
    assert llc["bytes"] == 307200 * 1024 and llc["level"] == 3 and llc["source"].endswith("index3/size")


def test_an_instruction_cache_is_never_the_last_level_data_cache(tmp_path):
    where = _sysfs(tmp_path, [(1, "Data", "48K"), (2, "Instruction", "4096K")])
    assert last_level_cache(where)["bytes"] == 48 * 1024


def test_without_sysfs_the_fallback_says_so(tmp_path):
    llc = last_level_cache(tmp_path / "missing")
    assert llc == {"bytes": FALLBACK_LLC_BYTES, "level": 0, "source": "fallback"}


def test_the_bandwidth_buffer_is_whole_megabytes_of_four_caches():
    assert bandwidth_buffer_bytes(307200 * 1024) == 1_259_000_000  # 4 x 314,572,800 rounded up to whole MB
    with pytest.raises(ValueError, match="llc_bytes"):
        bandwidth_buffer_bytes(0)


def test_bandwidth_and_matmul_measurements_report_rates(single_thread):
    bw = measure_read_bandwidth(8 * 10**6, reps=3, warmup=1, clock="cpu")
    assert bw["bytes"] == 8 * 10**6 and bw["bytes_per_s"] > 1e8 and bw["clock"] == "cpu"
    mm = measure_matmul_peak(4, 32, 64, reps=2, warmup=1)
    assert mm["flops"] == 2 * 4 * 32 * 64 and mm["flops_per_s"] == pytest.approx(mm["flops"] / mm["median_s"])
    assert measure_matmul_peak(2, 8, 8, torch.bfloat16, reps=1, warmup=0)["dtype"] == "bf16"
    with pytest.raises(ValueError, match="m"):
        measure_matmul_peak(0, 32, 64)
    with pytest.raises(ValueError, match="clock='gpu'"):
        measure_read_bandwidth(8 * 10**6, clock="gpu")


def test_the_flush_reads_the_bytes_it_was_given_and_one_thread_is_timed_by_cpu_time():
    assert CacheFlusher(4 * 2**20).nbytes == 4 * 2**20
    with pytest.raises(ValueError, match="nbytes"):
        CacheFlusher(0)
    assert clock_for(1) == "cpu" and clock_for(2) == "wall"


def test_the_stream_probe_reads_the_bytes_of_both_tensors_as_float32():
    k, v = torch.randn(2, 3, 8, 4), torch.randn(2, 3, 8, 4)
    torch.testing.assert_close(stream_read(k, v), (k * v).sum(), rtol=1e-5, atol=1e-4)
    kb = k.bfloat16()
    view = stream_view(kb)
    assert view.dtype == torch.float32 and view.numel() == kb.numel() // 2 and view.data_ptr() == kb.data_ptr()
    with pytest.raises(ValueError, match="not contiguous"):
        stream_view(k.transpose(1, 2))
    with pytest.raises(ValueError, match="the two streams must be the same size"):
        stream_read(k, v[:1])


def test_rotating_buffers_hand_out_copies_in_turn_and_hold_the_bytes_asked_for():
    k, v = torch.randn(1, 2, 16, 8), torch.randn(1, 2, 16, 8)
    sets = RotatingBuffers((k, v), min_bytes=5 * (k.nbytes + v.nbytes) - 1)
    assert sets.n_sets == 5 and sets.nbytes == 5 * (k.nbytes + v.nbytes)
    seen = [sets() for _ in range(6)]
    assert seen[0][0] is k and seen[5][0] is k  # the first set is the original, and it comes round again
    assert len({s[0].data_ptr() for s in seen[:5]}) == 5  # five different memories
    torch.testing.assert_close(seen[3][1], v)
    assert RotatingBuffers((k, v), min_bytes=1).n_sets == 2  # never fewer than two
    with pytest.raises(ValueError, match="min_bytes"):
        RotatingBuffers((k, v), 0)


def test_stream_bandwidth_gemm_blocks_and_kernel_in_cache_report_rates(single_thread):
    bw = measure_stream_bandwidth(8 * 10**6, reps=3, warmup=1, clock="cpu")
    assert bw["bytes"] == 8 * 10**6 and bw["bytes_per_s"] > 1e8 and bw["clock"] == "cpu"
    gemm = measure_decode_gemm(4, head_dim=16, block=32, blocks=2, reps=2, warmup=1)
    assert gemm["flops"] == 4 * 2 * 4 * 32 * 16 and gemm["shape"] == "(4 x 16) @ (16 x 32), then (4 x 32) @ (32 x 16)"
    kern = measure_kernel_in_cache(4, head_dim=16, seq_len=64, reps=2, warmup=1, dtype=torch.bfloat16)
    assert kern["flops"] == 4 * 4 * 64 * 16 and kern["flops_per_s"] > 0 and kern["dtype"] == "bf16"
    with pytest.raises(ValueError, match="rows"):
        measure_decode_gemm(0)
