"""Convert SmolLM2-135M's attention to latent attention (MLA-style, one cached latent per token) and measure the loss.

Every layer's [W_k; W_v] (384 x 576) is factorised at rank r, and the r-number latent is cached instead
of K and V (gqa_lib/experiments/latent_conversion.py). Two factorisations: a plain SVD of the weights, and one weighted
by the second moment of the layer's inputs on calibration text (the corpus's training files). At ranks
128, 256 and 384 the latent costs as much cache as 1, 2 and 3 KV heads (2 x n_kv_heads x 64 numbers a
token and layer). Baselines of the same bytes: the original model (3 KV heads) and the GQA paper's
mean-pooling to 1 KV head (gqa_lib.experiments.smollm_conversion.convert_kv_heads). No training anywhere.

Loss: mean next-token loss (nats) on evenly spaced windows of the corpus's validation files, which no
calibration window comes from; 95% BCa bootstrap intervals over the windows (scipy.stats.bootstrap,
seeded), for the loss and for its paired difference from the original.

    .venv/bin/python benchmarks/mla_smollm.py                  # the shipped table
    .venv/bin/python benchmarks/mla_smollm.py --eval-windows 2 --window 64 --calib-windows 1 --out /tmp/mla.csv
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from gqa_lib.experiments import bench_cli, results  # noqa: E402
from gqa_lib.experiments.latent_conversion import (  # noqa: E402
    input_second_moments,
    latent_decoders,
    window_losses,
)
from gqa_lib.experiments.smollm_conversion import convert_kv_heads, window_token_ids  # noqa: E402
from gqa_lib.experiments.stats import bootstrap_interval  # noqa: E402
from gqa_lib.models.catalog import get_model  # noqa: E402
from gqa_lib.models.smollm import MODEL_FILE_INFO  # noqa: E402
from gqa_lib.models.smollm_decoder import SmolLMDecoder  # noqa: E402

SMOLLM = get_model("SmolLM2-135M")  # shapes from data/models.json
HEAD_DIM, N_LAYERS = SMOLLM.head_dim, SMOLLM.n_layers
FULL_RANK = bench_cli.SMOLLM2_FULL_RANK  # 384: the original model exactly
LOSSES = ("kv_heads_equivalent", "val_nll", "ci_low", "ci_high", "delta_nll", "delta_ci_low", "delta_ci_high")


def parse_args(argv=None):
    p = bench_cli.command_parser(__doc__)
    p.add_argument("--eval-windows", type=int, default=32, help="held-out windows to score (default 32)")
    p.add_argument("--window", type=int, default=256, help="tokens per window (default 256)")
    p.add_argument("--calib-windows", type=int, default=16,
                   help="calibration windows from the training files (default 16)")
    p.add_argument("--ranks", type=int, nargs="+", default=[128, 256],
                   help="latent ranks to score (default 128 256; rank 384 is checked for exactness, not scored)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resampling")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    args = bench_cli.parse_options(p, argv, "mla_smollm.csv", corpus=True)
    bench_cli.require_at_least_one(p, args, ("eval_windows", "window", "calib_windows", "threads"))
    if args.eval_windows < 2:
        p.error(f"--eval-windows={args.eval_windows} must be at least 2 (the bootstrap resamples windows)")
    # Every other bound, here, before the corpus and the model are loaded (issue 25): a 1-token window predicts
    # nothing (every loss nan); rank 384 is the full rank, checked for exactness and never scored (it gave no row),
    # and a rank past it is none of this layer's; a repeated rank gave one row where two were counted.
    bench_cli.check_range(p, "--window", args.window, 2, bench_cli.SMOLLM2_CONTEXT, bench_cli.CONTEXT_WHY)
    bench_cli.check_range(p, "--ranks", args.ranks, 1, FULL_RANK - 1,
                          f"rank {FULL_RANK} is the full rank: checked for exactness, not scored")
    bench_cli.refuse_repeats(p, args, ("ranks",))
    bench_cli.check_range(p, "--seed", args.seed, 0, why="numpy's default_rng takes no negative seed")
    return args


def row(method: str, cache_numbers: int, rank, losses, base_losses, seed: int, n_tokens: int,
        logit_diff: float = float("nan")) -> dict:
    low, high = bootstrap_interval(losses, seed=seed)
    if base_losses is None:
        d_low = d_high = 0.0
    else:
        d_low, d_high = bootstrap_interval(losses, base_losses, seed=seed)
    mean = float(losses.mean())
    base = mean if base_losses is None else float(base_losses.mean())
    return {"method": method, "rank": rank, "cache_numbers_per_token_layer": cache_numbers,
            "kv_heads_equivalent": cache_numbers / (2 * HEAD_DIM),
            "kv_bytes_per_token_bf16": cache_numbers * N_LAYERS * 2,
            "val_nll": round(mean, 5), "ci_low": round(low, 5), "ci_high": round(high, 5),
            "delta_nll": round(mean - base, 5), "delta_ci_low": round(d_low, 5), "delta_ci_high": round(d_high, 5),
            "max_abs_logit_diff_full_rank": logit_diff, "eval_tokens": n_tokens}


def run(args, model, tok, corpus) -> list[dict]:
    val_text = bytes(corpus.val.tolist()).decode("utf-8", errors="replace")
    train_text = bytes(corpus.train.tolist()).decode("utf-8", errors="replace")
    val = window_token_ids(tok, val_text, args.eval_windows, args.window)  # (eval_windows, window)
    calib = window_token_ids(tok, train_text, args.calib_windows, args.window)  # (calib_windows, window)
    n_tokens = val[:, 1:].numel()
    decoder = SmolLMDecoder.from_transformers(model)
    bar = tqdm(total=3 + 2 * len(args.ranks), desc="calibration and evaluations", unit="model")
    moments = input_second_moments(decoder, calib)
    bar.update(1)
    base = window_losses(decoder, val)
    bar.update(1)
    rows = [row("original (3 KV heads)", 2 * SMOLLM.n_kv_heads * HEAD_DIM, "", base, None, args.seed, n_tokens)]
    pooled = SmolLMDecoder.from_transformers(convert_kv_heads(model, 1, "mean"))
    rows.append(row("mean-pooled to 1 KV head", 2 * HEAD_DIM, "", window_losses(pooled, val), base, args.seed,
                    n_tokens))
    del pooled
    bar.update(1)
    check = val[:1, :32]  # a short window: float32 rounding grows with length; this checks the algebra
    for name, m in (("plain", None), ("input-weighted", moments)):
        converted = latent_decoders(decoder, [*args.ranks, FULL_RANK], m)
        full_diff = (converted.pop(FULL_RANK)(check) - decoder(check)).abs().max().item()
        for rank, latent in converted.items():
            losses = window_losses(latent, val)
            rows.append(row(f"latent, {name} SVD", rank, rank, losses, base, args.seed, n_tokens,
                            logit_diff=full_diff))
            bar.update(1)
    bar.close()
    return rows


def print_summary(rows: list[dict], args) -> None:
    """The table (ASCII only: 'delta' for the change from the original) and the full-rank check of each SVD."""
    print(f"\n{'method':<28} {'rank':>5} {'cache':>6} {'loss':>7} {'95% CI':>17} {'delta':>8} "
          f"{'95% CI of delta':>19}")
    for r in rows:
        print(f"{r['method']:<28} {r['rank']!s:>5} {r['cache_numbers_per_token_layer']:>6} {r['val_nll']:>7.3f} "
              f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] {r['delta_nll']:>+8.3f} "
              f"[{r['delta_ci_low']:+.3f}, {r['delta_ci_high']:+.3f}]")
    print("(loss in nats per token; delta = loss - the original's, paired by window)")
    for r in rows[2::len(args.ranks)]:
        print(f"{r['method']} at full rank ({FULL_RANK}): largest logit change "
              f"{r['max_abs_logit_diff_full_rank']:.2g} (32 tokens, float32)")


def is_latent(row: dict) -> bool:
    """A latent row: its full-rank check must be a number (the baselines have none)."""
    return str(row["method"]).startswith("latent")


def main(argv=None) -> int:
    args = parse_args(argv)
    if bench_cli.output_blocked(args.out, args.overwrite):
        return 1
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    start = time.perf_counter()
    corpus, model, tok = bench_cli.load_corpus_and_smollm(args, needs=[
        ("validation", args.eval_windows, args.window, "--window or --eval-windows"),
        ("training", args.calib_windows, args.window, "--window or --calib-windows")])
    rows = run(args, model, tok, corpus)
    meta = {
        "what": "SmolLM2-135M with every layer's K/V replaced by a rank-r latent (SVD of [W_k; W_v], plain or "
                "weighted by calibration inputs), vs mean-pooled KV heads; loss in nats per token on held-out text",
        "command": results.command_line(), **results.environment_metadata(), **results.model_metadata(MODEL_FILE_INFO),
        "eval_text": f"{args.eval_windows} evenly spaced windows of {args.window} SmolLM2 tokens of the corpus "
                     "validation files",
        "calibration_text": f"{args.calib_windows} evenly spaced windows of {args.window} SmolLM2 tokens of the "
                            "corpus training files (no file is in both)",
        "interval": "95% BCa bootstrap over evaluation windows, scipy.stats.bootstrap, 2000 resamples, "
                    f"numpy default_rng({args.seed}); delta intervals paired by window",
        "cache_numbers": "numbers cached per token and layer: 2 x n_kv_heads x 64 for GQA, the rank for a latent",
        **results.corpus_metadata(corpus),
        **results.end_metadata(start),
    }
    return results.save_and_report(args, rows, meta, finite=LOSSES, label="method",
                                   finite_if={"max_abs_logit_diff_full_rank": is_latent},
                                   summary=lambda: print_summary(rows, args))


if __name__ == "__main__":
    raise SystemExit(main())
