"""Time one decode step of attention against a KV cache, and measure the roofline that bounds it.

At decode time one new query token attends to every cached key and value. Every cached byte is
read once, and the arithmetic is ``4 * n_heads * seq_len * head_dim`` FLOPs whatever ``n_kv_heads``
is, so the **arithmetic intensity** (FLOPs per byte read) grows as KV heads are shared:
``2 * group_size / bytes per element`` (0.5 FLOP per byte for fp32 MHA, 16 for fp32 MQA with 32
query heads). The **roofline** bound of a step is ``max(bytes / read bandwidth, FLOPs / peak
GFLOP/s)``; both ceilings are measured on the machine by ``experiments.machine.measure_ceilings``, and each timed
row is reported as a percentage of that bound (``100 * bound / time``: 100% is the best the
machine allows).

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
  one KV head the reshape can return a **view** with stride 0 and copies nothing, which is why
  expand gets faster at MQA: its 32 query heads then read the same small K and V, from the CPU
  cache after the first.
- ``expand_into``: the same copy into buffers allocated once (per cache shape), so the time of the
  copy itself is separated from the allocator's page faults.
- ``grouped_explicit`` (a variant, ``--variants``): gqa_lib's grouping with the scores written to memory.
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
from gqa_lib.experiments.machine import CLOCKS, DTYPE_NAMES, CacheFlusher, check_clock, time_calls

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

def benchmark_case(n_heads: int, n_kv_heads: int, seq_len: int, head_dim: int = 128,
                   dtype: torch.dtype = torch.float32, reps: int = 20, warmup: int = 3,
                   impls: dict[str, Callable] | None = None, flush: CacheFlusher | None = None,
                   clock: str = "wall", ceilings: dict | None = None) -> list[dict]:
    """Time every implementation on one cache; one row each. ``median_ms`` is by ``clock`` ('wall' or 'cpu').

    At MHA (``n_kv_heads == n_heads``) the implementations in :data:`SAME_CALL_AT_MHA` are left out:
    they would make the same call as another one. Implementations are timed round-robin (rep 1 of
    each, then rep 2 of each, ...) so that a burst of load from other programs slows all of them
    alike and the ratios stay fair. With ``ceilings`` (from ``machine.measure_ceilings``) each row gets
    its roofline columns: bytes, FLOPs, arithmetic intensity, the bound, ``pct_of_bound``
    (100 * bound / median time) and what limits the bound.
    """
    check_clock(clock)
    impls = IMPLEMENTATIONS if impls is None else impls
    if n_kv_heads == n_heads:  # these would time the very same call as another implementation
        impls = {name: fn for name, fn in impls.items() if name not in SAME_CALL_AT_MHA}
    q, k, v = make_decode_inputs(n_heads, n_kv_heads, seq_len, head_dim, dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    max_diff = check_agree(q, k, v, impls, atol=tol, rtol=tol)
    for fn in impls.values():
        for _ in range(warmup):
            fn(q, k, v)
    times = {(name, c): [] for name in impls for c in CLOCKS}
    for _ in range(reps):
        for name, fn in impls.items():
            wall, cpu = time_calls(lambda fn=fn: fn(q, k, v), 1, 0, flush)
            times[name, "wall"] += wall
            times[name, "cpu"] += cpu
    for fn in impls.values():
        if isinstance(fn, ExpandInto):
            fn.release()
    nbytes = cache_bytes_read(n_kv_heads, seq_len, head_dim, dtype)
    flops = decode_flops(n_heads, seq_len, head_dim)
    dname = DTYPE_NAMES.get(dtype, str(dtype))
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
            "max_abs_diff": max_diff,
        }
        if ceilings is not None:
            bound = roofline(nbytes, flops, ceilings["read_bytes_per_s"], ceilings["peak"][dname])
            row.update({"read_GBps": round(ceilings["read_bytes_per_s"] / 1e9, 3),
                        "peak_GFLOPs": round(ceilings["peak"][dname] / 1e9, 2),
                        "memory_bound_ms": round(bound["memory_s"] * 1e3, 6),
                        "compute_bound_ms": round(bound["compute_s"] * 1e3, 6),
                        "bound_ms": round(bound["bound_s"] * 1e3, 6), "bound_by": bound["limit"],
                        "pct_of_bound": round(100 * bound["bound_s"] / med, 2)})
        rows.append(row)
    return rows


def run_decode_benchmark(seq_lens=(1024, 4096, 16384), kv_heads=(32, 8, 1), n_heads: int = 32, head_dim: int = 128,
                         dtype: torch.dtype = torch.float32, reps: int = 20, warmup: int = 3,
                         impls: dict[str, Callable] | None = None, flush: CacheFlusher | None = None,
                         clock: str = "wall", ceilings: dict | None = None, progress=None) -> list[dict]:
    """Every (seq_len, n_kv_heads) case with the current thread count; ``flush`` runs before each timed call."""
    rows = []
    for seq_len in seq_lens:
        for kv in kv_heads:
            rows += benchmark_case(n_heads, kv, seq_len, head_dim, dtype, reps, warmup, impls, flush, clock, ceilings)
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



def check_targets(rows: list[dict], seq_len: int = 16384, n_heads: int = 32, gqa_kv: int = 8,
                  dtype: str = "fp32", threads: int = 1) -> list[dict]:
    """Issue 13's targets at ``seq_len`` tokens, ``dtype``, ``threads``; each with its value and verdict.

    ``gqa_lib`` at >= 80% of its roofline bound at ``n_heads`` and ``gqa_kv`` KV heads, and >= 2.5x
    faster than ``sdpa`` (enable_gqa) at ``gqa_kv`` KV heads. Rows need the roofline columns.
    """
    t = lambda name, kv, col="median_ms": pick(rows, name, kv, seq_len, col, dtype=dtype, threads=threads)  # noqa: E731
    out = [{"target": f"gqa_lib at {kv} KV heads: % of roofline bound", "value": t("gqa_lib", kv, "pct_of_bound"),
            "threshold": 80.0} for kv in (n_heads, gqa_kv)]
    out.append({"target": f"gqa_lib vs SDPA(enable_gqa) at {gqa_kv} KV heads: speed-up",
                "value": t("sdpa", gqa_kv) / t("gqa_lib", gqa_kv), "threshold": 2.5})
    for row in out:
        row["met"] = bool(row["value"] >= row["threshold"])
    return out

