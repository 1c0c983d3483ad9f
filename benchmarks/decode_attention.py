"""Time one decode step of attention against its roofline: 32 query heads, 32 / 8 / 1 KV heads.

One new token (batch 1, head_dim 128) attends to a cache of 1k, 4k, 16k and 32k tokens, in fp32 and
bf16, with 1 and 2 threads. Implementations (gqa_lib/experiments/attention_roofline.py says what each does):
gqa_lib's grouped attention (each KV head read once, no copy); PyTorch's
scaled_dot_product_attention(enable_gqa=True), the same CPU kernel but each query head read on its
own, so each KV head is read group_size times; expand-then-attend as transformers' repeat_kv does it
(a fresh copy every call; with one KV head repeat_kv's reshape returns a stride-0 view instead, no
copy); and the same copy into a buffer allocated once (--variants adds grouped attention with its
scores written out). Outputs are checked equal first.

In the same run, for each thread count, the two roofline ceilings are measured: the memory read
bandwidth (summing a buffer 4x the last-level cache, whose size is read from sysfs) and the
matrix-multiply GFLOP/s of fp32 and bf16 (a 2048-cubed product, and the decode step's own thin
shape). Each row gets its bytes, FLOPs, arithmetic intensity, roofline bound
max(bytes / bandwidth, FLOPs / peak) and its time as a % of that bound (100 * bound / time).

    .venv/bin/python benchmarks/decode_attention.py --overwrite   # the shipped table (~7 min on 2 idle cores)
    .venv/bin/python benchmarks/decode_attention.py --seq-lens 1024 --dtypes fp32 --threads 1 --reps 3 --out /tmp/d.csv

Timing: median of --reps calls after --warmup calls, the implementations taking turns. Before each
timed call a buffer twice the last-level cache is read, so K and V come from memory, not the CPU
cache, as in a model whose layers' caches together exceed it. With 1 thread the clock is the
process's CPU time (it leaves out time the scheduler gave to other programs on a shared machine);
with more, elapsed time.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import torch  # noqa: E402

from gqa_lib.experiments import bench_cli, results  # noqa: E402
from gqa_lib.experiments.attention_roofline import (  # noqa: E402
    DTYPES,
    IMPLEMENTATIONS,
    VARIANTS,
    check_targets,
    pick,
    run_decode_benchmark,
)
from gqa_lib.experiments.machine import CacheFlusher, clock_for, last_level_cache, measure_ceilings  # noqa: E402

MIN_FLUSH_FACTOR, MIN_BANDWIDTH_FACTOR = 2, 4
TIMES = ("median_ms", "q1_ms", "q3_ms", "min_ms", "median_wall_ms", "median_cpu_ms", "effective_GBps",
         "attained_GFLOPs", "max_abs_diff", "read_GBps", "peak_GFLOPs", "memory_bound_ms", "compute_bound_ms",
         "bound_ms", "pct_of_bound")


def parse_args(argv=None):
    p = bench_cli.command_parser(__doc__)
    p.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 4096, 16384, 32768], help="cached tokens")
    p.add_argument("--kv-heads", type=int, nargs="+", default=[32, 8, 1], help="KV-head counts (must divide --n-heads)")
    p.add_argument("--n-heads", type=int, default=32, help="query heads (default 32)")
    p.add_argument("--head-dim", type=int, default=128, help="head dimension (default 128)")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"],
                   help=f"element types of q, K, V (default fp32 bf16; valid: {', '.join(DTYPES)})")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts (default 1 2)")
    p.add_argument("--reps", type=int, default=11, help="timed calls per implementation and case (default 11)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    p.add_argument("--flush-factor", type=bench_cli.finite_float, default=2.0,
                   help=f"cache flush buffer, in last-level caches (default 2, at least {MIN_FLUSH_FACTOR})")
    p.add_argument("--bandwidth-factor", type=bench_cli.finite_float, default=4.0,
                   help=f"bandwidth buffer, in last-level caches (default 4, at least {MIN_BANDWIDTH_FACTOR})")
    p.add_argument("--gemm-size", type=int, default=2048, help="side of the square GEMM for the peak (default 2048)")
    p.add_argument("--variants", action="store_true",
                   help="also time grouped attention with the scores written out (separates the gain of "
                        "not copying K/V from that of the fused kernel)")
    args = bench_cli.parse_options(p, argv, "decode_attention_cpu.csv")
    # Every option is checked here, before any memory is allocated or anything timed.
    bench_cli.require_at_least_one(p, args, ("reps", "n_heads", "head_dim", "gemm_size"))
    if args.warmup < 0:
        p.error(f"--warmup={args.warmup} must be 0 or more")
    for name in ("seq_lens", "threads"):
        for x in getattr(args, name):
            if x < 1:
                p.error(f"--{name.replace('_', '-')} {x} must be at least 1")
    cpus = os.cpu_count() or 1
    for t in args.threads:
        if t > cpus:
            p.error(f"--threads {t} is more than the {cpus} CPUs this machine has")
    for kv in args.kv_heads:
        if kv < 1 or args.n_heads % kv:
            p.error(f"--kv-heads {kv} must be at least 1 and divide --n-heads={args.n_heads}")
    for d in args.dtypes:
        if d not in DTYPES:
            p.error(f"--dtypes {d!r} is not known (valid: {', '.join(DTYPES)})")
    if args.flush_factor < MIN_FLUSH_FACTOR:
        p.error(f"--flush-factor={args.flush_factor} must be at least {MIN_FLUSH_FACTOR}: a smaller flush "
                "leaves part of K and V in the last-level cache")
    if args.bandwidth_factor < MIN_BANDWIDTH_FACTOR:
        p.error(f"--bandwidth-factor={args.bandwidth_factor} must be at least {MIN_BANDWIDTH_FACTOR}: a smaller "
                "buffer is partly read from the last-level cache")
    # A value given twice would make two rows of one case, and the targets (one row per case) could not be read.
    bench_cli.refuse_repeats(p, args, ("seq_lens", "kv_heads", "dtypes", "threads"))
    problem = memory_problem(args)
    if problem:
        p.error(problem)
    return args


def memory_problem(args) -> str | None:
    """Why the largest case cannot fit in the memory free now, or None (also None where it cannot be known).

    A lower bound, so that nothing that fits is refused: K and V of the largest --seq-lens at the most --kv-heads
    in the widest of --dtypes (the implementations copy them to --n-heads heads on top), or the three
    --gemm-size squared fp32 matrices of the peak's product.
    """
    try:
        import psutil  # a dependency of the notebook stack; without it the allocation itself reports
    except ImportError:  # pragma: no cover
        return None
    free = psutil.virtual_memory().available
    widest = max(DTYPES[d].itemsize for d in args.dtypes)
    cache = 2 * max(args.kv_heads) * max(args.seq_lens) * args.head_dim * widest
    if cache > free:
        return (f"--seq-lens {max(args.seq_lens)}: K and V alone at --kv-heads {max(args.kv_heads)}, --head-dim "
                f"{args.head_dim} in {widest} bytes a number need {cache / 1e9:,.1f} GB, and {free / 1e9:,.1f} GB "
                "is free; lower --seq-lens")
    gemm = 3 * args.gemm_size ** 2 * 4
    if gemm > free:
        return (f"--gemm-size {args.gemm_size}: three {args.gemm_size} x {args.gemm_size} float32 matrices need "
                f"{gemm / 1e9:,.1f} GB, and {free / 1e9:,.1f} GB is free; lower --gemm-size")
    return None


def print_ceilings(c: dict) -> None:
    peaks = ", ".join(f"{d} {f / 1e9:.0f}" for d, f in c["peak"].items())
    thin = ", ".join(f"{d} {g} row(s) {f / 1e9:.0f}" for (d, g), f in c["decode_gemm"].items())
    print(f"ceilings, {c['threads']} thread(s), {c['clock']} clock: "
          f"read bandwidth {c['read_bytes_per_s'] / 1e9:.2f} GB/s (sum of {c['bandwidth_bytes'] / 1e6:.0f} MB); "
          f"GEMM {c['gemm_shape']} GFLOP/s: {peaks}; "
          f"decode-shape GEMM (rows x {c['head_dim']}) @ ({c['head_dim']} x {c['seq_len']}) GFLOP/s: {thin}",
          flush=True)


TABLE = {"dtype": 5, "thr": 3, "tokens": 6, "KV": 3, "impl": 16, "MB": 7, "FLOP/B": 6, "median ms": 9, "IQR ms": 15,
         "bound ms": 8, "by": 7, "% bound": 7}  # the printed table's column titles and widths


def table_cells(r: dict) -> tuple:
    """A row of the printed table, in TABLE's order."""
    return (r["dtype"], r["threads"], r["seq_len"], r["n_kv_heads"], r["impl"], f"{r['cache_bytes_read'] / 1e6:.1f}",
            f"{r['flop_per_byte']:.2f}", f"{r['median_ms']:.2f}", f"{r['q1_ms']:.2f}-{r['q3_ms']:.2f}",
            f"{r['bound_ms']:.2f}", r["bound_by"], f"{r['pct_of_bound']:.1f}%")


def print_targets(rows: list[dict], ceilings: dict, seq_len: int, n_heads: int) -> None:
    """Issue 13's targets at ``seq_len`` tokens, 1 thread; and what limits the rows that have no target."""
    print(f"\nTargets at {seq_len} tokens, 1 thread (fp32 unless said):")
    for t in check_targets(rows, seq_len, n_heads, 8, "fp32", 1):
        print(f"  [{'met ' if t['met'] else 'MISS'}] {t['target']}: {t['value']:.2f} (target >= {t['threshold']})")
    thin = ceilings[1]["decode_gemm"]
    for dtype in [d for d in ("fp32", "bf16") if any(r["dtype"] == d for r in rows)]:
        for kv in (n_heads, 8, 1):
            if (dtype, kv) == ("fp32", n_heads) or (dtype, kv) == ("fp32", 8):
                continue
            get = lambda col, kv=kv, dtype=dtype: pick(rows, "gqa_lib", kv, seq_len, col, dtype=dtype, threads=1)  # noqa: E731
            bound_by = "memory" if get("memory_bound_ms") >= get("compute_bound_ms") else "compute"
            attained = get("attained_GFLOPs")
            print(f"  [report] gqa_lib {dtype} at {kv} KV heads: {get('pct_of_bound'):.1f}% of the bound "
                  f"({get('median_ms'):.2f} ms against memory {get('memory_bound_ms'):.2f} ms, compute "
                  f"{get('compute_bound_ms'):.2f} ms: {bound_by}-bound); attains {attained:.0f} GFLOP/s, "
                  f"a GEMM of its shape {thin[dtype, n_heads // kv] / 1e9:.0f}; "
                  f"effective {get('effective_GBps'):.2f} GB/s")


def main(argv=None) -> int:
    args = parse_args(argv)
    if bench_cli.output_blocked(args.out, args.overwrite):
        return 1
    load_before = os.getloadavg()
    start = time.perf_counter()
    llc = last_level_cache()
    print(f"last-level cache: {llc['bytes'] / 2**20:.0f} MiB (L{llc['level']}, {llc['source']})")
    dtypes = [DTYPES[d] for d in args.dtypes]
    impls = {**IMPLEMENTATIONS, **(VARIANTS if args.variants else {})}
    flush = CacheFlusher(int(args.flush_factor * llc["bytes"]))
    ceilings, rows = {}, []
    before_threads = torch.get_num_threads()
    for threads in args.threads:
        c = ceilings[threads] = measure_ceilings(threads, dtypes, args.n_heads, args.head_dim, max(args.seq_lens),
                                                 int(args.bandwidth_factor * llc["bytes"]), args.gemm_size,
                                                 sorted({args.n_heads // kv for kv in args.kv_heads}))
        c["head_dim"], c["seq_len"] = args.head_dim, max(args.seq_lens)
        print_ceilings(c)
        torch.set_num_threads(threads)
        for dname, dtype in zip(args.dtypes, dtypes, strict=True):
            def progress(seq_len, kv, dname=dname, threads=threads):
                print(f"  done: {dname}, {threads} thread(s), {seq_len} tokens, {kv} KV heads "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)

            rows += run_decode_benchmark(args.seq_lens, args.kv_heads, args.n_heads, args.head_dim, dtype, args.reps,
                                         args.warmup, impls, flush, clock_for(threads), c, progress)
    torch.set_num_threads(before_threads)
    del flush
    for r in rows:
        r["role"] = "variant" if r["impl"] in VARIANTS else "compared"
    meta = {
        "what": "one decode step of attention (batch 1, one new token) against a KV cache; median over reps",
        "command": results.command_line(), **results.environment_metadata(),
        "last_level_cache_bytes": str(llc["bytes"]), "last_level_cache_source": llc["source"],
        "cache_flush": f"{flush_bytes(args, llc) / 1e6:.0f} MB ({args.flush_factor:g}x the last-level cache) "
                       "read before each timed call",
        "clock": "cpu (process time) with 1 thread, wall with more",
        "roofline": "bound = max(cache bytes / read bandwidth, FLOPs / GEMM peak); pct_of_bound = 100 * bound / median",
    }
    for threads, c in ceilings.items():
        meta[f"read_bandwidth_GBps_{threads}t"] = f"{c['read_bytes_per_s'] / 1e9:.3f}"
        for d in c["peak"]:
            meta[f"gemm_peak_GFLOPs_{d}_{threads}t"] = f"{c['peak'][d] / 1e9:.1f}"
        for (d, g), f in c["decode_gemm"].items():
            meta[f"decode_gemm_GFLOPs_{d}_{g}rows_{threads}t"] = f"{f / 1e9:.1f}"
    any_c = next(iter(ceilings.values()))
    meta.update({"bandwidth_buffer_bytes": str(any_c["bandwidth_bytes"]), "gemm_shape": any_c["gemm_shape"],
                 "decode_gemm_shape": f"(1, rows, {args.head_dim}) @ (1, {args.head_dim}, {max(args.seq_lens)}), "
                                      "rows = query heads per KV head",
                 "loadavg_before": " ".join(f"{x:.2f}" for x in load_before),
                 "loadavg_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                 "wall_seconds": f"{time.perf_counter() - start:.0f}",
                 "cpu_seconds": f"{time.process_time():.0f}"})
    return results.save_and_report(args, rows, meta, finite=TIMES,
                                   label=("dtype", "threads", "seq_len", "n_kv_heads", "impl"),
                                   summary=lambda: print_summary(rows, ceilings, args))


def print_summary(rows: list[dict], ceilings: dict, args) -> None:
    """The table, then issue 13's targets where the run has their cases (printed after the CSV is saved)."""
    bench_cli.print_table(rows, TABLE, table_cells)
    target_len = 16384 if 16384 in args.seq_lens else max(args.seq_lens)
    if {args.n_heads, 8, 1} <= set(args.kv_heads) and 1 in args.threads and "fp32" in args.dtypes:
        print_targets(rows, ceilings, target_len, args.n_heads)


def flush_bytes(args, llc) -> int:
    return int(args.flush_factor * llc["bytes"]) // 4 * 4


if __name__ == "__main__":
    raise SystemExit(main())
