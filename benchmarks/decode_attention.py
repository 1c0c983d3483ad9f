"""Time one decode step of attention against its roofline: 32 query heads, 32 / 8 / 1 KV heads.

One new token (batch 1, head_dim 128) attends to a cache of 1k, 4k, 16k and 32k tokens, in fp32 and
bf16, with 1 and 2 threads. Implementations (gqa_lib/experiments/attention_roofline.py says what each does):
gqa_lib's grouped attention (each KV head read once, no copy); PyTorch's
scaled_dot_product_attention(enable_gqa=True), the same CPU kernel but each query head read on its
own, so each KV head is read group_size times; expand-then-attend as transformers' repeat_kv does it
(a fresh copy every call; with one KV head repeat_kv's reshape returns a stride-0 view instead, no
copy); and the same copy into a buffer allocated once (--variants adds grouped attention with its
scores written out). Outputs are checked equal first.

The memory bound of every case is measured on its own K and V, in turn with the implementations: a
reduction that streams K and V side by side and does nothing else (the "stream" probe), so the bound is
the least time these bytes take to read the way the kernel reads them. For each thread count the run
also measures the machine's ceilings: read bandwidth over two buffers 4x the last-level cache (size
from sysfs), and the old single-buffer sum for comparison; the matrix-multiply GFLOP/s of fp32 and
bf16 (a 2048-cubed product; the step's own products of 1, 4 and 32 query rows against a 512-key block,
the size PyTorch's kernel works in; and the kernel itself with K and V in the CPU cache). Each row gets
its bytes, FLOPs, arithmetic intensity, roofline bound max(memory bound, FLOPs / peak) and its time as
a % of that bound (100 * bound / time). No row may beat its bound by more than 5% (BOUND_TOLERANCE_PCT):
if one does, the probe is not reading the way the kernel does, and the table is not written where asked.

    .venv/bin/python benchmarks/decode_attention.py --overwrite   # the shipped table (benchmarks/README.md)
    .venv/bin/python benchmarks/decode_attention.py --seq-lens 1024 --dtypes fp32 --threads 1 --reps 3 --out /tmp/d.csv

Timing: median of --reps calls after --warmup calls, the implementations and probes taking turns (each
rep's times are kept, so ratios get intervals rep by rep). Each timed call reads the next of several
copies of K and V that together hold --rotate-factor last-level caches, so K and V come from memory,
not the CPU cache, as in a model whose layers each have their own cache. With 1 thread the clock is the
process's CPU time (it leaves out time the scheduler gave to other programs on a shared machine);
with more, elapsed time.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import torch  # noqa: E402

from gqa_lib.experiments import bench_cli, results  # noqa: E402
from gqa_lib.experiments.attention_roofline import (  # noqa: E402
    BOUND_TOLERANCE_PCT,
    DTYPES,
    IMPLEMENTATIONS,
    VARIANTS,
    check_targets,
    pick,
    rows_over_bound,
    run_decode_benchmark,
)
from gqa_lib.experiments.machine import clock_for, last_level_cache, measure_ceilings  # noqa: E402

MIN_ROTATE_FACTOR, MIN_BANDWIDTH_FACTOR = 2, 4
TIMES = ("median_ms", "q1_ms", "q3_ms", "min_ms", "median_wall_ms", "median_cpu_ms", "effective_GBps",
         "attained_GFLOPs", "max_abs_diff", "stream_ms", "read_GBps", "peak_GFLOPs", "memory_bound_ms",
         "compute_bound_ms", "bound_ms", "pct_of_bound")


def parse_args(argv=None):
    p = bench_cli.command_parser(__doc__)
    p.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 4096, 16384, 32768], help="cached tokens")
    p.add_argument("--kv-heads", type=int, nargs="+", default=[32, 8, 1], help="KV-head counts (must divide --n-heads)")
    p.add_argument("--n-heads", type=int, default=32, help="query heads (default 32)")
    p.add_argument("--head-dim", type=int, default=128, help="head dimension (default 128)")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"],
                   help=f"element types of q, K, V (default fp32 bf16; valid: {', '.join(DTYPES)})")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts (default 1 2)")
    p.add_argument("--reps", type=int, default=9, help="timed calls per implementation and case (default 9)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (default 1)")
    p.add_argument("--rotate-factor", type=bench_cli.finite_float, default=2.0,
                   help=f"bytes of the K/V copies each case rotates through, in last-level caches (default 2, at "
                        f"least {MIN_ROTATE_FACTOR})")
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
    if args.rotate_factor < MIN_ROTATE_FACTOR:
        p.error(f"--rotate-factor={args.rotate_factor} must be at least {MIN_ROTATE_FACTOR}: fewer copies leave "
                "part of K and V in the last-level cache")
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

    A lower bound, so that nothing that fits is refused: the copies of K and V that the largest case rotates
    through (at least two of the largest --seq-lens at the most --kv-heads in the widest of --dtypes; the
    implementations copy them to --n-heads heads on top), or the three --gemm-size squared fp32 matrices of the
    peak's product.
    """
    try:
        import psutil  # a dependency of the notebook stack; without it the allocation itself reports
    except ImportError:  # pragma: no cover
        return None
    free = psutil.virtual_memory().available
    widest = max(DTYPES[d].itemsize for d in args.dtypes)
    cache = 2 * 2 * max(args.kv_heads) * max(args.seq_lens) * args.head_dim * widest  # two copies at least
    if cache > free:
        return (f"--seq-lens {max(args.seq_lens)}: two copies of K and V at --kv-heads {max(args.kv_heads)}, "
                f"--head-dim {args.head_dim} in {widest} bytes a number need {cache / 1e9:,.1f} GB, and "
                f"{free / 1e9:,.1f} GB is free; lower --seq-lens")
    gemm = 3 * args.gemm_size ** 2 * 4
    if gemm > free:
        return (f"--gemm-size {args.gemm_size}: three {args.gemm_size} x {args.gemm_size} float32 matrices need "
                f"{gemm / 1e9:,.1f} GB, and {free / 1e9:,.1f} GB is free; lower --gemm-size")
    return None


def print_ceilings(c: dict) -> None:
    peaks = ", ".join(f"{d} {f / 1e9:.0f}" for d, f in c["peak"].items())
    thin = ", ".join(f"{d} {g} row(s) {f / 1e9:.0f}" for (d, g), f in c["decode_gemm"].items())
    kern = ", ".join(f"{d} {g} row(s) {f / 1e9:.0f}" for (d, g), f in c["kernel_in_cache"].items())
    print(f"ceilings, {c['threads']} thread(s), {c['clock']} clock: read bandwidth "
          f"{c['read_bytes_per_s'] / 1e9:.2f} GB/s (two streams of {c['bandwidth_bytes'] / 2e6:.0f} MB; one summed "
          f"buffer: {c['sum_read_bytes_per_s'] / 1e9:.2f}); GEMM {c['gemm_shape']} GFLOP/s: {peaks}; "
          f"block products {c['decode_gemm_shape']} GFLOP/s: {thin}; the kernel with K and V in cache GFLOP/s: {kern}",
          flush=True)


TABLE = {"dtype": 5, "thr": 3, "tokens": 6, "KV": 3, "impl": 16, "MB": 7, "FLOP/B": 6, "median ms": 9, "IQR ms": 15,
         "bound ms": 8, "by": 7, "% bound": 7}  # the printed table's column titles and widths


def table_cells(r: dict) -> tuple:
    """A row of the printed table, in TABLE's order."""
    return (r["dtype"], r["threads"], r["seq_len"], r["n_kv_heads"], r["impl"], f"{r['cache_bytes_read'] / 1e6:.1f}",
            f"{r['flop_per_byte']:.2f}", f"{r['median_ms']:.2f}", f"{r['q1_ms']:.2f}-{r['q3_ms']:.2f}",
            f"{r['bound_ms']:.2f}", r["bound_by"], f"{r['pct_of_bound']:.1f}%")


def print_targets(rows: list[dict], ceilings: dict, seq_len: int, n_heads: int) -> None:
    """What a grouped kernel should reach at ``seq_len`` tokens, 1 thread, with 95% intervals and a verdict each;
    then, for the rows without a target, what limits them."""
    print(f"\nTargets at {seq_len} tokens, 1 thread, fp32: gqa_lib reads each byte once, so it should run near its "
          "memory bound, and faster than SDPA(enable_gqa), which reads each KV head once per query head "
          "(95% intervals rep by rep; 'met' where Holm-adjusted p < 0.05 over the three):")
    for t in check_targets(rows, seq_len, n_heads, 8, "fp32", 1):
        print(f"  [{t['verdict']}] {t['target']}: {t['value']:.2f} (rep by rep {t['ratio']:.2f}, 95% interval "
              f"{t['low']:.2f}-{t['high']:.2f}; target >= {t['threshold']}; p {t['p']:.3g}, Holm {t['p_holm']:.3g})")
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
                  f"block products of its shape {thin[dtype, n_heads // kv] / 1e9:.0f}; "
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
    rotate = rotate_bytes(args, llc)
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
                      f"({time.perf_counter() - start:.0f} s, load {os.getloadavg()[0]:.2f})", flush=True)

            rows += run_decode_benchmark(args.seq_lens, args.kv_heads, args.n_heads, args.head_dim, dtype, args.reps,
                                         args.warmup, impls, rotate, clock_for(threads), c, progress)
    torch.set_num_threads(before_threads)
    for r in rows:
        r["role"] = "variant" if r["impl"] in VARIANTS else "compared"
    meta = {
        "what": "one decode step of attention (batch 1, one new token) against a KV cache; median over reps",
        "command": results.command_line(), **results.environment_metadata(),
        "last_level_cache_bytes": str(llc["bytes"]), "last_level_cache_source": llc["source"],
        "rotation": f"each timed call reads the next of several copies of K and V, {rotate / 1e6:.0f} MB in all "
                    f"({args.rotate_factor:g}x the last-level cache)",
        "clock": "cpu (process time) with 1 thread, wall with more",
        "roofline": "bound = max(memory bound, FLOPs / GEMM peak); memory bound = median time of the stream probe "
                    "(a dot product of the case's K and V bytes, timed in turn with the implementations); "
                    "pct_of_bound = 100 * bound / median",
        "bound_tolerance_pct": f"{BOUND_TOLERANCE_PCT:g}",
    }
    for threads, c in ceilings.items():
        meta[f"read_bandwidth_GBps_{threads}t"] = f"{c['read_bytes_per_s'] / 1e9:.3f}"
        meta[f"read_bandwidth_sum_GBps_{threads}t"] = f"{c['sum_read_bytes_per_s'] / 1e9:.3f}"
        for d in c["peak"]:
            meta[f"gemm_peak_GFLOPs_{d}_{threads}t"] = f"{c['peak'][d] / 1e9:.1f}"
        for (d, g), f in c["decode_gemm"].items():
            meta[f"decode_gemm_GFLOPs_{d}_{g}rows_{threads}t"] = f"{f / 1e9:.1f}"
        for (d, g), f in c.get("kernel_in_cache", {}).items():
            meta[f"kernel_in_cache_GFLOPs_{d}_{g}rows_{threads}t"] = f"{f / 1e9:.1f}"
    any_c = next(iter(ceilings.values()))
    meta.update({"bandwidth_buffer_bytes": str(any_c["bandwidth_bytes"]),
                 "bandwidth_probe": "read_bandwidth: a dot product of two float32 buffers (two streams, as K and V); "
                                    "read_bandwidth_sum: the sum of one buffer (one stream)",
                 "gemm_shape": any_c["gemm_shape"],
                 "decode_gemm_shape": any_c.get("decode_gemm_shape", "") + " for 8 blocks, rows = query heads per "
                                      "KV head",
                 "kernel_in_cache": "scaled_dot_product_attention on rows query rows against one KV head of 4096 "
                                    "tokens per thread, called over and over so K and V stay in the CPU cache",
                 "loadavg_before": " ".join(f"{x:.2f}" for x in load_before),
                 "loadavg_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                 "wall_seconds": f"{time.perf_counter() - start:.0f}",
                 "cpu_seconds": f"{time.process_time():.0f}"})
    over = rows_over_bound(rows)
    if over:  # a ceiling that a row beats is no ceiling: keep the rows, but not where the table is trusted
        print(f"{len(over)} row(s) beat their bound by more than {BOUND_TOLERANCE_PCT:g}%: the stream probe is not "
              "reading as the kernel does, or K and V stayed cached:\n  " + "\n  ".join(over), file=sys.stderr)
        args.out, args.overwrite = Path(tempfile.mkdtemp(prefix="decode_attention-")) / "over_bound.csv", False
        label = ("dtype", "threads", "seq_len", "n_kv_heads", "impl")
        if results.refuse_non_finite(args.out, rows, TIMES, label=label):
            return 1
        results.save_rows(args.out, rows, meta)
        print(f"the rows are in {args.out}, not in the file asked for", file=sys.stderr)
        return 1
    return results.save_and_report(args, rows, meta, finite=TIMES,
                                   label=("dtype", "threads", "seq_len", "n_kv_heads", "impl"),
                                   summary=lambda: print_summary(rows, ceilings, args))


def print_summary(rows: list[dict], ceilings: dict, args) -> None:
    """The table, then the targets where the run has their cases (printed after the CSV is saved)."""
    bench_cli.print_table(rows, TABLE, table_cells)
    target_len = 16384 if 16384 in args.seq_lens else max(args.seq_lens)
    if {args.n_heads, 8, 1} <= set(args.kv_heads) and 1 in args.threads and "fp32" in args.dtypes \
            and args.reps > 1:
        print_targets(rows, ceilings, target_len, args.n_heads)


def rotate_bytes(args, llc) -> int:
    return int(args.rotate_factor * llc["bytes"])


if __name__ == "__main__":
    raise SystemExit(main())
