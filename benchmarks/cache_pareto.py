"""Every way to shrink SmolLM2-135M's KV cache, scored on held-out text: the table behind notebook 08.

One trained model (30 layers, 9 query heads, 3 KV heads of 64), one set of held-out windows, and for
each method the cache it needs and the loss it costs:

- fewer KV heads: 3 -> 1 by mean-pooling (Ainslie et al. 2023), as converted, and uptrained (K and V
  projections only, seeded batches from the training files), with the original model given the same
  uptraining as a control (some of any gain is only the model adapting to this text);
- a latent (MLA-style, gqa_lib/experiments/latent_conversion.py): an input-weighted SVD of [W_k; W_v] at several ranks;
- a sliding window of several sizes, with and without 4 attention-sink tokens;
- int8 and int4 caches, per token and per channel (KIVI-style), scales and minima counted;
- cross-layer sharing of K/V by pairs of adjacent layers (CLA-2), as converted (no training);
- combinations of two of these.

Loss: mean next-token loss (nats) on the second half of each evaluation window (windows of 2048 tokens
of the corpus's validation files; every scored token has at least 1024 tokens of context, so windows
of 1024 and below are always in force). Bytes: what each cache holds at the window's length (2048
tokens), all layers, divided by 2048 (gqa_lib/experiments/cache_shrink.py counts them). 95% BCa bootstrap
intervals over windows (scipy), for the loss and for its change from the original, paired by window.

    .venv/bin/python benchmarks/cache_pareto.py                 # the shipped table
    .venv/bin/python benchmarks/cache_pareto.py --eval-windows 2 --window 256 --score-from 128 \
        --sliding 64 128 --uptrain-steps 1 --out /tmp/p.csv

Refused before any work, so that no row looks complete when it is not: a --score-from below one KIVI block
(64 tokens; every scored prediction must have a finished, quantized block of keys, or the per-channel rows
score a cache that was never quantized), a --sliding window above --score-from (it must be in force for
every scored prediction), a largest --sliding that with --sinks keeps no more than one block (the combined
per-channel row would never hold a quantized block), and a --window past SmolLM2's context.
"""

from __future__ import annotations

import copy
import multiprocessing
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from gqa_lib.experiments import bench_cli, results  # noqa: E402
from gqa_lib.experiments.cache_pareto import default_methods, score_methods, summarise  # noqa: E402
from gqa_lib.experiments.cache_shrink import CachePolicy  # noqa: E402
from gqa_lib.experiments.latent_conversion import input_second_moments, latent_decoders  # noqa: E402
from gqa_lib.experiments.smollm_conversion import convert_kv_heads, uptrain, window_token_ids  # noqa: E402
from gqa_lib.models.smollm import MODEL_FILE_INFO  # noqa: E402
from gqa_lib.models.smollm_decoder import SmolLMDecoder  # noqa: E402

BASELINE = "original (3 KV heads, bf16)"
BLOCK = CachePolicy.block  # 64: tokens per KIVI key block of the per-channel rows (gqa_lib.experiments.cache_shrink)
LOSSES = ("kv_bytes_per_token", "bytes_vs_original", "val_nll", "ci_low", "ci_high", "delta_nll", "delta_ci_low",
          "delta_ci_high")


def parse_args(argv=None):
    """The options, each checked before any work (a bad one stops with a usage error, exit 2)."""
    p = bench_cli.command_parser(__doc__)
    p.add_argument("--eval-windows", type=bench_cli.int_at_least(2), default=6,
                   help="held-out windows, 2 or more: the bootstrap resamples them (default 6)")
    p.add_argument("--window", default=2048,
                   type=bench_cli.int_at_least(BLOCK + 2, bench_cli.SMOLLM2_CONTEXT,
                                               f"{BLOCK + 2}: the per-channel rows need predictions made after a "
                                               f"finished KIVI block of {BLOCK} tokens; {bench_cli.SMOLLM2_CONTEXT}: "
                                               "SmolLM2-135M's context"),
                   help=f"tokens per window, {BLOCK + 2} to SmolLM2's context of {bench_cli.SMOLLM2_CONTEXT} "
                        "(default 2048)")
    p.add_argument("--score-from", type=bench_cli.positive_int, default=1024,
                   help="score only predictions made with at least this many tokens of context, at least one KIVI "
                        f"block ({BLOCK}) and at least the largest --sliding (default 1024)")
    p.add_argument("--ranks", type=bench_cli.int_at_least(1, bench_cli.SMOLLM2_FULL_RANK, "the full rank of "
                                                                 "SmolLM2's [W_k; W_v]"),
                   nargs="+", default=[64, 128, 192, 256],
                   help=f"latent ranks (default 64 128 192 256; {bench_cli.SMOLLM2_FULL_RANK} would be the original)")
    p.add_argument("--sliding", type=bench_cli.positive_int, nargs="+", default=[256, 512, 1024],
                   help="sliding-window sizes in tokens (default 256 512 1024)")
    p.add_argument("--sinks", type=bench_cli.non_negative_int, default=4,
                   help="attention-sink tokens kept with each window in the '+ sinks' rows (default 4; 0: none)")
    p.add_argument("--calib-windows", type=bench_cli.positive_int, default=16,
                   help="calibration windows of 256 tokens from the training files, for the latents (default 16)")
    p.add_argument("--uptrain-steps", type=bench_cli.non_negative_int, default=30,
                   help="uptraining steps of the 1-KV-head model and the control (default 30; 0: no uptraining rows)")
    p.add_argument("--lr", type=bench_cli.positive_float, default=1e-3, help="uptraining learning rate (default 1e-3)")
    p.add_argument("--seed", type=bench_cli.non_negative_int, default=0,
                   help="seed of uptraining batches and bootstrap")
    p.add_argument("--threads", type=bench_cli.positive_int, default=2,
                   help="threads for uptraining and calibration (default 2)")
    p.add_argument("--workers", type=bench_cli.positive_int, default=2,
                   help="processes scoring methods at once, one thread each (default 2: on 2 cores two 1-thread "
                        "processes get more done than one 2-thread process)")
    args = bench_cli.parse_options(p, argv, "cache_pareto.csv", corpus=True)
    if args.score_from >= args.window - 1:
        p.error(f"--score-from={args.score_from} must be below --window={args.window} - 1 (something must be scored)")
    if args.score_from < BLOCK:
        p.error(f"--score-from {args.score_from} is too small: a prediction made before the first KIVI block of "
                f"{BLOCK} tokens is finished sees no quantized key, so the per-channel rows would partly score a "
                f"cache that was never quantized; smallest valid --score-from is {BLOCK}")
    widest = max(args.sliding)
    if widest > args.score_from:
        p.error(f"--sliding {widest} is more than --score-from={args.score_from}: the window would not be in force "
                f"for every scored prediction, and its row would count a window's bytes for a loss measured partly "
                f"without one; largest valid --sliding is {args.score_from} (or raise --score-from)")
    if widest + args.sinks <= BLOCK:
        p.error(f"--sliding {widest} with --sinks {args.sinks} keeps {widest + args.sinks} tokens, no more than one "
                f"KIVI block of {BLOCK}: the row 'window {widest} + {args.sinks} sinks + int4 per channel' would "
                f"never hold a quantized block; the largest --sliding must be at least {BLOCK + 1 - args.sinks} with "
                f"--sinks {args.sinks}")
    bench_cli.refuse_repeats(p, args, ("ranks", "sliding"))
    bench_cli.check_output_option(p, args)
    return args


def sources_for(args, model, tok, corpus, decoder, bar) -> dict:
    """{source name: attention layers}: the original, 1 KV head (and uptrained), the control, and each latent."""
    train_text = bytes(corpus.train.tolist()).decode("utf-8", errors="replace")
    sources = {"original": list(decoder.attention)}
    pooled = convert_kv_heads(model, 1, "mean")
    sources["mean-pooled"] = list(SmolLMDecoder.from_transformers(pooled).attention)
    if args.uptrain_steps:
        train = window_token_ids(tok, train_text, 512, 256)  # the conversion's uptraining windows (notebook 06)
        for name, start in (("uptrained", pooled), ("control", model)):
            bar.set_postfix_str(f"uptraining {name}")
            trained = copy.deepcopy(start)
            with torch.enable_grad():
                uptrain(trained, train, args.uptrain_steps, batch=2, lr=args.lr, seed=args.seed)
            sources[name] = list(SmolLMDecoder.from_transformers(trained).attention)
            bar.update(1)
    bar.set_postfix_str("calibrating latents")
    calib = window_token_ids(tok, train_text, args.calib_windows, 256)
    latents = latent_decoders(decoder, args.ranks, input_second_moments(decoder, calib))
    sources.update({f"latent-{r}": list(d.attention) for r, d in latents.items()})
    bar.update(1)
    return sources


_WORKER = {}


def _init_worker(sources, windows, score_from) -> None:
    """A scoring process: one thread, its own copy of the model, the shared attention sources."""
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    from gqa_lib.models.smollm import load_smollm

    model, _ = load_smollm()
    _WORKER.update(decoder=SmolLMDecoder.from_transformers(model), sources=sources, windows=windows,
                   score_from=score_from)


def _score_one(method):
    w = _WORKER
    return score_methods(w["decoder"], w["sources"], [method], w["windows"], w["score_from"])


def score_in_parallel(args, decoder, sources, methods, windows, bar) -> dict:
    """score_methods over ``args.workers`` processes (spawned: no fork after PyTorch's threads started)."""
    def progress(method):
        bar.set_postfix_str(method.name)
        bar.update(1)

    if args.workers == 1:
        return score_methods(decoder, sources, methods, windows, args.score_from, progress)
    slow_first = sorted(methods, key=lambda m: m.policy.axis != "channel" or m.policy.bits is None)
    ctx = multiprocessing.get_context("spawn")
    out = {}
    with ctx.Pool(args.workers, _init_worker, (sources, windows, args.score_from)) as pool:
        for result in pool.imap_unordered(_score_one, slow_first):
            out.update(result)
            progress(next(iter(result.values()))["method"])
    return {m.name: out[m.name] for m in methods}  # the methods' own order


def run(args, model, tok, corpus) -> list[dict]:
    """Every method scored on the same held-out windows: one row each (``summarise``), with its scored tokens."""
    val_text = bytes(corpus.val.tolist()).decode("utf-8", errors="replace")
    windows = window_token_ids(tok, val_text, args.eval_windows, args.window)  # (eval_windows, window)
    decoder = SmolLMDecoder.from_transformers(model)
    methods = default_methods(args.ranks, args.sliding, args.sinks, uptrained=args.uptrain_steps > 0)
    bar = tqdm(total=len(methods) + 1 + 2 * (args.uptrain_steps > 0), desc="cache pareto", unit="step")
    sources = sources_for(args, model, tok, corpus, decoder, bar)

    scores = score_in_parallel(args, decoder, sources, methods, windows, bar)
    bar.close()
    rows = summarise(scores, BASELINE, seed=args.seed)
    for r in rows:
        r["scored_tokens"] = scored_tokens(args)
    return rows


def scored_tokens(args) -> int:
    """Predictions scored in all: positions score_from .. window - 2 of every evaluation window."""
    return args.eval_windows * (args.window - 1 - args.score_from)


def print_summary(rows: list[dict]) -> None:
    """The table, largest cache first (ASCII only: 'delta' for the change from the original; '*' on the front)."""
    print(f"\n{'method':<44} {'bytes/token':>11} {'x orig':>7} {'loss':>7} {'95% CI':>17} {'delta':>8} "
          f"{'95% CI of delta':>19} pareto")
    for r in sorted(rows, key=lambda r: -r["kv_bytes_per_token"]):
        print(f"{r['method']:<44} {r['kv_bytes_per_token']:>11,.0f} {r['bytes_vs_original']:>7.3f} "
              f"{r['val_nll']:>7.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] {r['delta_nll']:>+8.3f} "
              f"[{r['delta_ci_low']:+.3f}, {r['delta_ci_high']:+.3f}] {'*' if r['pareto'] else ''}")
    print("(loss in nats per token; delta = loss - the original's, paired by window)")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    corpus, model, tok = bench_cli.load_corpus_and_smollm(args, needs=[
        ("validation", args.eval_windows, args.window, "--window or --eval-windows"),
        ("training", args.calib_windows, 256, "--calib-windows")])
    rows = run(args, model, tok, corpus)
    scored = scored_tokens(args)
    meta = {
        "what": "SmolLM2-135M with its KV cache shrunk each way; loss (nats per token) on held-out text against "
                "KV bytes per token",
        "command": results.command_line(), **results.environment_metadata(), **results.model_metadata(MODEL_FILE_INFO),
        "eval_text": f"{args.eval_windows} evenly spaced windows of {args.window} SmolLM2 tokens of the corpus "
                     "validation files; scored: the predictions made at positions "
                     f"{args.score_from}..{args.window - 2} "
                     f"of each ({scored} tokens in all)",
        "bytes": f"cache bytes after {args.window} tokens, all 30 layers, divided by {args.window}; bf16 = 2 bytes; "
                 "int8/int4 with a bf16 scale and minimum per group of 64 numbers (per channel: per 64-token block)",
        "uptraining": (f"{args.uptrain_steps} AdamW steps, lr {args.lr}, K and V projections only, batch 2 x 256 "
                       f"tokens from 512 windows of the training files, seed {args.seed}"
                       if args.uptrain_steps else "none"),
        "calibration_text": f"{args.calib_windows} windows of 256 tokens of the corpus training files (latents)",
        "interval": "95% BCa bootstrap over evaluation windows, scipy.stats.bootstrap, 2000 resamples, "
                    f"numpy default_rng({args.seed}); delta intervals paired by window",
        "workers": f"{args.workers} scoring processes of 1 thread; uptraining and calibration: {args.threads} threads",
        **results.corpus_metadata(corpus),
        **results.end_metadata(start),
    }
    return results.save_and_report(args, rows, meta, finite=LOSSES, label="method",
                                   summary=lambda: print_summary(rows))


if __name__ == "__main__":
    raise SystemExit(main())
