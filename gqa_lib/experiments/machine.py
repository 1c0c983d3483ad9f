"""The machine's ceilings, one home for all of them: last-level cache, read bandwidth, matrix-multiply peak,
the cache flush and the clocks that time a run.

A measurement is compared with the ceiling measured in the same run (``measure_ceilings``): the roofline of
notebook 06 (``experiments.attention_roofline``) and SmolLM2's tokens per second (``experiments.model_decode_speed``)
both read them from here. The last-level cache comes from Linux's sysfs (``last_level_cache``); elsewhere a
fallback size is used and its ``source`` says so.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from gqa_lib.core.checks import check_positive_int

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}  # as the CSVs name them
SYSFS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")
FALLBACK_LLC_BYTES = 64 * 2**20  # when sysfs says nothing (not Linux): larger than most laptop caches


_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)\s*$")


def parse_cache_size(text: str) -> int:
    """sysfs's cache size (``'32K'``, ``'307200K'``) in bytes; K, M, G are binary, as the kernel means them.

    Raises ``ValueError`` naming the text when it is not a number with an optional K, M or G.
    """
    m = _SIZE.match(text)
    if m is None:
        raise ValueError(f"cache size {text!r} is not a number with an optional K, M or G suffix")
    return int(m[1]) * 1024 ** " KMG".index(m[2] or " ")


def last_level_cache(sysfs: str | Path = SYSFS_CACHE) -> dict:
    """The largest, highest-level CPU cache of cpu0 from Linux's sysfs: {'bytes', 'level', 'source'}.

    Where sysfs has no cache description the result is :data:`FALLBACK_LLC_BYTES` with
    source 'fallback', so the caller can say the size was not read.
    """
    best = None
    for index in sorted(Path(sysfs).glob("index*")):
        try:
            level = int((index / "level").read_text())
            size = parse_cache_size((index / "size").read_text())
            kind = (index / "type").read_text().strip() if (index / "type").exists() else "Unified"
        except (OSError, ValueError):
            continue
        if kind == "Instruction":
            continue
        if best is None or (level, size) > (best["level"], best["bytes"]):
            best = {"bytes": size, "level": level, "source": str(index / "size")}
    return best or {"bytes": FALLBACK_LLC_BYTES, "level": 0, "source": "fallback"}


class CacheFlusher:
    """Reads a buffer of ``nbytes`` (at least twice the last-level cache) so the next call finds K and V in DRAM.

    In a real model each layer has its own cache, and all the layers' caches together are far larger
    than the CPU caches, so every decode step reads its K and V from memory. Timing the same small
    cache over and over would instead measure the (much faster) last-level cache. The default size
    is twice the last-level cache that :func:`last_level_cache` reads from sysfs.
    """

    def __init__(self, nbytes: int | None = None):
        nbytes = 2 * last_level_cache()["bytes"] if nbytes is None else nbytes
        check_positive_int("nbytes", nbytes)
        self.nbytes = nbytes
        self.buffer = torch.ones(nbytes // 4, dtype=torch.float32)

    def __call__(self) -> None:
        self.buffer.sum()


CLOCKS = ("wall", "cpu")


def check_clock(clock: str) -> None:
    if clock not in CLOCKS:
        raise ValueError(f"clock={clock!r} is not known (valid: {', '.join(CLOCKS)})")


def time_calls(fn: Callable[[], object], reps: int, warmup: int,
               before: Callable[[], None] | None = None) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU seconds of each of ``reps`` calls of ``fn``, after ``warmup`` untimed calls.

    ``before`` (e.g. a cache flush) runs untimed before each timed call. CPU time is this process's
    (all its threads): on a machine shared with other programs it leaves out the time the
    scheduler gave to them, so with one thread it is the steadier measure of the work itself.
    """
    check_positive_int("reps", reps)
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(reps):
        if before is not None:
            before()
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def measure_read_bandwidth(nbytes: int | None = None, reps: int = 15, warmup: int = 3, clock: str = "wall") -> dict:
    """Memory read bandwidth in bytes per second: median time to sum a float32 tensor of ``nbytes`` bytes.

    Summing reads every byte once and does one addition per 4 bytes, so it runs at the speed memory
    delivers data: the same bound a decode step meets. The default size is 4 times the last-level
    cache (read from sysfs), so the sum cannot be served from the cache. ``bytes_per_s`` is by
    ``clock``; the wall and CPU figures are both kept. Uses the current ``torch.get_num_threads()``.
    """
    check_clock(clock)
    nbytes = 4 * last_level_cache()["bytes"] if nbytes is None else nbytes
    check_positive_int("nbytes", nbytes)
    x = torch.ones(nbytes // 4, dtype=torch.float32)
    wall, cpu = time_calls(lambda: x.sum(), reps, warmup)
    med = statistics.median(wall if clock == "wall" else cpu)
    return {"bytes": x.nbytes, "median_s": med, "bytes_per_s": x.nbytes / med,
            "wall_bytes_per_s": x.nbytes / statistics.median(wall),
            "cpu_bytes_per_s": x.nbytes / statistics.median(cpu), "reps": reps, "clock": clock,
            "threads": torch.get_num_threads()}


def measure_matmul_peak(m: int, k: int, n: int, dtype: torch.dtype = torch.float32, batch: int = 1,
                        reps: int = 10, warmup: int = 3, clock: str = "wall") -> dict:
    """GFLOP/s of ``(batch, m, k) @ (batch, k, n)`` in ``dtype``: 2*batch*m*k*n FLOPs / median time.

    The operands stay in the CPU cache between calls when they fit, so this measures arithmetic,
    not memory. A large square product gives the machine's practical peak; the decode step's own
    shape (``m`` = query rows of one KV head, ``n`` = cached tokens) gives what PyTorch's kernels
    reach on the thin products a decode step is made of. Uses the current ``torch.get_num_threads()``.
    """
    check_clock(clock)
    for name, val in (("m", m), ("k", k), ("n", n), ("batch", batch)):
        check_positive_int(name, val)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(batch, m, k, generator=g).to(dtype)
    b = torch.randn(batch, k, n, generator=g).to(dtype)
    wall, cpu = time_calls(lambda: torch.matmul(a, b), reps, warmup)
    med = statistics.median(wall if clock == "wall" else cpu)
    flops = 2 * batch * m * k * n
    return {"shape": f"({batch}, {m}, {k}) @ ({batch}, {k}, {n})", "flops": flops, "median_s": med,
            "flops_per_s": flops / med, "best_flops_per_s": flops / min(wall if clock == "wall" else cpu),
            "dtype": DTYPE_NAMES.get(dtype, str(dtype)), "reps": reps, "clock": clock,
            "threads": torch.get_num_threads()}


def clock_for(threads: int) -> str:
    """The clock a run with ``threads`` torch threads is timed by: CPU time for one thread, else wall time.

    With one thread, process CPU time leaves out time the scheduler gave to other programs on a shared
    machine; with several, CPU time would add the threads' times up, so wall time is the measure.
    """
    check_positive_int("threads", threads)
    return "cpu" if threads == 1 else "wall"


def measure_ceilings(threads: int, dtypes=(torch.float32, torch.bfloat16), n_heads: int = 32, head_dim: int = 128,
                     seq_len: int = 16384, bandwidth_bytes: int | None = None, gemm_size: int = 2048,
                     group_sizes=(1, 4, 32), reps: int = 10) -> dict:
    """Both roofline ceilings with ``threads`` torch threads (restored afterwards), by :func:`clock_for`.

    Returns {'threads', 'clock', 'read_bytes_per_s', 'bandwidth_bytes', 'peak': {dtype name: FLOP/s of a
    ``gemm_size``-cubed product}, 'decode_gemm': {(dtype name, group_size): FLOP/s of the step's own
    q·Kᵀ for one KV head, ``(1, group_size, head_dim) @ (1, head_dim, seq_len)``}, 'gemm_shape'}.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    clock = clock_for(threads)
    try:
        bw = measure_read_bandwidth(bandwidth_bytes, reps=reps, clock=clock)
        out = {"threads": threads, "clock": clock, "read_bytes_per_s": bw["bytes_per_s"],
               "bandwidth_bytes": bw["bytes"], "peak": {}, "decode_gemm": {}}
        for dtype in dtypes:
            name = DTYPE_NAMES.get(dtype, str(dtype))
            big = measure_matmul_peak(gemm_size, gemm_size, gemm_size, dtype, reps=max(3, reps // 2), clock=clock)
            out["peak"][name], out["gemm_shape"] = big["flops_per_s"], big["shape"]
            for g in group_sizes:
                thin = measure_matmul_peak(g, head_dim, seq_len, dtype, reps=reps, clock=clock)
                out["decode_gemm"][name, g] = thin["flops_per_s"]
        return out
    finally:
        torch.set_num_threads(before)


def bandwidth_buffer_bytes(llc_bytes: int, factor: int = 4) -> int:
    """Size of the buffer summed to measure read bandwidth: ``factor`` times the last-level cache, whole MB."""
    check_positive_int("llc_bytes", llc_bytes)
    check_positive_int("factor", factor)
    return -(-factor * llc_bytes // 10**6) * 10**6


def measure_bandwidth(llc_bytes: int, reps: int = 9) -> dict:
    """Read bandwidth (wall and CPU clocks) summing a float32 buffer of 4x the last-level cache."""
    return measure_read_bandwidth(bandwidth_buffer_bytes(llc_bytes), reps=reps, warmup=2)
