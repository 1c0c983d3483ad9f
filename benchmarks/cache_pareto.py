"""Every way to shrink SmolLM2-135M's KV cache, scored on held-out text: the table behind notebook 08.

One trained model (30 layers, 9 query heads, 3 KV heads of 64), one set of held-out texts, and for
each method the cache it needs and the loss it costs:

- fewer KV heads: 3 -> 1 by mean-pooling (Ainslie et al. 2023, arXiv 2305.13245), as converted, and uptrained
  (K and V projections only, seeded batches from the training files), with the original model given the same
  uptraining as a control (some of any gain is only the model adapting to this text);
- a low-rank latent (explicit; gqa_lib/experiments/latent_conversion.py): an input-weighted SVD of [W_k; W_v] at
  several ranks, keys and values rebuilt from it at every step (not MLA, whose up-projections are absorbed);
- a sliding window of several sizes, with and without 4 attention-sink tokens (arXiv 2309.17453);
- token eviction (gqa_lib/experiments/token_eviction.py): H2O (arXiv 2306.14048), SnapKV (arXiv 2404.14469) and
  the keys of smallest norm (arXiv 2406.11430), each scored per KV head (the group's attention summed or maxed) or
  per query head (the KV head stores the union), and an oracle that reads a top-k of a whole cache;
- int8, int4 and int2 caches, per token and per channel (KIVI, arXiv 2402.02750), scales and minima counted;
  int4 per token with the newest block in bf16 (KIVI's second change alone); FP8 E4M3 and E5M2 with a calibrated
  scale per tensor or per KV head;
- cross-layer sharing of K/V by pairs of adjacent layers (CLA-2, arXiv 2405.12981), as converted (no training);
- combinations of two of these (the latent in FP8 with a scale per 128 numbers, as DeepSeek stores its latent).

Loss: mean next-token loss (nats) on the second half of each evaluation text (texts of --window tokens of the
corpus's validation files; every scored prediction has at least --score-from tokens of context, so windows of that
size and below are always in force). Bytes: what each cache holds at each scored prediction, all layers, averaged
over the scored predictions and divided by their mean context (bytes per token of context where the loss was
earned; for eviction the tokens each KV head held at each step, measured). A second, longer context
(--second-window) scores the budget widget's methods on fewer texts. 95% BCa bootstrap intervals over texts
(scipy), for the loss and for its change from the original, paired by text.

    .venv/bin/python benchmarks/cache_pareto.py                 # the shipped table
    .venv/bin/python benchmarks/cache_pareto.py --eval-windows 2 --window 256 --score-from 128 \
        --sliding 64 128 --budget 64 --top-k 16 --uptrain-steps 1 --second-window 0 --out /tmp/p.csv

Refused before any work, so that no row looks complete when it is not: a --score-from below one KIVI block
(64 tokens; every scored prediction must have a finished, quantized block of keys, or the per-channel rows
score a cache that was never quantized), a --sliding window above --score-from (it must be in force for
every scored prediction), a largest --sliding that with --sinks keeps no more than one block (the combined
per-channel row would never hold a quantized block), an eviction --budget above --score-from, and a --window past
SmolLM2's context.
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
from gqa_lib.experiments.cache_pareto import default_methods, score_methods, summarise, widget_methods  # noqa: E402
from gqa_lib.experiments.cache_shrink import CachePolicy, calibrated_amax  # noqa: E402
from gqa_lib.experiments.latent_conversion import input_second_moments, latent_decoders  # noqa: E402
from gqa_lib.experiments.smollm_conversion import convert_kv_heads, uptrain, window_token_ids  # noqa: E402
from gqa_lib.models.smollm import MODEL_FILE_INFO  # noqa: E402
from gqa_lib.models.smollm_decoder import SmolLMDecoder  # noqa: E402

BASELINE = "original (3 KV heads, bf16)"
BLOCK = CachePolicy.block  # 64: tokens per KIVI key block of the per-channel rows (gqa_lib.experiments.cache_shrink)
CALIB_LEN = 256  # tokens per calibration window
UPTRAIN_BATCH, UPTRAIN_LEN = 2, 256  # windows per uptraining step, tokens per window
LOSSES = ("kv_bytes_per_token", "read_bytes_per_token", "bytes_vs_original", "val_nll", "ci_low", "ci_high",
          "delta_nll", "delta_ci_low", "delta_ci_high")


def parse_args(argv=None):
    """The options, each checked before any work (a bad one stops with a usage error, exit 2)."""
    p = bench_cli.command_parser(__doc__)
    p.add_argument("--eval-windows", type=bench_cli.int_at_least(2), default=16,
                   help="held-out texts, 2 or more: the bootstrap resamples them (default 16)")
    p.add_argument("--window", default=1024,
                   type=bench_cli.int_at_least(BLOCK + 2, bench_cli.SMOLLM2_CONTEXT,
                                               f"{BLOCK + 2}: the per-channel rows need predictions made after a "
                                               f"finished KIVI block of {BLOCK} tokens; {bench_cli.SMOLLM2_CONTEXT}: "
                                               "SmolLM2-135M's context"),
                   help=f"tokens per text, {BLOCK + 2} to SmolLM2's context of {bench_cli.SMOLLM2_CONTEXT} "
                        "(default 1024)")
    p.add_argument("--score-from", type=bench_cli.positive_int, default=512,
                   help="score only predictions made with at least this many tokens of context, at least one KIVI "
                        f"block ({BLOCK}) and at least the largest --sliding; SnapKV's prompt (default 512)")
    p.add_argument("--second-window", type=bench_cli.non_negative_int, default=2048,
                   help="tokens per text of the second context, scored from half of it, for the widget's methods "
                        "(default 2048; 0: none)")
    p.add_argument("--second-windows", type=bench_cli.int_at_least(2), default=4,
                   help="held-out texts at the second context (default 4)")
    p.add_argument("--budget", type=bench_cli.positive_int, default=256,
                   help="tokens per KV head an eviction method keeps (H2O, key norm: half of them recent; SnapKV: "
                        "of the prompt), at most --score-from (default 256)")
    p.add_argument("--top-k", type=bench_cli.positive_int, default=64,
                   help="keys the oracle reads per step (default 64)")
    p.add_argument("--ranks", type=bench_cli.int_at_least(1, bench_cli.SMOLLM2_FULL_RANK, "the full rank of "
                                                                 "SmolLM2's [W_k; W_v]"),
                   nargs="+", default=[64, 128, 256],
                   help=f"latent ranks (default 64 128 256; {bench_cli.SMOLLM2_FULL_RANK} would be the original)")
    p.add_argument("--sliding", type=bench_cli.positive_int, nargs="+", default=[128, 256, 512],
                   help="sliding-window sizes in tokens (default 128 256 512)")
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
    if args.budget > args.score_from:
        p.error(f"--budget {args.budget} is more than --score-from={args.score_from}: SnapKV compresses a prompt "
                f"of --score-from tokens to the budget; largest valid --budget is {args.score_from}")
    if args.second_window == args.window:
        p.error(f"--second-window {args.second_window} is --window: give another length, or 0 for none")
    if args.second_window and not 2 * max(widest, BLOCK) <= args.second_window <= bench_cli.SMOLLM2_CONTEXT:
        p.error(f"--second-window {args.second_window} must be 0 or between {2 * max(widest, BLOCK)} (twice the "
                f"largest --sliding and a KIVI block: it is scored from half of it) and {bench_cli.SMOLLM2_CONTEXT}")
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
        train = window_token_ids(tok, train_text, 512, UPTRAIN_LEN)  # the conversion's uptraining windows (nb 06)
        for name, start in (("uptrained", pooled), ("control", model)):
            bar.set_postfix_str(f"uptraining {name}")
            trained = copy.deepcopy(start)
            with torch.enable_grad():
                uptrain(trained, train, args.uptrain_steps, batch=UPTRAIN_BATCH, lr=args.lr, seed=args.seed)
            sources[name] = list(SmolLMDecoder.from_transformers(trained).attention)
            bar.update(1)
    bar.set_postfix_str("calibrating latents and FP8 scales")
    calib = window_token_ids(tok, train_text, args.calib_windows, CALIB_LEN)
    latents = latent_decoders(decoder, args.ranks, input_second_moments(decoder, calib))
    sources.update({f"latent-{r}": list(d.attention) for r, d in latents.items()})
    inputs = []
    decoder.hidden_states(calib, inputs_of=inputs)  # each layer's attention input on the calibration text
    amax = calibrated_amax(list(decoder.attention), inputs)
    bar.update(1)
    return sources, amax


_WORKER = {}


def _init_worker(sources, amax) -> None:
    """A scoring process: one thread, its own copy of the model, the shared attention sources and FP8 scales."""
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    from gqa_lib.models.smollm import load_smollm

    model, _ = load_smollm()
    _WORKER.update(decoder=SmolLMDecoder.from_transformers(model), sources=sources, amax=amax)


def _score_one(job):
    key, method, windows, score_from = job
    w = _WORKER
    return key, score_methods(w["decoder"], w["sources"], [method], windows, score_from, amax=w["amax"])


def _cost(job) -> float:
    """A rough cost, to start the slowest jobs first: tokens x (2 for per-channel, 3 for token-by-token eviction)."""
    _, m, windows, _ = job
    slow = 3 if m.eviction is not None and type(m.eviction).__name__ in ("H2O", "KeyNorm") else \
        2 if m.policy.axis == "channel" or m.policy.newest_bf16 else 1
    return windows.numel() * windows.shape[1] / 1024 * slow


def score_in_parallel(args, decoder, sources, amax, jobs, bar) -> dict:
    """score_methods over ``args.workers`` processes (spawned: no fork after PyTorch's threads started).

    ``jobs``: (key, method, windows, score_from); returns {key: {method name: score}}."""
    def progress(key, method):
        bar.set_postfix_str(f"{method.name} @ {key}")
        bar.update(1)

    out = {}
    if args.workers == 1:
        for key, method, windows, score_from in jobs:
            out.setdefault(key, {}).update(score_methods(decoder, sources, [method], windows, score_from, amax=amax))
            progress(key, method)
        return out
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(args.workers, _init_worker, (sources, amax)) as pool:
        for key, result in pool.imap_unordered(_score_one, sorted(jobs, key=_cost, reverse=True)):
            out.setdefault(key, {}).update(result)
            progress(key, next(iter(result.values()))["method"])
    return out


def run(args, model, tok, corpus) -> list[dict]:
    """Every method scored on the same held-out texts, the widget's also at the second context: one row each
    (``summarise``), with its scored tokens."""
    val_text = bytes(corpus.val.tolist()).decode("utf-8", errors="replace")
    decoder = SmolLMDecoder.from_transformers(model)
    methods = default_methods(args.ranks, args.sliding, args.sinks, uptrained=args.uptrain_steps > 0,
                              budget=args.budget, prompt=args.score_from, top_k=args.top_k)
    contexts = {args.window: (args.eval_windows, args.score_from, methods)}
    if args.second_window:
        contexts[args.second_window] = (args.second_windows, args.second_window // 2, widget_methods(methods))
    jobs = []
    for length, (n, score_from, chosen) in contexts.items():
        windows = window_token_ids(tok, val_text, n, length)  # (n texts, length)
        jobs += [(length, m, windows, score_from) for m in chosen]
    bar = tqdm(total=len(jobs) + 1 + 2 * (args.uptrain_steps > 0), desc="cache pareto", unit="step")
    sources, amax = sources_for(args, model, tok, corpus, decoder, bar)
    scores = score_in_parallel(args, decoder, sources, amax, jobs, bar)
    bar.close()
    tokens = {"calibration": args.calib_windows * CALIB_LEN,
              "uptraining": args.uptrain_steps * UPTRAIN_BATCH * UPTRAIN_LEN}
    rows = []
    for length, (n, score_from, chosen) in contexts.items():
        ordered = {m.name: scores[length][m.name] for m in chosen}  # the methods' own order
        part = summarise(ordered, BASELINE, seed=args.seed, data_tokens=tokens)
        for r in part:
            r["texts"] = n
            r["scored_tokens"] = n * (length - 1 - score_from)
        rows += part
    return rows


def print_summary(rows: list[dict]) -> None:
    """The table, largest cache first (ASCII only: 'delta' for the change from the original; '*' on the front)."""
    print(f"\n{'method':<48} {'ctx':>5} {'bytes/token':>11} {'x orig':>7} {'loss':>7} {'95% CI':>17} {'delta':>8} "
          f"{'95% CI of delta':>19} pareto")
    for r in sorted(rows, key=lambda r: (r["context"], -r["kv_bytes_per_token"])):
        print(f"{r['method']:<48} {r['context']:>5} {r['kv_bytes_per_token']:>11,.0f} {r['bytes_vs_original']:>7.3f} "
              f"{r['val_nll']:>7.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] {r['delta_nll']:>+8.3f} "
              f"[{r['delta_ci_low']:+.3f}, {r['delta_ci_high']:+.3f}] {'*' if r['pareto'] else ''}")
    print("(loss in nats per token; delta = loss - the original's, paired by text; bytes averaged over the scored "
          "predictions)")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    corpus, model, tok = bench_cli.load_corpus_and_smollm(args, needs=[
        ("validation", args.eval_windows, args.window, "--window or --eval-windows"),
        *([("validation", args.second_windows, args.second_window, "--second-window or --second-windows")]
          if args.second_window else []),
        ("training", args.calib_windows, CALIB_LEN, "--calib-windows")])
    rows = run(args, model, tok, corpus)
    scored = args.eval_windows * (args.window - 1 - args.score_from)
    second = (f"; second context: {args.second_windows} windows of {args.second_window} tokens, scored at positions "
              f"{args.second_window // 2}..{args.second_window - 2}, the widget's methods only"
              if args.second_window else "")
    meta = {
        "what": "SmolLM2-135M with its KV cache shrunk each way; loss (nats per token) on held-out text against "
                "KV bytes per token",
        "command": results.command_line(), **results.environment_metadata(), **results.model_metadata(MODEL_FILE_INFO),
        "eval_text": f"{args.eval_windows} evenly spaced windows of {args.window} SmolLM2 tokens of the corpus "
                     "validation files; scored: the predictions made at positions "
                     f"{args.score_from}..{args.window - 2} "
                     f"of each ({scored} tokens in all){second}",
        "bytes": "cache bytes (all 30 layers) held at each scored prediction, averaged over them, divided by their "
                 "mean context; bf16 = 2 bytes; int8/int4/int2 with a bf16 scale and minimum per group of 64 numbers "
                 "(per channel: per 64-token block, the newest token's own block, counted by position, in bf16, as "
                 "the simulation attends it); FP8 1 byte + a float32 scale per K and V tensor or KV head of "
                 "a layer (latent: per 128 numbers); eviction: the tokens each KV head held, measured",
        "kivi": "KIVI as published (arXiv 2402.02750): group 32, the newest 128 tokens in full precision, 2-bit "
                f"headline; here: group {BLOCK} tokens (keys) and {BLOCK} numbers (values), the newest token's own "
                f"block of {BLOCK} (1-{BLOCK} tokens, by position) in bf16",
        "eviction": f"budget {args.budget} tokens per KV head (H2O, key norm: {args.budget // 2} recent; SnapKV: of "
                    f"a prompt of {args.score_from} tokens, observation window 32, avg-pooled with kernel 5, later "
                    f"tokens all kept); oracle: top {args.top_k} keys read per step, every token stored",
        "uptraining": (f"{args.uptrain_steps} AdamW steps, lr {args.lr}, K and V projections only, batch 2 x 256 "
                       f"tokens from 512 windows of the training files, seed {args.seed}"
                       if args.uptrain_steps else "none"),
        "calibration_text": f"{args.calib_windows} windows of {CALIB_LEN} tokens of the corpus training files "
                            "(latents; FP8 scales per tensor and per head)",
        "interval": "95% BCa bootstrap over evaluation texts, scipy.stats.bootstrap, 2000 resamples, "
                    f"numpy default_rng({args.seed}); delta intervals paired by text",
        "workers": f"{args.workers} scoring processes of 1 thread; uptraining and calibration: {args.threads} threads",
        **results.corpus_metadata(corpus),
        **results.end_metadata(start),
    }
    return results.save_and_report(args, rows, meta, finite=LOSSES, label=("method", "context"),
                                   summary=lambda: print_summary(rows))


if __name__ == "__main__":
    raise SystemExit(main())
