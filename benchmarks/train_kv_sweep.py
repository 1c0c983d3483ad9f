"""Train tiny byte-level LMs that differ only in n_kv_heads (MHA ... MQA), several seeds each.

Every variant of one seed starts from the same shared weights and sees the same batches in the
same order (see gqa_lib/experiments/kv_sweep.py), so its validation loss can be compared with MHA's seed by seed.
The corpus is the running Python's standard library (gqa_lib/experiments/corpus.py); its SHA-256 is checked.

    .venv/bin/python benchmarks/train_kv_sweep.py                       # the shipped sweep (~10 min on 2 idle cores)
    .venv/bin/python benchmarks/train_kv_sweep.py --seeds 2 --steps 50 --out /tmp/sweep.csv   # a quick try

Prints the paired comparison against MHA.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from gqa_lib.core.checks import divisors  # noqa: E402
from gqa_lib.experiments import bench_cli, results  # noqa: E402
from gqa_lib.experiments.corpus import load_corpus  # noqa: E402
from gqa_lib.experiments.kv_sweep import TrainConfig, pairwise_tests, run_variant, summarize_sweep  # noqa: E402
from gqa_lib.models.tiny_lm import TinyLMConfig  # noqa: E402

# The shipped sweep's model and training (~10 min on 2 idle cores; see benchmarks/README.md).
MODEL = dict(d_model=128, n_layers=2, n_heads=8, d_ff=384)
TRAIN = dict(steps=600, batch=32, seq_len=64, lr=3e-3, warmup=30, eval_windows=2048)
REPORT_EVERY = 25  # steps between progress messages from a worker
LOSSES = ("val_loss", "val_bits_per_byte", "final_train_loss", "kv_bytes_per_token", "n_params")

_worker = {}  # per worker process: the corpus and the progress queue


def _init_worker(threads: int, strict: bool, progress_queue) -> None:
    torch.set_num_threads(threads)
    _worker["corpus"] = load_corpus(strict=strict)
    _worker["queue"] = progress_queue


def _train_one(task: tuple[dict, dict, int]) -> dict:
    model_kw, train_kw, seed = task
    corpus, q = _worker["corpus"], _worker["queue"]

    def progress(step, loss):
        if (step + 1) % REPORT_EVERY == 0:
            q.put(REPORT_EVERY)

    return run_variant(TinyLMConfig(**model_kw), TrainConfig(**train_kw), corpus.train, corpus.val, seed,
                       progress=progress)


def parse_args(argv=None):
    """The options, every one checked here, before any work (bad ones stop with a usage error, exit 2)."""
    p = bench_cli.command_parser(__doc__)
    p.add_argument("--seeds", type=bench_cli.positive_int, default=10, help="seeds 0..N-1 (default 10)")
    p.add_argument("--steps", type=bench_cli.positive_int, default=TRAIN["steps"],
                   help=f"training steps (default {TRAIN['steps']})")
    p.add_argument("--kv-heads", type=bench_cli.positive_int, nargs="+", default=None,
                   help="KV-head counts to train (default: every divisor of n_heads; MHA is always included)")
    p.add_argument("--workers", type=bench_cli.positive_int, default=2,
                   help="runs trained at once, one process each (default 2)")
    p.add_argument("--threads", type=bench_cli.positive_int, default=1, help="torch threads per worker (default 1)")
    args = bench_cli.parse_options(p, argv, "kv_sweep.csv", corpus=True)
    n_heads = MODEL["n_heads"]
    wrong = [kv for kv in args.kv_heads or () if n_heads % kv]
    if wrong:
        p.error(f"--kv-heads {' '.join(map(str, wrong))}: each must divide n_heads={n_heads} "
                f"(valid: {', '.join(map(str, divisors(n_heads)))})")
    bench_cli.check_output_option(p, args)
    return args


def run_sweep(args) -> tuple[list[dict], float]:
    """Train every (seed, n_kv_heads) pair; return the rows sorted by seed then n_kv_heads, and the wall time."""
    n_heads = MODEL["n_heads"]
    kv_list = sorted(set(args.kv_heads or divisors(n_heads)) | {n_heads}, reverse=True)  # checked by parse_args
    train_kw = {**TRAIN, "steps": args.steps, "warmup": min(TRAIN["warmup"], args.steps // 10)}
    tasks = [({**MODEL, "n_kv_heads": kv, "max_len": train_kw["seq_len"]}, train_kw, seed)
             for seed in range(args.seeds) for kv in kv_list]
    ctx = mp.get_context("spawn")  # a fresh interpreter per worker: no forked OpenMP state
    progress_queue = ctx.Queue()
    start = time.perf_counter()
    rows = []
    with ctx.Pool(args.workers, _init_worker, (args.threads, not args.allow_other_corpus, progress_queue)) as pool:
        pending = [pool.apply_async(_train_one, (t,)) for t in tasks]
        steps_bar = tqdm(total=len(tasks) * args.steps, desc="training steps", unit="step", smoothing=0.05)
        runs_bar = tqdm(total=len(tasks), desc="runs done", unit="run")
        while pending:
            try:
                steps_bar.update(progress_queue.get(timeout=0.5))
            except queue.Empty:
                pass
            for res in [r for r in pending if r.ready()]:
                pending.remove(res)
                row = res.get()  # re-raises a worker's error here
                rows.append(row)
                runs_bar.set_postfix(seed=row["seed"], kv=row["n_kv_heads"], val_loss=f"{row['val_loss']:.4f}")
                runs_bar.update(1)
        steps_bar.close()
        runs_bar.close()
    rows.sort(key=lambda r: (r["seed"], -r["n_kv_heads"]))
    return rows, time.perf_counter() - start


def print_summary(summary: list[dict], tests: list[dict]) -> None:
    print("\nValidation loss (nats per byte) by KV heads; difference = variant - MHA at the same seed")
    print(f"{'KV heads':>8} {'params':>8} {'KV B/token':>10} {'loss mean':>10} {'+/- std':>7} {'diff mean':>10} "
          f"{'+/- std':>7} {'95% CI of diff':>20} {'worse/seeds':>11} {'diff %':>7}")
    for s in summary:
        ci = f"[{s['ci95_low']:+.4f}, {s['ci95_high']:+.4f}]"
        print(f"{s['n_kv_heads']:>8} {s['n_params']:>8} {s['kv_bytes_per_token']:>10} {s['val_loss_mean']:>10.4f} "
              f"{s['val_loss_std']:>7.4f} "
              f"{s['diff_vs_mha_mean']:>+10.4f} {s['diff_vs_mha_std']:>7.4f} {ci:>20} "
              f"{s['n_worse']:>5}/{s['n_paired']:<5} {s['diff_pct']:>+7.2f}")
    print("\nPaired t-tests of every pair (scipy.stats.ttest_rel), Holm-corrected over all the pairs:")
    for t in tests:
        print(f"  {t['n_kv_a']} vs {t['n_kv_b']} KV heads: diff {t['mean_diff']:+.4f}, t = {t['t']:+.2f}, "
              f"p = {t['p']:.4f}, Holm p = {t['p_holm']:.4f} -> {'resolved' if t['resolved'] else 'not resolved'}")


def main(argv=None) -> int:
    args = parse_args(argv)  # every option checked, --out included, before any work
    corpus = load_corpus(strict=not args.allow_other_corpus)
    print(f"corpus: {corpus.describe()}")
    rows, wall = run_sweep(args)
    meta = {
        "what": "validation loss of tiny byte-level LMs that differ only in n_kv_heads; seeds pair the runs",
        "command": results.command_line(), **results.environment_metadata(),
        "workers": str(args.workers), "threads_per_worker": str(args.threads),
        "wall_seconds": f"{wall:.0f}",
        "loadavg_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "corpus": "top-level .py files of the Python standard library, sorted by name (gqa_lib/experiments/corpus.py)",
        **results.corpus_metadata(corpus),
        "corpus_train_bytes": str(len(corpus.train)), "corpus_val_bytes": str(len(corpus.val)),
        "model": str(MODEL), "train": str(asdict(TrainConfig(**{**TRAIN, "steps": args.steps,
                                                                  "warmup": min(TRAIN["warmup"], args.steps // 10)}))),
        "loss_unit": "nats per byte (val_bits_per_byte = val_loss / ln 2)",
        "kv_bytes_per_token": "fp32, all layers, K and V",
    }
    if results.refuse_non_finite(args.out, rows, LOSSES, label=("seed", "n_kv_heads")):
        return 1
    path = results.save_rows(args.out, rows, meta, overwrite=args.overwrite)  # never loses the rows; then print
    print_summary(summarize_sweep(rows), pairwise_tests(rows))
    if path is None:
        return 1
    print(f"\n{len(rows)} runs in {wall / 60:.1f} min; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
