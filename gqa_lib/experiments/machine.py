"""The machine's ceilings, one home for all of them: last-level cache, read bandwidth, matrix-multiply rates,
the buffers that keep a timing out of the CPU cache, and the clocks that time a run.

A measurement is compared with the ceiling measured in the same run (``measure_ceilings``): the roofline of
notebook 06 (``experiments.attention_roofline``) and SmolLM2's tokens per second (``experiments.model_decode_speed``)
both read them from here. The last-level cache comes from Linux's sysfs (``last_level_cache``); elsewhere a
fallback size is used and its ``source`` says so.

Read bandwidth is measured the way a decode step reads: two tensors streamed side by side (K and V), by a
reduction that only reads them (``stream_read``, a dot product of their bytes). An earlier probe summed one
buffer (``measure_read_bandwidth``, kept for comparison); a single stream is slower than two on the CPUs we
tried, so attention steps "beat" it (up to 110% of it): a ceiling a kernel beats is no ceiling.
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
    """Single-stream read bandwidth in bytes per second: median time to sum one float32 tensor of ``nbytes`` bytes.

    The series' first probe, kept to compare with :func:`measure_stream_bandwidth`: one stream is read more
    slowly than the two (K and V) a decode step reads, so this figure understates what memory can deliver
    to attention. The default size is 4 times the last-level cache (read from sysfs), so the sum cannot be
    served from the cache. ``bytes_per_s`` is by ``clock``; the wall and CPU figures are both kept. Uses the
    current ``torch.get_num_threads()``.
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


def stream_view(t: torch.Tensor) -> torch.Tensor:
    """The bytes of a contiguous tensor as one flat float32 tensor: a view, nothing is copied.

    Reading them as float32 whatever the dtype keeps the reduction vectorised (a bf16 dot product is not,
    on the CPU) and changes nothing about which bytes are read. Raises ValueError for a non-contiguous
    tensor or a size that is not a whole number of 4-byte words.
    """
    if not t.is_contiguous():
        raise ValueError(f"a tensor of shape {tuple(t.shape)} and strides {t.stride()} is not contiguous: "
                         "its bytes are not one run of memory")
    flat = t.reshape(-1)
    if flat.dtype == torch.float32:
        return flat
    if t.nbytes % 4:
        raise ValueError(f"a tensor of {t.nbytes} bytes is not a whole number of 4-byte words")
    return flat.view(torch.uint8).view(torch.float32)


def stream_read(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Read ``a`` and ``b`` (the same number of bytes) once each, side by side: the dot product of their bytes.

    This is the read pattern of a decode step, which streams a block of K and the matching block of V,
    with none of its arithmetic (2 FLOPs per 8 bytes). The value is meaningless; the time is the point.
    Uses the current ``torch.get_num_threads()`` (MKL's dot splits the vectors between threads).
    """
    x, y = stream_view(a), stream_view(b)
    if x.numel() != y.numel():
        raise ValueError(f"a has {a.nbytes} bytes and b {b.nbytes}; the two streams must be the same size")
    return torch.dot(x, y)


class RotatingBuffers:
    """Copies of a set of tensors, handed out in turn, so that a timed call never finds its input in the CPU cache.

    ``RotatingBuffers((k, v), min_bytes)`` keeps ``n_sets`` copies of (k, v), at least 2, and enough that
    they hold ``min_bytes`` together (give twice the last-level cache). Each call returns the next set:
    between two uses of one set, every other set has been read, more bytes than the cache holds. Unlike
    reading a flush buffer before each call, which a cache may learn to keep out of its way while the
    one input stays cached, this is how a model meets its caches: each layer's K and V are its own memory.
    """

    def __init__(self, tensors: tuple[torch.Tensor, ...], min_bytes: int):
        check_positive_int("min_bytes", min_bytes)
        self.set_bytes = sum(t.nbytes for t in tensors)
        if self.set_bytes == 0:
            raise ValueError("the tensors hold no bytes: there is nothing to rotate")
        self.n_sets = max(2, -(-min_bytes // self.set_bytes))
        self.sets = [tuple(tensors)] + [tuple(t.clone() for t in tensors) for _ in range(self.n_sets - 1)]
        self._next = 0

    @property
    def nbytes(self) -> int:
        return self.n_sets * self.set_bytes

    def __call__(self) -> tuple[torch.Tensor, ...]:
        out = self.sets[self._next]
        self._next = (self._next + 1) % self.n_sets
        return out


def measure_stream_bandwidth(nbytes: int | None = None, reps: int = 15, warmup: int = 3, clock: str = "wall") -> dict:
    """Read bandwidth in bytes per second as a decode step reads: two float32 streams of ``nbytes / 2`` each.

    Median time of :func:`stream_read` over two buffers that together hold ``nbytes`` (default 4 times the
    last-level cache, so no call is served from the cache). Returns the same keys as
    :func:`measure_read_bandwidth`. Uses the current ``torch.get_num_threads()``.
    """
    check_clock(clock)
    nbytes = 4 * last_level_cache()["bytes"] if nbytes is None else nbytes
    check_positive_int("nbytes", nbytes)
    half = max(1, nbytes // 8)  # float32 numbers in each stream
    a, b = torch.ones(half), torch.ones(half)
    wall, cpu = time_calls(lambda: stream_read(a, b), reps, warmup)
    med = statistics.median(wall if clock == "wall" else cpu)
    total = a.nbytes + b.nbytes
    return {"bytes": total, "median_s": med, "bytes_per_s": total / med,
            "wall_bytes_per_s": total / statistics.median(wall), "cpu_bytes_per_s": total / statistics.median(cpu),
            "reps": reps, "clock": clock, "threads": torch.get_num_threads()}


KERNEL_BLOCK = 512  # keys per block in PyTorch's CPU flash-attention kernel (its kvSplitSize)


def decode_gemm_shape(rows, head_dim: int = 128, block: int = KERNEL_BLOCK) -> str:
    """The two products :func:`measure_decode_gemm` times, in words: '(4 x 128) @ (128 x 512), then ...'."""
    return f"({rows} x {head_dim}) @ ({head_dim} x {block}), then ({rows} x {block}) @ ({block} x {head_dim})"


def measure_decode_gemm(rows: int, head_dim: int = 128, dtype: torch.dtype = torch.float32, block: int = KERNEL_BLOCK,
                        blocks: int = 8, reps: int = 10, warmup: int = 3, clock: str = "wall") -> dict:
    """GFLOP/s of a decode step's two matrix products at the sizes the fused kernel runs them, operands in cache.

    The kernel takes K and V in blocks of ``block`` keys; for each it multiplies the ``rows`` query rows of a
    KV head (its group size) by the block's keys, ``(rows, head_dim) @ (head_dim, block)``, and the weights
    by its values, ``(rows, block) @ (block, head_dim)``. Both are timed for ``blocks`` blocks in one batched
    call each (``torch.bmm``), 4 * rows * block * head_dim FLOPs a block. The blocks are small enough to stay
    in the CPU cache, so this is the arithmetic ceiling of a step with that group size, not a memory one.
    """
    check_clock(clock)
    for name, val in (("rows", rows), ("head_dim", head_dim), ("block", block), ("blocks", blocks)):
        check_positive_int(name, val)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(blocks, rows, head_dim, generator=g).to(dtype)
    k = torch.randn(blocks, block, head_dim, generator=g).to(dtype)  # (blocks, keys, head_dim), as cached
    v = torch.randn(blocks, block, head_dim, generator=g).to(dtype)
    wall, cpu = time_calls(lambda: torch.bmm(torch.bmm(q, k.transpose(1, 2)), v), reps, warmup)
    med = statistics.median(wall if clock == "wall" else cpu)
    flops = 4 * blocks * rows * block * head_dim
    return {"shape": decode_gemm_shape(rows, head_dim, block), "flops": flops, "median_s": med,
            "flops_per_s": flops / med, "dtype": DTYPE_NAMES.get(dtype, str(dtype)),
            "reps": reps, "clock": clock, "threads": torch.get_num_threads()}


def measure_kernel_in_cache(rows: int, head_dim: int = 128, dtype: torch.dtype = torch.float32, seq_len: int = 4096,
                            reps: int = 10, warmup: int = 3, clock: str = "wall") -> dict:
    """GFLOP/s of the decode step itself with K and V in the CPU cache: its arithmetic rate with no memory wait.

    PyTorch's fused attention (the call ``gqa_lib`` makes) on ``rows`` query rows against one KV head per
    thread, ``seq_len`` tokens (4 MiB in fp32 at the defaults), called over and over so K and V stay cached.
    Where the kernel does not use the library's matrix products (bf16 on some CPUs) this rate and
    :func:`measure_decode_gemm`'s differ; the kernel's own is the one that binds it.
    """
    from torch.nn import functional as F

    check_clock(clock)
    for name, val in (("rows", rows), ("head_dim", head_dim), ("seq_len", seq_len)):
        check_positive_int(name, val)
    heads = torch.get_num_threads()  # the kernel splits its work by head: one per thread keeps them all busy
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, heads, rows, head_dim, generator=g).to(dtype)  # a group's query heads stacked as rows
    k = torch.randn(1, heads, seq_len, head_dim, generator=g).to(dtype)
    v = torch.randn(1, heads, seq_len, head_dim, generator=g).to(dtype)
    wall, cpu = time_calls(lambda: F.scaled_dot_product_attention(q, k, v), reps, warmup)
    med = statistics.median(wall if clock == "wall" else cpu)
    flops = 4 * heads * rows * seq_len * head_dim
    return {"flops": flops, "median_s": med, "flops_per_s": flops / med, "dtype": DTYPE_NAMES.get(dtype, str(dtype)),
            "reps": reps, "clock": clock, "threads": heads}


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
    """Every roofline ceiling with ``threads`` torch threads (restored afterwards), by :func:`clock_for`.

    Returns {'threads', 'clock', 'read_bytes_per_s' (two streams, :func:`measure_stream_bandwidth`),
    'sum_read_bytes_per_s' (one stream, :func:`measure_read_bandwidth`), 'bandwidth_bytes', 'peak': {dtype
    name: FLOP/s of a ``gemm_size``-cubed product}, 'decode_gemm': {(dtype name, group_size): FLOP/s of the
    step's block products, :func:`measure_decode_gemm`}, 'kernel_in_cache': {(dtype name, group_size): FLOP/s
    of the step with K and V cached, :func:`measure_kernel_in_cache`}, 'gemm_shape'}. ``n_heads`` and
    ``seq_len`` are kept for callers that pass them; the block products do not depend on them.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    clock = clock_for(threads)
    try:
        bw = measure_stream_bandwidth(bandwidth_bytes, reps=reps, clock=clock)
        one = measure_read_bandwidth(bandwidth_bytes, reps=reps, clock=clock)
        out = {"threads": threads, "clock": clock, "read_bytes_per_s": bw["bytes_per_s"],
               "sum_read_bytes_per_s": one["bytes_per_s"], "bandwidth_bytes": bw["bytes"], "peak": {},
               "decode_gemm": {}, "kernel_in_cache": {}}
        for dtype in dtypes:
            name = DTYPE_NAMES.get(dtype, str(dtype))
            big = measure_matmul_peak(gemm_size, gemm_size, gemm_size, dtype, reps=max(3, reps // 2), clock=clock)
            out["peak"][name], out["gemm_shape"] = big["flops_per_s"], big["shape"]
            for g in group_sizes:
                out["decode_gemm"][name, g] = measure_decode_gemm(g, head_dim, dtype, reps=reps,
                                                                  clock=clock)["flops_per_s"]
                out["kernel_in_cache"][name, g] = measure_kernel_in_cache(g, head_dim, dtype, reps=reps,
                                                                          clock=clock)["flops_per_s"]
        out["decode_gemm_shape"] = decode_gemm_shape("rows", head_dim)
        return out
    finally:
        torch.set_num_threads(before)


def bandwidth_buffer_bytes(llc_bytes: int, factor: int = 4) -> int:
    """Size of the buffer summed to measure read bandwidth: ``factor`` times the last-level cache, whole MB."""
    check_positive_int("llc_bytes", llc_bytes)
    check_positive_int("factor", factor)
    return -(-factor * llc_bytes // 10**6) * 10**6


def measure_bandwidth(llc_bytes: int, reps: int = 9) -> dict:
    """Read bandwidth (wall and CPU clocks) streaming two float32 buffers of 4x the last-level cache together."""
    return measure_stream_bandwidth(bandwidth_buffer_bytes(llc_bytes), reps=reps, warmup=2)
