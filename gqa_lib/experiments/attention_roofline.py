"""Time one decode step of attention against a KV cache, and measure the roofline that bounds it.

At decode time one new query token attends to every cached key and value. Every cached byte is
read once, and the arithmetic is ``4 * n_heads * seq_len * head_dim`` FLOPs whatever ``n_kv_heads``
is, so the **arithmetic intensity** (FLOPs per byte read) grows as KV heads are shared:
``2 * group_size / bytes per element`` (0.5 FLOP per byte for fp32 MHA, 16 for fp32 MQA with 32
query heads). The **roofline** bound of a step is ``max(bytes / read bandwidth, FLOPs / peak
GFLOP/s)``. The read bandwidth is measured for every case on the very K and V the implementations read
(``stream``: a reduction that streams them side by side, timed in turn with the implementations); the peak
comes from ``experiments.machine.measure_ceilings``. Each timed row is reported as a percentage of that bound
(``100 * bound / time``: 100% is the best the machine allows), and :func:`rows_over_bound` names any row
that beats it by more than a stated tolerance.

Implementations of the same step (all take q (batch, n_heads, 1, head_dim) and the cache
k, v (batch, n_kv_heads, seq, head_dim), and return (batch, n_heads, 1, head_dim)):

- ``gqa_lib``: :func:`gqa_lib.grouped_attention` as the layer calls it at decode (causal=True):
  the query heads of a group are stacked as rows of one matrix, so each KV head is read once by one
  call of PyTorch's fused attention kernel, and nothing is copied (no mask: the query is the last token).
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)``. On the
  CPU it runs the same fused kernel as ``gqa_lib``; the difference is that it treats each query head
  as its own single-row problem, so each KV head is read ``group_size`` times (once per query head
  of its group) instead of once. Without ``is_causal``, which would align the mask top-left and let
  the query see key 0 only.
- ``expand``: expand-then-attend as transformers' ``repeat_kv`` + eager attention do it: an
  ``expand`` view, then a ``reshape`` that copies each KV head ``group_size`` times into freshly
  allocated memory (whose first touch costs page faults), then ordinary multi-head attention. With
  one KV head the reshape can return a **view** with stride 0 and copies nothing: its 32 query heads
  then read the same small K and V (in fp32 that makes it faster than at 8 KV heads; in bf16 the
  products with a stride-0 view are slow, and it is not).
- ``expand_into``: the same copy into buffers allocated once (per cache shape), so the time of the
  copy itself is separated from the allocator's page faults.
- ``grouped_explicit`` (a variant, ``--variants``): gqa_lib's grouping with the scores written to memory.

Timed beside them in each case (:data:`PROBES`), not implementations: ``stream`` (the memory bound) and, where
expand copies, ``copy_fresh`` / ``copy_reused`` (the copy alone into fresh or reused memory), which measure
what fresh memory costs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

import torch
from torch.nn import functional as F

from gqa_lib.core.attention import grouped_attention
from gqa_lib.core.checks import check_positive_int
from gqa_lib.core.layout import AttentionLayout, attention_kind
from gqa_lib.experiments.machine import CLOCKS, DTYPE_NAMES, RotatingBuffers, check_clock, stream_read, time_calls
from gqa_lib.experiments.stats import holm, paired_ratio

DTYPES = {name: dtype for dtype, name in DTYPE_NAMES.items()}  # "fp32" -> torch.float32, ...


def repeat_kv(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """(batch, n_kv_heads, seq, head_dim) -> (batch, n_kv_heads * group_size, seq, head_dim).

    Written the way transformers' ``repeat_kv`` is: a broadcast view, then a reshape. The reshape
    copies when ``n_kv_heads > 1``; with one KV head it returns a view whose head stride is 0 (no
    copy), and with ``group_size == 1`` nothing happens at all.
    """
    if group_size == 1:
        return x
    b, n_kv, s, d = x.shape
    return x[:, :, None, :, :].expand(b, n_kv, group_size, s, d).reshape(b, n_kv * group_size, s, d)


def _eager_attention(q: torch.Tensor, k_all: torch.Tensor, v_all: torch.Tensor) -> torch.Tensor:
    scores = q @ k_all.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (batch, n_heads, 1, seq)
    return scores.softmax(dim=-1) @ v_all  # (batch, n_heads, 1, head_dim)


def decode_gqa_lib(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """gqa_lib's grouped attention, called as GroupedQueryAttention.forward calls it (causal=True)."""
    return grouped_attention(q, k, v, causal=True)


def decode_expand(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """transformers' eager path: repeat_kv (a fresh copy when 1 < n_kv_heads < n_heads), then plain attention."""
    group_size = q.shape[1] // k.shape[1]
    return _eager_attention(q, repeat_kv(k, group_size), repeat_kv(v, group_size))


class ExpandInto:
    """Expand-then-attend that copies K and V into buffers allocated once per cache shape.

    Calling it is the ``expand`` step with the allocation taken out: the copy still writes
    ``group_size`` times the cache and the attention reads that copy, but the memory is reused, so
    the operating system's page faults on fresh memory are not in the time. ``release()`` frees
    the buffers.
    """

    def __init__(self):
        self._buffers: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def release(self) -> None:
        self._buffers.clear()

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        group_size = q.shape[1] // k.shape[1]
        if group_size == 1:
            return _eager_attention(q, k, v)
        b, n_kv, s, d = k.shape
        key = (b, n_kv, group_size, s, d, k.dtype)
        if key not in self._buffers:
            self.release()  # keep one shape's buffers at a time
            self._buffers[key] = (torch.empty(b, n_kv, group_size, s, d, dtype=k.dtype),
                                  torch.empty(b, n_kv, group_size, s, d, dtype=v.dtype))
        kb, vb = self._buffers[key]
        kb.copy_(k[:, :, None].expand(b, n_kv, group_size, s, d))
        vb.copy_(v[:, :, None].expand(b, n_kv, group_size, s, d))
        return _eager_attention(q, kb.view(b, n_kv * group_size, s, d), vb.view(b, n_kv * group_size, s, d))


decode_expand_into = ExpandInto()


def decode_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PyTorch's fused attention with its own grouped-query support; no mask (the query is the last token)."""
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


def decode_grouped_explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The same grouping (no copy of K or V), but the scores written to memory and softmaxed there.

    This is the path ``grouped_attention`` takes when the caller asks for the weights. Timing it
    next to ``gqa_lib`` separates the two gains: not copying K and V, and not writing the scores.
    """
    return grouped_attention(q, k, v, causal=True, return_weights=True)[0]


IMPLEMENTATIONS: dict[str, Callable] = {"gqa_lib": decode_gqa_lib, "sdpa": decode_sdpa, "expand": decode_expand,
                                        "expand_into": decode_expand_into}
# With n_kv_heads == n_heads these are the same call as the named implementation, so they are not timed.
SAME_CALL_AT_MHA = {"sdpa": "gqa_lib", "expand_into": "expand"}
# Variants timed to explain the figures (``--variants``), not compared in the targets.
VARIANTS: dict[str, Callable] = {"grouped_explicit": decode_grouped_explicit}


class CopyReused:
    """repeat_kv's two copies alone (K and V to ``group_size`` heads each), into buffers allocated once per shape."""

    def __init__(self):
        self._buffers: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def release(self) -> None:
        self._buffers.clear()

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        b, n_kv, s, d = k.shape
        shape = (b, n_kv, q.shape[1] // n_kv, s, d)  # (batch, n_kv_heads, group_size, seq, head_dim)
        key = (shape, k.dtype)
        if key not in self._buffers:
            self.release()  # keep one shape's buffers at a time
            self._buffers[key] = (torch.empty(shape, dtype=k.dtype), torch.empty(shape, dtype=v.dtype))
        kb, vb = self._buffers[key]
        kb.copy_(k[:, :, None].expand(shape))
        vb.copy_(v[:, :, None].expand(shape))


def copy_fresh(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """repeat_kv's two copies alone, each into freshly allocated memory, as ``expand`` makes them (then freed)."""
    group_size = q.shape[1] // k.shape[1]
    repeat_kv(k, group_size)
    repeat_kv(v, group_size)


def stream_probe(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Read this case's K and V once, side by side, doing nothing else: the least time the bytes can take."""
    return stream_read(k, v)


# Measurements timed in turn with the implementations of each case; their medians become columns of its rows.
# 'stream' is every case's memory bound; the copies only where expand copies (1 < n_kv_heads < n_heads).
PROBES: dict[str, Callable] = {"stream": stream_probe, "copy_fresh": copy_fresh, "copy_reused": CopyReused()}
BOUND_TOLERANCE_PCT = 5.0  # a row may read its bytes this much faster than the stream probe (timing noise)


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def cache_bytes_read(n_kv_heads: int, seq_len: int, head_dim: int, dtype: torch.dtype, batch: int = 1) -> int:
    """Bytes of K and V one decode step must read: 2 * batch * n_kv_heads * seq_len * head_dim * element size.

    This is the least any implementation can read (q and the output, ``n_heads * head_dim`` numbers
    each, are left out); an implementation that copies the cache moves more.
    """
    return 2 * batch * n_kv_heads * seq_len * head_dim * element_size(dtype)


def decode_flops(n_heads: int, seq_len: int, head_dim: int, batch: int = 1) -> int:
    """FLOPs of one decode step: q·k and weights·v, 2 FLOPs per multiply-add, for every query head.

    ``4 * batch * n_heads * seq_len * head_dim``, the same for every ``n_kv_heads`` (the softmax's
    few operations per score, ``n_heads * seq_len``, are left out).
    """
    return 4 * batch * n_heads * seq_len * head_dim


def make_decode_inputs(n_heads: int, n_kv_heads: int, seq_len: int, head_dim: int = 128,
                       dtype: torch.dtype = torch.float32, seed: int = 0, batch: int = 1):
    """Random q (batch, n_heads, 1, head_dim) and a full cache k, v (batch, n_kv_heads, seq_len, head_dim)."""
    AttentionLayout(n_heads, n_kv_heads, head_dim)
    check_positive_int("seq_len", seq_len)
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, n_heads, 1, head_dim, generator=g).to(dtype)
    k = torch.randn(batch, n_kv_heads, seq_len, head_dim, generator=g).to(dtype)
    v = torch.randn(batch, n_kv_heads, seq_len, head_dim, generator=g).to(dtype)
    return q, k, v


def check_agree(q, k, v, impls: dict[str, Callable], atol: float = 1e-5, rtol: float = 1e-5) -> float:
    """Run every implementation once; raise if any differs from the first; return the largest difference."""
    outs = {name: fn(q, k, v).float() for name, fn in impls.items()}
    names = list(outs)
    ref = outs[names[0]]
    worst = 0.0
    for name in names[1:]:
        diff = (outs[name] - ref).abs().max().item()
        worst = max(worst, diff)
        torch.testing.assert_close(outs[name], ref, atol=atol, rtol=rtol,
                                   msg=lambda m, n=name: f"{n} disagrees with {names[0]}: {m}")
    return worst


def roofline(nbytes: float, flops: float, read_bytes_per_s: float, peak_flops_per_s: float) -> dict:
    """The roofline bound of one step: {'bound_s', 'memory_s', 'compute_s', 'limit'} ('memory' or 'compute')."""
    memory_s, compute_s = nbytes / read_bytes_per_s, flops / peak_flops_per_s
    return {"bound_s": max(memory_s, compute_s), "memory_s": memory_s, "compute_s": compute_s,
            "limit": "memory" if memory_s >= compute_s else "compute"}


# --- timing -------------------------------------------------------------------------------------

def _ms(seconds: list[float]) -> str:
    """Per-rep times as the CSV keeps them: milliseconds, 4 decimals, separated by spaces."""
    return " ".join(f"{t * 1e3:.4f}" for t in seconds)


def rep_times(row: dict, column: str = "rep_ms") -> list[float]:
    """The per-rep milliseconds a row keeps in ``column`` ('rep_ms' or 'stream_rep_ms'), in the order timed."""
    return [float(x) for x in str(row[column]).split()]


def benchmark_case(n_heads: int, n_kv_heads: int, seq_len: int, head_dim: int = 128,
                   dtype: torch.dtype = torch.float32, reps: int = 20, warmup: int = 3,
                   impls: dict[str, Callable] | None = None, rotate_bytes: int | None = None,
                   clock: str = "wall", ceilings: dict | None = None) -> list[dict]:
    """Time every implementation on one cache; one row each. ``median_ms`` is by ``clock`` ('wall' or 'cpu').

    At MHA (``n_kv_heads == n_heads``) the implementations in :data:`SAME_CALL_AT_MHA` are left out:
    they would make the same call as another one. Implementations and :data:`PROBES` are timed round-robin
    (rep 1 of each, then rep 2 of each, ...) so that a burst of load from other programs slows all of them
    alike; each timed call takes the next of several copies of K and V (:class:`machine.RotatingBuffers`,
    ``rotate_bytes`` in all: give twice the last-level cache) so that none finds them in the CPU cache. Each
    row keeps its per-rep times (``rep_ms``), the stream probe's (``stream_ms``, ``stream_rep_ms``, and the
    bandwidth it shows, ``read_GBps``) and, where expand copies, the copies' medians (``copy_fresh_ms``,
    ``copy_reused_ms``; blank elsewhere). With ``ceilings`` (from ``machine.measure_ceilings``: its 'peak'
    is used) each row gets its roofline columns: the memory bound (the stream probe's median), the compute
    bound (FLOPs / peak), the larger of the two, ``pct_of_bound`` (100 * bound / median time) and what
    limits the bound.
    """
    check_clock(clock)
    impls = IMPLEMENTATIONS if impls is None else impls
    if n_kv_heads == n_heads:  # these would time the very same call as another implementation
        impls = {name: fn for name, fn in impls.items() if name not in SAME_CALL_AT_MHA}
    probes = {name: fn for name, fn in PROBES.items()
              if name == "stream" or 1 < n_kv_heads < n_heads}  # the copies exist only where expand copies
    q, k, v = make_decode_inputs(n_heads, n_kv_heads, seq_len, head_dim, dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    max_diff = check_agree(q, k, v, impls, atol=tol, rtol=tol)
    sets = RotatingBuffers((k, v), rotate_bytes if rotate_bytes is not None else 1)
    timed = {**impls, **probes}
    for fn in timed.values():
        for _ in range(warmup):
            fn(q, *sets())
    times = {(name, c): [] for name in timed for c in CLOCKS}
    for _ in range(reps):
        for name, fn in timed.items():
            kv = sets()
            wall, cpu = time_calls(lambda fn=fn, kv=kv: fn(q, *kv), 1, 0)
            times[name, "wall"] += wall
            times[name, "cpu"] += cpu
    for fn in timed.values():
        if hasattr(fn, "release"):
            fn.release()
    n_sets, rotated = sets.n_sets, sets.nbytes
    del sets
    nbytes = cache_bytes_read(n_kv_heads, seq_len, head_dim, dtype)
    flops = decode_flops(n_heads, seq_len, head_dim)
    dname = DTYPE_NAMES.get(dtype, str(dtype))
    stream = times["stream", clock]
    stream_med = statistics.median(stream)
    copies = {f"{name}_ms": round(statistics.median(times[name, clock]) * 1e3, 4) if name in probes else ""
              for name in ("copy_fresh", "copy_reused")}
    rows = []
    for name in impls:
        ts = times[name, clock]
        med = statistics.median(ts)
        q1, _, q3 = statistics.quantiles(ts, n=4) if reps > 1 else (med, med, med)
        row = {
            "impl": name, "n_heads": n_heads, "n_kv_heads": n_kv_heads, "kind": attention_kind(n_heads, n_kv_heads),
            "seq_len": seq_len, "head_dim": head_dim, "dtype": dname, "threads": torch.get_num_threads(),
            "cache_bytes_read": nbytes, "flops": flops, "flop_per_byte": round(flops / nbytes, 4),
            "clock": clock, "median_ms": round(med * 1e3, 4),
            "q1_ms": round(q1 * 1e3, 4), "q3_ms": round(q3 * 1e3, 4), "min_ms": round(min(ts) * 1e3, 4),
            "median_wall_ms": round(statistics.median(times[name, "wall"]) * 1e3, 4),
            "median_cpu_ms": round(statistics.median(times[name, "cpu"]) * 1e3, 4), "reps": reps,
            "effective_GBps": round(nbytes / med / 1e9, 4), "attained_GFLOPs": round(flops / med / 1e9, 3),
            "max_abs_diff": max_diff, "buffer_sets": n_sets, "rotated_MB": round(rotated / 1e6, 1),
            "stream_ms": round(stream_med * 1e3, 4), "read_GBps": round(nbytes / stream_med / 1e9, 3),
            **copies, "rep_ms": _ms(ts), "stream_rep_ms": _ms(stream),
        }
        if ceilings is not None:
            bound = roofline(nbytes, flops, nbytes / stream_med, ceilings["peak"][dname])
            row.update({"peak_GFLOPs": round(ceilings["peak"][dname] / 1e9, 2),
                        "memory_bound_ms": round(bound["memory_s"] * 1e3, 6),
                        "compute_bound_ms": round(bound["compute_s"] * 1e3, 6),
                        "bound_ms": round(bound["bound_s"] * 1e3, 6), "bound_by": bound["limit"],
                        "pct_of_bound": round(100 * bound["bound_s"] / med, 2)})
        rows.append(row)
    return rows


def run_decode_benchmark(seq_lens=(1024, 4096, 16384), kv_heads=(32, 8, 1), n_heads: int = 32, head_dim: int = 128,
                         dtype: torch.dtype = torch.float32, reps: int = 20, warmup: int = 3,
                         impls: dict[str, Callable] | None = None, rotate_bytes: int | None = None,
                         clock: str = "wall", ceilings: dict | None = None, progress=None) -> list[dict]:
    """Every (seq_len, n_kv_heads) case with the current thread count; see :func:`benchmark_case`."""
    rows = []
    for seq_len in seq_lens:
        for kv in kv_heads:
            rows += benchmark_case(n_heads, kv, seq_len, head_dim, dtype, reps, warmup, impls, rotate_bytes, clock,
                                   ceilings)
            if progress is not None:
                progress(seq_len, kv)
    return rows


def pick(rows: list[dict], impl: str, n_kv_heads: int, seq_len: int, column: str = "median_ms", **match) -> float:
    """The ``column`` of the one row for (impl, n_kv_heads, seq_len) and any other ``column=value`` given."""
    found = [r for r in rows if r["impl"] == impl and int(r["n_kv_heads"]) == n_kv_heads
             and int(r["seq_len"]) == seq_len and all(r.get(c) == v for c, v in match.items())]
    if len(found) != 1:
        raise KeyError(f"{len(found)} rows for impl={impl!r}, n_kv_heads={n_kv_heads}, seq_len={seq_len}, {match}")
    return float(found[0][column])



def rows_over_bound(rows: list[dict], tolerance_pct: float = BOUND_TOLERANCE_PCT) -> list[str]:
    """Every row that beats its bound by more than ``tolerance_pct``, as 'fp32 1t 4096 tokens 32 KV gqa_lib: 112.0%'.

    A bound is a ceiling only if nothing beats it. The memory bound is the stream probe's time on the same K
    and V, timed in turn with the row, so a row above ``100 + tolerance_pct`` means the probe is not reading
    the way the kernel does (or the cache kept the data), and the table should not be trusted.
    """
    return [f"{r['dtype']} {r['threads']}t {r['seq_len']} tokens {r['n_kv_heads']} KV {r['impl']}: "
            f"{float(r['pct_of_bound']):.1f}%" for r in rows if float(r["pct_of_bound"]) > 100 + tolerance_pct]


def _row(rows, impl, kv, seq_len, **match) -> dict:
    found = [r for r in rows if r["impl"] == impl and int(r["n_kv_heads"]) == kv and int(r["seq_len"]) == seq_len
             and all(r.get(c) == v for c, v in match.items())]
    if len(found) != 1:
        raise KeyError(f"{len(found)} rows for impl={impl!r}, n_kv_heads={kv}, seq_len={seq_len}, {match}")
    return found[0]


def paired_speedup(rows: list[dict], slow: str, fast: str, n_kv_heads: int, seq_len: int, confidence: float = 0.95,
                   threshold: float | None = None, **match) -> dict:
    """How many times faster ``fast`` is than ``slow`` on one case, rep by rep: :func:`stats.paired_ratio`.

    Rep i of the two was timed in the same round, one after the other, so the pair shares whatever else the
    machine was doing. ``match``: other columns that pick the case (dtype, threads).
    """
    a, b = _row(rows, slow, n_kv_heads, seq_len, **match), _row(rows, fast, n_kv_heads, seq_len, **match)
    return paired_ratio(rep_times(a), rep_times(b), confidence, threshold)


def pct_of_bound_interval(row: dict, confidence: float = 0.95, threshold: float | None = None) -> dict:
    """A row's percentage of its bound with an interval, rep by rep: 100 * bound of rep i / time of rep i.

    The bound of rep i is the larger of that rep's stream probe (timed just before or after it) and the
    compute bound (FLOPs / peak, fixed). Returns :func:`stats.paired_ratio`'s keys, in percent.
    """
    compute = float(row["compute_bound_ms"])
    bound = [max(s, compute) for s in rep_times(row, "stream_rep_ms")]
    return paired_ratio([100 * b for b in bound], rep_times(row), confidence, threshold)


def check_targets(rows: list[dict], seq_len: int = 16384, n_heads: int = 32, gqa_kv: int = 8,
                  dtype: str = "fp32", threads: int = 1, confidence: float = 0.95) -> list[dict]:
    """What a grouped kernel should reach, judged at ``seq_len`` tokens, ``dtype``, ``threads``, with intervals.

    ``gqa_lib`` at >= 80% of its roofline bound at ``n_heads`` and ``gqa_kv`` KV heads (it reads each byte
    once and does the arithmetic of one query row per head, so it should run near the memory bound), and
    >= 2.5x faster than ``sdpa`` (enable_gqa, which reads each KV head once per query head) at ``gqa_kv`` KV
    heads. Each target has its ``value`` (from the medians), the rep-by-rep ratio with its ``low``-``high``
    interval, ``p`` (one-sided: "the true value is at or below the threshold") and ``p_holm`` (Holm-adjusted
    over the three); ``verdict`` is 'met' where p_holm < 1 - confidence, 'missed' where the whole interval
    lies below the threshold, else 'not resolved' (the data allow either). Rows need the roofline columns.
    """
    match = {"dtype": dtype, "threads": threads}
    out = []
    for kv in (n_heads, gqa_kv):
        r = _row(rows, "gqa_lib", kv, seq_len, **match)
        ci = pct_of_bound_interval(r, confidence, 80.0)
        out.append({"target": f"gqa_lib at {kv} KV heads: % of roofline bound", "value": float(r["pct_of_bound"]),
                    "threshold": 80.0, **ci})
    ci = paired_speedup(rows, "sdpa", "gqa_lib", gqa_kv, seq_len, confidence, 2.5, **match)
    out.append({"target": f"gqa_lib vs SDPA(enable_gqa) at {gqa_kv} KV heads: speed-up",
                "value": pick(rows, "sdpa", gqa_kv, seq_len, **match) / pick(rows, "gqa_lib", gqa_kv, seq_len, **match),
                "threshold": 2.5, **ci})
    for row, p_holm in zip(out, holm([row["p_at_most"] for row in out]), strict=True):
        row["p"], row["p_holm"] = row.pop("p_at_most"), p_holm
        row["met"] = bool(p_holm < 1 - confidence)
        row["verdict"] = "met" if row["met"] else "missed" if row["high"] < row["threshold"] else "not resolved"
    return out


def kernel_calls(fn: Callable[[], object]) -> list[tuple[str, list[tuple[int, ...]]]]:
    """The attention kernels ``fn()`` runs, as PyTorch's dispatcher sees them: [(kernel name, shapes of q, k, v)].

    Shows which kernel a call reaches and the layout it hands it: ``gqa_lib`` and
    ``scaled_dot_product_attention(enable_gqa=True)`` reach the same CPU kernel with differently shaped queries.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.__name__.removesuffix(".default")
            if "attention" in name:
                self.seen.append((name, [tuple(a.shape) for a in args[:3] if isinstance(a, torch.Tensor)]))
            return func(*args, **(kwargs or {}))

    with Record() as record:
        fn()
    return record.seen
