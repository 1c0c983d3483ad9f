"""Convert SmolLM2-135M from 3 KV heads to 1 (MQA) in every layer, the GQA paper's three ways, uptrain each
the same way, and measure the damage and the recovery with bootstrap intervals.

Ainslie et al. (2023) build each new KV head from the old heads it replaces: their mean, the first
of them, or a random projection; then "uptrain" briefly. This command does that to the real
SmolLM2 (30 layers, 9 query heads, 3 KV heads):

- conversions: mean-pooling, first head, and random init in ``--random-draws`` draws (seeds 0, 1, 2, ...);
- every conversion is uptrained the same way before they are ranked: ``--uptrain-steps`` AdamW steps
  at ``--lr`` on the K and V projections only, on the same batches (one generator seeded by ``--seed``
  draws them, so every model sees the same windows in the same order);
- control: the original model (3 KV heads) uptrained exactly the same way. Uptraining on this text
  lowers even the original's loss; the recovered fraction subtracts that change:
      recovered = ((L_converted - L_uptrained) - (L_original - L_control)) / (L_converted - L_original)
  (gqa_lib.experiments.smollm_conversion.recovered_fraction);
- evaluation: ``--eval-windows`` evenly spaced windows of ``--window`` SmolLM2 tokens of the corpus's
  validation files (default 64 x 256: 64 x 255 = 16,320 predicted tokens), each scored on its own;
  every loss, every loss difference from the original (paired by window) and every recovered fraction
  gets a bootstrap standard error and a 95% BCa interval over windows (scipy.stats.bootstrap, 2000
  resamples, seeded by ``--seed``);
- the token budget: uptraining reads steps x batch x window tokens per model (default 30 x 2 x 256 =
  15,360), printed next to the paper's 5% of pre-training applied to SmolLM2-135M's 2 trillion
  pre-training tokens (100 billion);
- finally the 3 KV heads are expanded to 9 (MHA) and the largest logit change is reported (0 expected).

Time (estimated, not yet measured): with ``--threads 2`` on 2 idle cores a forward pass runs at about
800 tokens/s and an uptraining step (2 x 256 tokens, forward and backward) costs about 3 forwards. The
default run makes 13 evaluations of 64 x 256 tokens (213k tokens, about 270 s) and 6 uptrainings of 30
steps (6 x 30 x 512 x 3 = 276k forward-token equivalents, about 350 s); with loading, about 10.5 min.
``--eval-every N`` adds two evaluations (mean-pooled model and control) every N steps, about 40 s each pair.

    .venv/bin/python benchmarks/convert_smollm.py --threads 2 --overwrite          # the shipped table
    .venv/bin/python benchmarks/convert_smollm.py --eval-windows 2 --window 32 --uptrain-steps 1 --out /tmp/c.csv
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from gqa_lib.experiments import bench_cli, results  # noqa: E402
from gqa_lib.experiments.corpus import load_corpus  # noqa: E402
from gqa_lib.experiments.smollm_conversion import (  # noqa: E402
    PAPER_UPTRAIN_FRACTION,
    PAPER_UPTRAIN_TOKENS,
    SMOLLM2_135M_PRETRAIN_TOKENS,
    convert_kv_heads,
    kv_heads_of,
    max_logit_difference,
    ranking_line,
    recovered_fraction_interval,
    uptrain,
    window_nlls,
    window_token_ids,
)
from gqa_lib.experiments.stats import bootstrap_mean  # noqa: E402

N_TRAIN_WINDOWS = 512  # fixed windows of the training files that uptraining batches are drawn from
N_RESAMPLES = 2000  # bootstrap resamples for every interval


def parse_args(argv=None):
    """The options, every one checked here, before any work (bad ones stop with a usage error, exit 2)."""
    p = bench_cli.command_parser(__doc__)
    p.add_argument("--eval-windows", type=bench_cli.positive_int, default=64,
                   help="held-out windows to score, 2 or more: the bootstrap resamples them (default 64)")
    p.add_argument("--window", type=bench_cli.smollm_window(2), default=256,
                   help="tokens per window, 2 or more: every token after the first is predicted; at most SmolLM2's "
                        f"context of {bench_cli.SMOLLM2_CONTEXT} (default 256)")
    p.add_argument("--uptrain-steps", type=bench_cli.positive_int, default=30,
                   help="uptraining steps of every model, conversions and control alike (default 30)")
    p.add_argument("--eval-every", type=bench_cli.positive_int, default=None,
                   help="also score the mean-pooled model and the control every N uptraining steps (default: "
                        "only at the end)")
    p.add_argument("--batch", type=bench_cli.positive_int, default=2, help="windows per uptraining step (default 2)")
    p.add_argument("--lr", type=bench_cli.positive_float, default=1e-3,
                   help="AdamW learning rate of uptraining (default 1e-3)")
    p.add_argument("--random-draws", type=bench_cli.positive_int, default=3,
                   help="random-init conversions, seeded 0, 1, 2, ... (default 3)")
    p.add_argument("--seed", type=bench_cli.non_negative_int, default=0,
                   help="seed of the uptraining batches (the same for every model) and of the bootstrap (default 0)")
    p.add_argument("--threads", type=bench_cli.positive_int, default=1, help="torch.set_num_threads (default 1)")
    args = bench_cli.parse_options(p, argv, "smollm_conversion.csv", corpus=True)
    if args.eval_windows < 2:
        p.error(f"--eval-windows={args.eval_windows} must be at least 2 (the bootstrap resamples windows)")
    bench_cli.check_output_option(p, args)
    return args


def check_text_is_long_enough(args, corpus) -> str | None:
    """Why the corpus cannot give the windows asked for, or None. A token spans at least one byte, so the
    byte counts bound the token counts: this catches impossible sizes before the model is loaded."""
    for what, n_bytes, n_windows in (("validation", len(corpus.val), args.eval_windows),
                                     ("training", len(corpus.train), N_TRAIN_WINDOWS)):
        if n_windows * args.window > n_bytes:
            return (f"--window {args.window} x {n_windows} {what} windows needs more tokens than the corpus's "
                    f"{what} text has bytes ({n_bytes:,}); lower --window or --eval-windows")
    return None


LOSSES = ("val_nll", "se", "ci_low", "ci_high", "val_ppl", "delta_nll_vs_original", "delta_se", "delta_ci_low",
          "delta_ci_high")
RECOVERED = ("recovered_fraction", "recovered_se", "recovered_ci_low", "recovered_ci_high")


def is_uptrained_conversion(row: dict) -> bool:
    """A converted model after uptraining: its recovered fraction must be a number (other rows have none)."""
    return row["method"] not in ("none", "copy") and int(row["uptrain_steps"]) > 0


def is_expansion(row: dict) -> bool:
    """The expansion to MHA: its largest logit change must be a number (other rows have none)."""
    return row["method"] == "copy"


def kv_bytes_per_token(n_kv_heads: int, n_layers: int = 30, head_dim: int = 64, bytes_per_elem: int = 2) -> int:
    """SmolLM2's cache per token in bf16, all layers, K and V."""
    return 2 * n_layers * n_kv_heads * head_dim * bytes_per_elem


def uptrain_tokens(args) -> int:
    """Tokens one model reads while uptraining: steps x batch x window."""
    return args.uptrain_steps * args.batch * args.window


def make_row(args, condition: str, n_kv: int, method: str, draw, steps: int, losses, original,
             converted=None, control=None, logit_diff: float = float("nan")) -> dict:
    """One row: the loss of ``losses`` (per window), its change from ``original`` paired by window and, for an
    uptrained conversion (``converted`` = its per-window losses before uptraining, ``control`` = the uptrained
    original's), the recovered fraction; each with bootstrap se and 95% interval."""
    nll, se, low, high = bootstrap_mean(losses, seed=args.seed, n_resamples=N_RESAMPLES)
    delta, d_se, d_low, d_high = bootstrap_mean(losses, original, seed=args.seed, n_resamples=N_RESAMPLES)
    rec = (float("nan"),) * 4
    if converted is not None:
        rec = recovered_fraction_interval(converted, losses, original, control, seed=args.seed,
                                          n_resamples=N_RESAMPLES)
    return {"condition": condition, "n_kv_heads": n_kv, "method": method, "draw": draw, "uptrain_steps": steps,
            "uptrain_tokens": steps * args.batch * args.window,
            "val_nll": round(nll, 5), "se": round(se, 5), "ci_low": round(low, 5), "ci_high": round(high, 5),
            "val_ppl": round(math.exp(nll), 3),
            "delta_nll_vs_original": round(delta, 5), "delta_se": round(d_se, 5),
            "delta_ci_low": round(d_low, 5), "delta_ci_high": round(d_high, 5),
            "recovered_fraction": round(rec[0], 4), "recovered_se": round(rec[1], 4),
            "recovered_ci_low": round(rec[2], 4), "recovered_ci_high": round(rec[3], 4),
            "max_abs_logit_diff": logit_diff, "kv_bytes_per_token_bf16": kv_bytes_per_token(n_kv),
            "eval_tokens": args.eval_windows * (args.window - 1)}


def run(args, model, tok, corpus) -> list[dict]:
    val_text = bytes(corpus.val.tolist()).decode("utf-8", errors="replace")
    train_text = bytes(corpus.train.tolist()).decode("utf-8", errors="replace")
    val = window_token_ids(tok, val_text, args.eval_windows, args.window)  # (eval_windows, window)
    train = window_token_ids(tok, train_text, N_TRAIN_WINDOWS, args.window)  # uptraining batches come from these
    checkpoints = sorted({*range(args.eval_every or args.uptrain_steps, args.uptrain_steps + 1,
                                 args.eval_every or args.uptrain_steps), args.uptrain_steps})
    conversions = [("mean", None), ("first", None), *(("random", d) for d in range(args.random_draws))]
    n_evals = 2 + 2 * len(conversions) + 1 + 2 * (len(checkpoints) - 1)
    bar = tqdm(total=n_evals + (len(conversions) + 1) * args.uptrain_steps,
               desc="evaluations and uptraining steps", unit="step")

    def score(m):
        out = window_nlls(m, val)  # (eval_windows,) mean loss of each window
        bar.update(1)
        return out

    def uptrain_and_score(m, every_checkpoint: bool) -> dict[int, object]:
        """Uptrain ``m`` in place with the shared settings and batches; per-window losses at the checkpoints."""
        scores = {}

        def progress(step, loss):
            bar.update(1)
            if step + 1 == args.uptrain_steps or (every_checkpoint and step + 1 in checkpoints):
                scores[step + 1] = score(m)

        uptrain(m, train, args.uptrain_steps, args.batch, args.lr, seed=args.seed, progress=progress)
        return scores

    original = score(model)
    rows = [make_row(args, "original (3 KV heads)", 3, "none", "", 0, original, original)]
    mha = convert_kv_heads(model, 9)
    diff = max_logit_difference(model, mha, val[:1])
    rows.append(make_row(args, "expanded to MHA (9 KV heads)", 9, "copy", "", 0, score(mha), original,
                         logit_diff=diff))
    del mha
    control = uptrain_and_score(convert_kv_heads(model, 3), True)  # a copy with the same 3 KV heads
    after = []
    for method, draw in conversions:
        name = f"MQA by {method}" + (f", draw {draw}" if draw is not None else "")
        converted = convert_kv_heads(model, 1, method, seed=draw or 0)
        before = score(converted)
        rows.append(make_row(args, name, 1, method, "" if draw is None else draw, 0, before, original))
        for steps, losses in uptrain_and_score(converted, method == "mean").items():
            after.append(make_row(args, f"{name}, uptrained", 1, method, "" if draw is None else draw, steps,
                                  losses, original, converted=before, control=control[steps]))
        del converted
    rows += after
    for steps, losses in control.items():
        rows.append(make_row(args, "original, uptrained the same way (control)", 3, "none", "", steps, losses,
                             original))
    bar.close()
    return rows


def print_summary(rows: list[dict], args) -> None:
    """The table, the ranking after uptraining, the MHA check and the token budget against the paper's."""
    def ci(r, key, scale=1.0, fmt=".3f"):
        low, high = r[f"{key}_ci_low" if key else "ci_low"], r[f"{key}_ci_high" if key else "ci_high"]
        return "" if low != low else f"[{scale * low:{fmt}}, {scale * high:{fmt}}]"

    print(f"\n{'condition':<44} {'KV':>2} {'steps':>5} {'loss':>6} {'se':>5} {'95% CI':>16} {'delta':>7} "
          f"{'95% CI':>17} {'recovered':>9} {'95% CI':>11}")
    for r in rows:
        rec = "" if r["recovered_fraction"] != r["recovered_fraction"] else f"{100 * r['recovered_fraction']:.0f}%"
        print(f"{r['condition']:<44} {r['n_kv_heads']:>2} {r['uptrain_steps']:>5} {r['val_nll']:>6.3f} "
              f"{r['se']:>5.3f} {ci(r, ''):>16} {r['delta_nll_vs_original']:>+7.3f} {ci(r, 'delta'):>17} "
              f"{rec:>9} {ci(r, 'recovered', 100, '.0f'):>11}")
    print(f"(loss in nats per token over {rows[0]['eval_tokens']:,} predicted held-out tokens; se and 95% BCa "
          "intervals from 2000 bootstrap resamples of the windows; delta = loss - the original's, paired by window; "
          "recovered = share of "
          "the conversion's loss won back, minus the control's own change)")
    print(ranking_line(rows))
    print(f"expansion to MHA: largest logit change {rows[1]['max_abs_logit_diff']:.3g}")
    tokens = uptrain_tokens(args)
    print(f"uptraining budget: {args.uptrain_steps} steps x {args.batch} x {args.window} tokens = {tokens:,} tokens "
          f"per model; the GQA paper's {100 * PAPER_UPTRAIN_FRACTION:.0f}% of pre-training, applied to "
          f"SmolLM2-135M's {SMOLLM2_135M_PRETRAIN_TOKENS:,} pre-training tokens, is {PAPER_UPTRAIN_TOKENS:,}: "
          f"ours is {tokens / PAPER_UPTRAIN_TOKENS:.2g} of it (1 / {PAPER_UPTRAIN_TOKENS / tokens:,.0f})")


def main(argv=None) -> int:
    args = parse_args(argv)  # every option checked, --out included, before any work
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    corpus = load_corpus(strict=not args.allow_other_corpus)
    problem = check_text_is_long_enough(args, corpus)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    from gqa_lib.models.smollm import MODEL_FILE_INFO, load_smollm

    model, tok = load_smollm()
    print(f"SmolLM2 loaded: {len(kv_heads_of(model))} layers, KV heads {kv_heads_of(model)[0]}; corpus: "
          f"{corpus.describe()}")
    rows = run(args, model, tok, corpus)
    tokens = uptrain_tokens(args)
    meta = {
        "what": "SmolLM2-135M converted from 3 to 1 KV heads per layer three ways, each uptrained the same way, "
                "with a control; loss (nats per token) on held-out stdlib text",
        "command": results.command_line(), **results.environment_metadata(), **results.model_metadata(MODEL_FILE_INFO),
        "eval_text": f"{args.eval_windows} evenly spaced windows of {args.window} SmolLM2 tokens of the corpus "
                     f"validation files ({args.eval_windows * (args.window - 1):,} predicted tokens)",
        "uptraining": f"{args.uptrain_steps} AdamW steps, lr {args.lr}, K and V projections only, batch "
                      f"{args.batch} x {args.window} tokens, windows drawn by one generator seeded {args.seed} "
                      f"from {N_TRAIN_WINDOWS} fixed windows of the training files: the same batches for every model",
        "uptrain_tokens_per_model": str(tokens),
        "paper_uptrain_tokens": f"{PAPER_UPTRAIN_TOKENS} (5% of pre-training, Ainslie et al. 2023 sections 2.1 "
                                "and 3.1, applied to SmolLM2-135M's 2 trillion pre-training tokens, "
                                "HuggingFaceTB/SmolLM2-135M model card)",
        "uptrain_fraction_of_paper_budget": f"{tokens / PAPER_UPTRAIN_TOKENS:.3g}",
        "random_init_seeds": " ".join(str(d) for d in range(args.random_draws)),
        "interval": f"95% BCa bootstrap over evaluation windows, scipy.stats.bootstrap, {N_RESAMPLES} resamples, "
                    f"numpy default_rng({args.seed}); delta paired by window; recovered fraction resampled with "
                    "the four models' windows paired",
        "recovered_fraction": "((L_converted - L_uptrained) - (L_original - L_control)) / (L_converted - L_original)",
        "ranking_after_uptraining": ranking_line(rows),
        "vocab_size": str(model.config.vocab_size),
        **results.corpus_metadata(corpus), "seed": str(args.seed),
        **results.end_metadata(start),
    }
    return results.save_and_report(args, rows, meta, finite=LOSSES, label=("condition", "uptrain_steps"),
                                   finite_if={**dict.fromkeys(RECOVERED, is_uptrained_conversion),
                                              "max_abs_logit_diff": is_expansion},
                                   summary=lambda: print_summary(rows, args))


if __name__ == "__main__":
    raise SystemExit(main())
