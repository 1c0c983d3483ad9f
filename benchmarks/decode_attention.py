"""Time one decode step of attention against a KV cache: 32 query heads, 32 / 8 / 1 KV heads, three implementations.

One new token (batch 1, head_dim 128) attends to a cache of 1k, 4k and 16k tokens. Implementations:
gqa_lib's grouped attention (no copy), expand-then-attend (transformers' repeat_kv, a copy), and
PyTorch's scaled_dot_product_attention(enable_gqa=True); --variants adds the grouped attention with
its scores written out. Outputs are checked equal first. The
machine's memory read bandwidth (summing a 512 MB tensor) is measured too, and each run's effective
bandwidth (cache bytes read / time) is reported against it.

    .venv/bin/python benchmarks/decode_attention.py --variants   # the shipped table (~1.5 min on a quiet machine)
    .venv/bin/python benchmarks/decode_attention.py --seq-lens 1024 --reps 5 --out /tmp/decode.csv

Timing: median of --reps calls after --warmup calls, the implementations taking turns. Before each
timed call a 512 MB buffer is read so that K and V come from memory, not the CPU cache, as in a model
whose layers' caches together exceed it (--no-flush to skip). With one thread (the default) the
clock is the process's CPU time, which leaves out time the scheduler gave to other programs on a
shared machine; --clock wall measures elapsed time (use it with --threads N on a quiet machine).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import torch  # noqa: E402

from gqa_lib import results  # noqa: E402  (CSV writing and the options every benchmark shares)
from gqa_lib.decode_bench import (  # noqa: E402
    DTYPES,
    IMPLEMENTATIONS,
    VARIANTS,
    check_targets,
    measure_read_bandwidth,
    run_decode_benchmark,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-lens", type=int, nargs="+", default=[1024, 4096, 16384], help="cached tokens")
    p.add_argument("--kv-heads", type=int, nargs="+", default=[32, 8, 1], help="KV-head counts (must divide --n-heads)")
    p.add_argument("--n-heads", type=int, default=32, help="query heads (default 32)")
    p.add_argument("--head-dim", type=int, default=128, help="head dimension (default 128)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="element type of q, K, V (default fp32)")
    p.add_argument("--reps", type=int, default=25, help="timed calls per implementation and case (default 25)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--clock", choices=["auto", "cpu", "wall"], default="auto",
                   help="what median_ms measures: process CPU time or elapsed time "
                        "(auto: cpu with 1 thread, else wall)")
    p.add_argument("--no-flush", action="store_true", help="do not evict the CPU caches before each timed call")
    p.add_argument("--variants", action="store_true",
                   help="also time grouped attention with the scores written out (separates the gain of "
                        "not copying K/V from that of the fused kernel)")
    p.add_argument("--bandwidth-mb", type=int, default=512, help="size of the tensor summed for bandwidth (MB)")
    results.add_output_options(p, "decode_attention_cpu.csv")
    args = p.parse_args(argv)
    results.require_at_least_one(p, args, ("reps", "threads", "n_heads", "head_dim", "bandwidth_mb"))
    for kv in args.kv_heads:
        if kv < 1 or args.n_heads % kv:
            p.error(f"--kv-heads {kv} must divide --n-heads={args.n_heads}")
    if args.clock == "auto":
        args.clock = "cpu" if args.threads == 1 else "wall"
    return args


def print_table(rows: list[dict], read_gbps: float) -> None:
    print(f"\n{'tokens':>6} {'KV heads':>8} {'cache MB':>9} {'impl':>15} {'median ms':>10} {'IQR ms':>17} "
          f"{'eff. GB/s':>9} {'% of read bw':>12}")
    for r in rows:
        iqr = f"{r['q1_ms']:.2f}-{r['q3_ms']:.2f}"
        share = 100 * r["effective_GBps"] / read_gbps
        print(f"{r['seq_len']:>6} {r['n_kv_heads']:>8} {r['cache_bytes_read'] / 1e6:>9.1f} {r['impl']:>15} "
              f"{r['median_ms']:>10.2f} {iqr:>17} {r['effective_GBps']:>9.2f} {share:>11.0f}%")


def print_targets(targets: list[dict]) -> None:
    for t in targets:
        ratio = f" (byte ratio {t['byte_ratio']:.0f}x)" if t["byte_ratio"] == t["byte_ratio"] else ""
        verdict = "met " if t["met"] else "MISS"
        print(f"  [{verdict}] {t['target']}: {t['value']:.2f} (target >= {t['threshold']}){ratio}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if results.output_blocked(args.out, args.overwrite):
        return 1
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    start = time.perf_counter()
    bw = measure_read_bandwidth(args.bandwidth_mb * 10**6, reps=15)
    read_bps = bw["cpu_bytes_per_s"] if args.clock == "cpu" else bw["bytes_per_s"]
    print(f"memory read bandwidth ({args.threads} thread(s), {args.clock} clock, sum of {bw['bytes'] / 1e6:.0f} MB): "
          f"{read_bps / 1e9:.2f} GB/s (median of {bw['reps']})")
    impls = {**IMPLEMENTATIONS, **(VARIANTS if args.variants else {})}

    def progress(seq_len, kv):
        print(f"  done: {seq_len} tokens, {kv} KV heads ({time.perf_counter() - start:.0f} s)", flush=True)

    rows = run_decode_benchmark(args.seq_lens, args.kv_heads, args.n_heads, args.head_dim, DTYPES[args.dtype],
                                args.reps, args.warmup, impls, 0 if args.no_flush else 512 * 10**6, args.clock,
                                progress)
    for r in rows:
        r["role"] = "variant" if r["impl"] in VARIANTS else "compared"
        r["read_GBps"] = round(read_bps / 1e9, 4)
    print_table(rows, read_bps / 1e9)
    biggest = max(args.seq_lens)
    if {args.n_heads, 8, 1} <= set(args.kv_heads):
        print(f"\nTargets at {biggest} tokens:")
        print_targets(check_targets(rows, read_bps, biggest, args.n_heads, 8, "gqa_lib"))
    meta = {
        "what": "one decode step of attention (batch 1, one new token) against a KV cache; median over reps",
        "command": results.command_line(), **results.environment_metadata(), "clock": args.clock,
        "cache_flush": "no" if args.no_flush else "512 MB read before each timed call",
        "read_bandwidth_GBps": f"{read_bps / 1e9:.3f}",
        "read_bandwidth_wall_GBps": f"{bw['bytes_per_s'] / 1e9:.3f}",
        "read_bandwidth_cpu_GBps": f"{bw['cpu_bytes_per_s'] / 1e9:.3f}",
        "loadavg_before": " ".join(f"{x:.2f}" for x in load_before),
        "loadavg_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "wall_seconds": f"{time.perf_counter() - start:.0f}",
    }
    try:
        path = results.write_results(args.out, rows, meta, overwrite=args.overwrite)
    except results.ResultsExistError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"\nwrote {path} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
