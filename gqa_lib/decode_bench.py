"""Time one decode step of attention against a KV cache, and the memory bandwidth that bounds it.

At decode time one new query token attends to every cached key and value. The arithmetic is tiny
(about 4 FLOPs per cached number) and every cached byte is read once, so the step takes about
``cache bytes / memory read bandwidth``. Fewer KV heads mean fewer bytes, hence faster steps, as
long as the implementation does not copy the KV heads back up to one per query head first.

Three ways to compute the same step (all take q (batch, n_heads, 1, head_dim) and the cache
k, v (batch, n_kv_heads, seq, head_dim), and return (batch, n_heads, 1, head_dim)):

- ``gqa_lib``: :func:`gqa_lib.grouped_attention` as the layer calls it at decode (causal=True);
  the query heads of a group are stacked so each KV head is read once, nothing is copied, and the
  stacked rows go to PyTorch's fused attention kernel (no mask: the query is the last token).
- ``expand``: expand-then-attend as transformers' ``repeat_kv`` + eager attention do it: copy each
  KV head ``group_size`` times (expand + reshape), then ordinary multi-head attention.
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)``,
  without ``is_causal`` (which would align the mask top-left and let the query see key 0 only).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch
from torch.nn import functional as F

from .attention import grouped_attention
from .layout import AttentionLayout, attention_kind, check_positive_int

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def repeat_kv(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """(batch, n_kv_heads, seq, head_dim) -> (batch, n_kv_heads * group_size, seq, head_dim), a copy.

    Written the way transformers' ``repeat_kv`` is: a broadcast view, then a reshape that must copy
    (and nothing at all when group_size is 1).
    """
    if group_size == 1:
        return x
    b, n_kv, s, d = x.shape
    return x[:, :, None, :, :].expand(b, n_kv, group_size, s, d).reshape(b, n_kv * group_size, s, d)


def decode_gqa_lib(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """gqa_lib's grouped attention, called as GroupedQueryAttention.forward calls it (causal=True)."""
    return grouped_attention(q, k, v, causal=True)


def decode_expand(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Copy the KV heads up to one per query head, then plain attention (transformers' eager path)."""
    g = q.shape[1] // k.shape[1]
    k_all, v_all = repeat_kv(k, g), repeat_kv(v, g)  # (batch, n_heads, seq, head_dim): copies when g > 1
    scores = q @ k_all.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (batch, n_heads, 1, seq)
    return scores.softmax(dim=-1) @ v_all  # (batch, n_heads, 1, head_dim)


def decode_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PyTorch's fused attention with its own grouped-query support; no mask (the query is the last token)."""
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


def decode_grouped_explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The same grouping (no copy of K or V), but the scores written to memory and softmaxed there.

    This is the path ``grouped_attention`` takes when the caller asks for the weights, and the one
    gqa_lib used for every call before it handed the stacked rows to the fused kernel. Timing it
    next to ``gqa_lib`` separates the two gains: not copying K and V, and not writing the scores.
    """
    return grouped_attention(q, k, v, causal=True, return_weights=True)[0]


IMPLEMENTATIONS: dict[str, Callable] = {"gqa_lib": decode_gqa_lib, "expand": decode_expand, "sdpa": decode_sdpa}
# Variants timed to explain the figures (``--variants``), not compared in the targets.
VARIANTS: dict[str, Callable] = {"grouped_explicit": decode_grouped_explicit}


def cache_bytes_read(n_kv_heads: int, seq_len: int, head_dim: int, dtype: torch.dtype, batch: int = 1) -> int:
    """Bytes of K and V one decode step must read: 2 * batch * n_kv_heads * seq_len * head_dim * element size."""
    return 2 * batch * n_kv_heads * seq_len * head_dim * torch.empty((), dtype=dtype).element_size()


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


class CacheFlusher:
    """Reads a buffer larger than the CPU's last-level cache, so the next timed call finds K and V in DRAM.

    In a real model each layer has its own cache, and all the layers' caches together are far larger
    than the CPU caches, so every decode step reads its K and V from memory. Timing the same small
    cache over and over would instead measure the (much faster) last-level cache.
    """

    def __init__(self, nbytes: int = 512 * 10**6):
        self.buffer = torch.ones(nbytes // 4, dtype=torch.float32)

    def __call__(self) -> None:
        self.buffer.sum()


def measure_read_bandwidth(nbytes: int = 512 * 10**6, reps: int = 15, warmup: int = 3) -> dict:
    """Memory read bandwidth in bytes per second: median time to sum a float32 tensor of ``nbytes`` bytes.

    Summing reads every byte once and does one addition per 4 bytes, so it runs at the speed memory
    delivers data: the same bound a decode step meets. 512 MB is larger than this machine's caches.
    """
    check_positive_int("nbytes", nbytes)
    x = torch.ones(nbytes // 4, dtype=torch.float32)
    wall, cpu = time_calls(lambda: x.sum(), reps, warmup)
    med, med_cpu = statistics.median(wall), statistics.median(cpu)
    return {"bytes": x.nbytes, "median_s": med, "bytes_per_s": x.nbytes / med, "median_cpu_s": med_cpu,
            "cpu_bytes_per_s": x.nbytes / med_cpu, "best_bytes_per_s": x.nbytes / min(wall), "reps": reps,
            "threads": torch.get_num_threads()}


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


CLOCKS = ("wall", "cpu")


def benchmark_case(n_heads: int, n_kv_heads: int, seq_len: int, head_dim: int = 128,
                   dtype: torch.dtype = torch.float32, reps: int = 20, warmup: int = 3,
                   impls: dict[str, Callable] | None = None, flush: CacheFlusher | None = None,
                   clock: str = "wall") -> list[dict]:
    """Time every implementation on one cache; one row each. ``median_ms`` is by ``clock`` ('wall' or 'cpu').

    Implementations are timed round-robin (rep 1 of each, then rep 2 of each, ...) so that a burst
    of load from other programs slows all of them alike and the ratios stay fair.
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock={clock!r} is not known (valid: {', '.join(CLOCKS)})")
    impls = IMPLEMENTATIONS if impls is None else impls
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
    nbytes = cache_bytes_read(n_kv_heads, seq_len, head_dim, dtype)
    rows = []
    for name in impls:
        ts = times[name, clock]
        med = statistics.median(ts)
        q1, _, q3 = statistics.quantiles(ts, n=4) if reps > 1 else (med, med, med)
        rows.append({
            "impl": name, "n_heads": n_heads, "n_kv_heads": n_kv_heads, "kind": attention_kind(n_heads, n_kv_heads),
            "seq_len": seq_len, "head_dim": head_dim, "dtype": str(dtype).removeprefix("torch."),
            "cache_bytes_read": nbytes, "clock": clock, "median_ms": round(med * 1e3, 4),
            "q1_ms": round(q1 * 1e3, 4), "q3_ms": round(q3 * 1e3, 4), "min_ms": round(min(ts) * 1e3, 4),
            "median_wall_ms": round(statistics.median(times[name, "wall"]) * 1e3, 4),
            "median_cpu_ms": round(statistics.median(times[name, "cpu"]) * 1e3, 4), "reps": reps,
            "effective_GBps": round(nbytes / med / 1e9, 4), "max_abs_diff": max_diff,
        })
    return rows


def run_decode_benchmark(seq_lens=(1024, 4096, 16384), kv_heads=(32, 8, 1), n_heads: int = 32, head_dim: int = 128,
                         dtype: torch.dtype = torch.float32, reps: int = 20, warmup: int = 3,
                         impls: dict[str, Callable] | None = None, flush_bytes: int = 0, clock: str = "wall",
                         progress=None) -> list[dict]:
    """Every (seq_len, n_kv_heads) case; ``flush_bytes`` > 0 reads that much memory before each timed call."""
    flush = CacheFlusher(flush_bytes) if flush_bytes else None
    rows = []
    for seq_len in seq_lens:
        for kv in kv_heads:
            rows += benchmark_case(n_heads, kv, seq_len, head_dim, dtype, reps, warmup, impls, flush, clock)
            if progress is not None:
                progress(seq_len, kv)
    return rows


def median_of(rows: list[dict], impl: str, n_kv_heads: int, seq_len: int, column: str = "median_ms") -> float:
    """The ``column`` of the row for (impl, n_kv_heads, seq_len)."""
    for r in rows:
        if r["impl"] == impl and int(r["n_kv_heads"]) == n_kv_heads and int(r["seq_len"]) == seq_len:
            return float(r[column])
    raise KeyError(f"no row for impl={impl!r}, n_kv_heads={n_kv_heads}, seq_len={seq_len}")


def check_targets(rows: list[dict], read_bytes_per_s: float, seq_len: int = 16384, n_heads: int = 32,
                  gqa_kv: int = 8, impl: str = "gqa_lib") -> list[dict]:
    """The issue's speed targets at ``seq_len`` tokens for ``impl``, each with its measured value and verdict.

    Speed-ups are ratios of median times; "no slower than PyTorch" allows 10%; effective bandwidth
    (cache bytes / median time) must reach half the measured read bandwidth for MHA and GQA.
    """
    t = lambda name, kv: median_of(rows, name, kv, seq_len)  # noqa: E731
    nan = float("nan")
    out = [
        {"target": f"{impl}: MHA -> {gqa_kv} KV heads speed-up", "value": t(impl, n_heads) / t(impl, gqa_kv),
         "threshold": 2.8, "byte_ratio": n_heads / gqa_kv},
        {"target": f"{impl}: MHA -> MQA speed-up", "value": t(impl, n_heads) / t(impl, 1),
         "threshold": 10.0, "byte_ratio": float(n_heads)},
        {"target": f"{impl}: speed-up over expand-then-attend at {gqa_kv} KV heads",
         "value": t("expand", gqa_kv) / t(impl, gqa_kv), "threshold": 2.0, "byte_ratio": nan},
    ]
    for kv in (n_heads, gqa_kv, 1):
        out.append({"target": f"{impl}: speed vs PyTorch SDPA(enable_gqa) at {kv} KV heads",
                    "value": t("sdpa", kv) / t(impl, kv), "threshold": 0.9, "byte_ratio": nan})
    for kv in (n_heads, gqa_kv):
        eff = median_of(rows, impl, kv, seq_len, "effective_GBps") * 1e9
        out.append({"target": f"{impl}: effective / read bandwidth at {kv} KV heads",
                    "value": eff / read_bytes_per_s, "threshold": 0.5, "byte_ratio": nan})
    for row in out:
        row["met"] = bool(row["value"] >= row["threshold"])
    return out


IMPL_LABELS = {"gqa_lib": "gqa_lib: grouped rows, fused kernel (no copy)",
               "expand": "expand-then-attend (repeat_kv copy)", "sdpa": "PyTorch SDPA(enable_gqa=True)",
               "grouped_explicit": "grouped, scores written out (no copy)"}
IMPL_MARKERS = {"gqa_lib": "o", "expand": "s", "sdpa": "^", "grouped_explicit": "D"}


def plot_decode_times(rows: list[dict], read_bytes_per_s: float, ax=None, impls=("gqa_lib", "expand", "sdpa")):
    """Log-log: time per decode step against cache bytes read, colour = attention kind, marker = implementation.

    The dashed line is the floor set by memory: bytes / measured read bandwidth. The first
    implementation's points are labelled with the cache length in thousands of tokens (1k = 1024).
    """
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from .plots import NEUTRAL, kind_color

    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4.8))
    shown = [r for r in rows if r["impl"] in impls]
    for r in shown:
        ax.scatter(r["cache_bytes_read"] / 1e6, r["median_ms"], color=kind_color(r["kind"]),
                   marker=IMPL_MARKERS.get(r["impl"], "o"), s=46, zorder=3, edgecolor="black", linewidth=0.4)
    for r in shown:
        if r["impl"] == impls[0]:  # name the cache length once per point group
            ax.annotate(f"{r['seq_len'] // 1024}k", (r["cache_bytes_read"] / 1e6, r["median_ms"]),
                        textcoords="offset points", xytext=(7, -3), fontsize=7, color="#333333")
    nbytes = sorted(r["cache_bytes_read"] for r in shown)
    xs = [nbytes[0] / 1.5, nbytes[-1] * 1.5]
    ax.plot([x / 1e6 for x in xs], [x / read_bytes_per_s * 1e3 for x in xs], "--", color=NEUTRAL,
            label=f"memory floor: bytes / {read_bytes_per_s / 1e9:.1f} GB/s")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("KV cache bytes read per decode step (MB, 1 MB = 10^6 bytes)")
    ax.set_ylabel("time per decode step (ms, median)")
    kinds = sorted({r["kind"] for r in shown}, key=["MHA", "GQA", "MQA"].index)
    handles = [Line2D([], [], marker="o", ls="", color=kind_color(k), label=k) for k in kinds]
    handles += [Line2D([], [], marker=IMPL_MARKERS[i], ls="", color="white", markeredgecolor="black",
                       label=IMPL_LABELS[i]) for i in impls]
    handles += ax.get_legend_handles_labels()[0]
    ax.legend(handles=handles, fontsize=8, loc="lower right")  # below the memory line no run can sit
    return ax
