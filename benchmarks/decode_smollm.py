"""Time SmolLM2-135M-Instruct generating after long prompts: as released (3 KV heads), its MHA twin, 1 KV head.

After a prompt of 1000, 4000 and 8000 tokens, each model generates --new-tokens tokens greedily, on
gqa_lib's path (SmolLMDecoder with gqa_lib's attention layers and KVCache) and with transformers'
generate (its SDPA attention), once with its growing DynamicCache and once with its StaticCache,
allocated once for the prompt and the new tokens. The three models:

- released: 9 query heads share 3 KV heads, as trained;
- mha_twin: the 3 KV heads copied to 9 (gqa_lib.core.kv_head_conversion.expand_to_mha): the same logits, 3x the cache;
- kv1_mean: 1 KV head, the mean of the 3 (gqa_lib.core.kv_head_conversion.reduce_kv_heads); not uptrained, timed only.

Each row has tokens per second, the bytes one step reads (float32 weights + float32 cache of the mean
context) and the tokens per second that memory read bandwidth predicts (bandwidth / bytes). The
bandwidth is measured in the same run by streaming two buffers of 4x the last-level cache together
(size from sysfs), as a step reads its weights and caches. Each variant's attention is also timed alone
(gqa_lib's kernel on the 30 layers' real caches, the CPU cache flushed before each pass).

    .venv/bin/python benchmarks/decode_smollm.py --prefill-threads 2   # the shipped table (benchmarks/README.md)
    .venv/bin/python benchmarks/decode_smollm.py --seq-lens 256 --new-tokens 4 --reps 2 --out /tmp/d.csv

Prompt: the series' own sentences (data/prompts.json) repeated, cut at the prompt length; deterministic
and offline. Timing: one thread (--threads); the clock is the process's CPU time with one thread, which
leaves out time the scheduler gave to other programs (--clock wall for elapsed time); a rep generates
--new-tokens tokens, the median over --reps reps after one untimed warm-up rep, the models and paths
taking turns. The prompt's prefill is not timed (--prefill-threads threads).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import torch  # noqa: E402

from gqa_lib.experiments import bench_cli, results  # noqa: E402
from gqa_lib.experiments.machine import (  # noqa: E402
    CacheFlusher,
    bandwidth_buffer_bytes,
    last_level_cache,
    measure_bandwidth,
)
from gqa_lib.experiments.model_decode_speed import (  # noqa: E402
    PATHS,
    TARGET,  # released over MHA twin at the longest prompt: a path that adds little to its bytes keeps most of 1.87x
    VARIANTS,
    check_target,
    run_decode_speed,
    speedup,
)
from gqa_lib.models.catalog import get_model  # noqa: E402

CONTEXT = get_model("SmolLM2-135M").context  # 8192: positions the model was trained on (data/models.json)


def parse_args(argv=None):
    p = bench_cli.command_parser(__doc__)
    p.add_argument("--seq-lens", type=int, nargs="+", default=[1000, 4000, 8000], help="prompt tokens")
    p.add_argument("--new-tokens", type=int, default=16, help="tokens generated per timed rep (default 16)")
    p.add_argument("--reps", type=int, default=6, help="timed reps per model and path (default 6)")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads while decoding (default 1)")
    p.add_argument("--prefill-threads", type=int, default=1, help="threads for the untimed prefill (default 1)")
    p.add_argument("--clock", choices=["auto", "cpu", "wall"], default="auto",
                   help="what tokens_per_s divides by (auto: process CPU time with 1 thread, else wall)")
    p.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), help="which paths to time")
    p.add_argument("--hf-attention", choices=["sdpa", "eager"], default="sdpa",
                   help="transformers' attention implementation (default sdpa; eager copies K/V with repeat_kv)")
    args = bench_cli.parse_options(p, argv, "decode_smollm_cpu.csv")
    bench_cli.require_at_least_one(p, args, ("new_tokens", "reps", "threads", "prefill_threads"))
    for n in args.seq_lens:
        if n < 2:
            p.error(f"--seq-lens {n} must be at least 2 (the prompt's last token is fed by the first timed step)")
        if n + args.new_tokens > CONTEXT:
            p.error(f"--seq-lens {n} plus --new-tokens {args.new_tokens} is {n + args.new_tokens} tokens, past "
                    f"SmolLM2's context of {CONTEXT}; use at most {CONTEXT - args.new_tokens}")
    bench_cli.refuse_repeats(p, args, ("seq_lens", "paths"))
    bench_cli.check_cpu_count(p, "--threads", args.threads)  # a timing: more threads than cores times the scheduler
    if args.clock == "auto":
        args.clock = "cpu" if args.threads == 1 else "wall"
    return args


SPEEDS = ("mean_context", "bytes_per_token", "tokens_per_s", "tokens_per_s_q1", "tokens_per_s_q3", "ms_per_token",
          "ms_per_token_wall", "ms_per_token_cpu", "predicted_tokens_per_s", "pct_of_prediction", "read_GBps",
          "attention_ms_per_token")
TABLE = {"prompt": 6, "model": 9, "KV": 3, "path": 19, "MB/token": 9, "tok/s": 7, "IQR tok/s": 13, "predicted": 9,
         "% of pred.": 10, "same tokens": 11}  # the printed table's column titles and widths


def table_cells(r: dict) -> tuple:
    """A row of the printed table, in TABLE's order."""
    return (r["prompt_tokens"], r["variant"], r["n_kv_heads"], r["path"], f"{r['bytes_per_token'] / 1e6:.1f}",
            f"{r['tokens_per_s']:.2f}", f"{r['tokens_per_s_q1']:.2f}-{r['tokens_per_s_q3']:.2f}",
            f"{r['predicted_tokens_per_s']:.2f}", f"{r['pct_of_prediction']:.1f}%", r["same_tokens_as_gqa_lib"])


def print_target(rows: list[dict], seq_len: int, paths) -> None:
    print(f"\nTarget at {seq_len} prompt tokens: released >= {TARGET}x the MHA twin's tokens per second (95% interval "
          "rep by rep; 'met' where its Holm-adjusted one-sided p < 0.05 over the paths, 'missed' where the interval "
          "lies below)")
    for t in check_target(rows, seq_len, paths, TARGET):
        predicted = speedup(rows, t["path"], seq_len, column="predicted_tokens_per_s")
        print(f"  [{t['verdict']}] {t['path']}: {t['value']:.2f}x from the medians, {t['ratio']:.2f}x rep by rep (95% "
              f"interval {t['low']:.2f}-{t['high']:.2f}; Holm p {t['p_holm']:.3g}); bytes predict {predicted:.2f}x")


def main(argv=None) -> int:
    args = parse_args(argv)
    if bench_cli.output_blocked(args.out, args.overwrite):
        return 1
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    start = time.perf_counter()
    from gqa_lib.models.smollm import PROMPTS, load_smollm

    model, tok = load_smollm()
    llc_read = last_level_cache()  # from sysfs, or a fallback size that its source names
    llc = llc_read["bytes"]
    bw = measure_bandwidth(llc)
    read_bps = bw["cpu_bytes_per_s"] if args.clock == "cpu" else bw["bytes_per_s"]
    print(f"last-level cache {llc / 2**20:.0f} MiB; read bandwidth ({args.threads} thread(s), {args.clock} clock, "
          f"two streams of {bw['bytes'] / 2e6:.0f} MB): {read_bps / 1e9:.2f} GB/s (median of {bw['reps']})")
    sentences = list(PROMPTS["sentences"].values())

    def progress(seq_len):
        print(f"  done: {seq_len} prompt tokens ({time.perf_counter() - start:.0f} s, "
              f"load {os.getloadavg()[0]:.2f})", flush=True)

    flush = CacheFlusher(2 * llc)  # before each pass of attention timed alone
    rows = run_decode_speed(model, tok, sentences, args.seq_lens, args.new_tokens, args.reps, 1, args.clock,
                            read_bps, args.paths, args.hf_attention, args.prefill_threads, progress, flush)
    del flush
    for r in rows:
        r["read_GBps"] = round(read_bps / 1e9, 4)
    meta = {
        "what": "SmolLM2-135M-Instruct greedy decode after a prompt: tokens/s, bytes read per token, "
                "bandwidth prediction; variants " + ", ".join(VARIANTS),
        "command": results.command_line(), **results.environment_metadata(), "clock": args.clock,
        "decode_threads": str(args.threads), "prefill_threads": str(args.prefill_threads),
        "prompt": "data/prompts.json sentences repeated in order, joined by spaces, cut at the prompt length",
        "transformers_attention": args.hf_attention,
        "last_level_cache_bytes": str(llc),
        "last_level_cache_source": llc_read["source"], "bandwidth_buffer_bytes": str(bandwidth_buffer_bytes(llc)),
        "read_bandwidth_GBps": f"{read_bps / 1e9:.3f}",
        "read_bandwidth_wall_GBps": f"{bw['bytes_per_s'] / 1e9:.3f}",
        "read_bandwidth_cpu_GBps": f"{bw['cpu_bytes_per_s'] / 1e9:.3f}",
        "bandwidth_probe": "a dot product of two float32 buffers read side by side (two streams)",
        "attention_alone": "gqa_lib's grouped attention, one query per layer against each layer's cache at the mean "
                           f"context, {2 * llc / 1e6:.0f} MB read before each timed pass to flush the CPU cache; "
                           "median of --reps passes",
        "loadavg_before": " ".join(f"{x:.2f}" for x in load_before),
        "loadavg_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "wall_seconds": f"{time.perf_counter() - start:.0f}",
    }
    return results.save_and_report(args, rows, meta, finite=SPEEDS, label=("prompt_tokens", "variant", "path"),
                                   summary=lambda: print_summary(rows, args))


def print_summary(rows: list[dict], args) -> None:
    """The table, then the target at the longest prompt (printed after the CSV is saved)."""
    bench_cli.print_table(rows, TABLE, table_cells)
    print_target(rows, max(args.seq_lens), args.paths)


if __name__ == "__main__":
    raise SystemExit(main())
