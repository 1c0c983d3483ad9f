"""Convert SmolLM2-135M from 3 KV heads to 1 (MQA) in every layer, the GQA paper's three ways, and measure the damage.

Ainslie et al. (2023) build each new KV head from the old heads it replaces: their mean, the first
of them, or a random projection; then "uptrain" briefly. This command does that to the real
SmolLM2 (30 layers, 9 query heads, 3 KV heads) and measures loss and perplexity on held-out real
text: the validation files of the standard-library corpus (gqa_lib/corpus.py), in SmolLM2's own
tokens. It then uptrains the mean-pooled model (K and V projections only, seeded) and, as a control,
the original model with the same batches (some of the gain is only the model adapting to this text). Finally
it expands the 3 KV heads to 9 (MHA) and checks that no logit moves.

    .venv/bin/python benchmarks/convert_smollm.py                 # the shipped table
    .venv/bin/python benchmarks/convert_smollm.py --eval-windows 2 --uptrain-steps 2 --out /tmp/conv.csv

Writes data/results/smollm_conversion.csv (refuses to replace it without --overwrite).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from gqa_lib import results  # noqa: E402  (CSV writing and the options every benchmark shares)
from gqa_lib.conversion_eval import (  # noqa: E402
    convert_kv_heads,
    kv_heads_of,
    max_logit_difference,
    mean_nll,
    uptrain,
    window_token_ids,
)
from gqa_lib.corpus import load_corpus  # noqa: E402


def parse_args(argv=None):
    """The options, every one checked here, before any work (bad ones stop with a usage error, exit 2)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--eval-windows", type=results.positive_int, default=8,
                   help="held-out windows to score (default 8)")
    p.add_argument("--window", type=results.int_at_least(2), default=256,
                   help="tokens per window, 2 or more: every token after the first is predicted (default 256)")
    p.add_argument("--uptrain-steps", type=results.positive_int, default=30, help="uptraining steps (default 30)")
    p.add_argument("--eval-every", type=results.positive_int, default=10,
                   help="score the uptrained model every N steps (default 10)")
    p.add_argument("--batch", type=results.positive_int, default=2, help="windows per uptraining step (default 2)")
    p.add_argument("--lr", type=results.positive_float, default=1e-3,
                   help="AdamW learning rate of uptraining (default 1e-3)")
    p.add_argument("--seed", type=results.non_negative_int, default=0,
                   help="seed of random init and of the uptraining batches")
    p.add_argument("--threads", type=results.positive_int, default=1, help="torch.set_num_threads (default 1)")
    results.add_output_options(p, "smollm_conversion.csv")
    p.add_argument("--allow-other-corpus", action="store_true",
                   help="run even if this Python's standard library differs from the shipped corpus")
    args = p.parse_args(argv)
    results.check_output_option(p, args)
    return args


def check_text_is_long_enough(args, corpus) -> str | None:
    """Why the corpus cannot give the windows asked for, or None. A token spans at least one byte, so the
    byte counts bound the token counts: this catches impossible sizes before the model is loaded."""
    for what, n_bytes, n_windows in (("validation", len(corpus.val), args.eval_windows),
                                     ("training", len(corpus.train), 512)):
        if n_windows * args.window > n_bytes:
            return (f"--window {args.window} x {n_windows} {what} windows needs more tokens than the corpus's "
                    f"{what} text has bytes ({n_bytes:,}); lower --window or --eval-windows")
    return None


def kv_bytes_per_token(n_kv_heads: int, n_layers: int = 30, head_dim: int = 64, bytes_per_elem: int = 2) -> int:
    """SmolLM2's cache per token in bf16, all layers, K and V."""
    return 2 * n_layers * n_kv_heads * head_dim * bytes_per_elem


def row(condition: str, n_kv: int, method: str, steps: int, nll: float, base_nll: float, n_tokens: int,
        logit_diff: float = float("nan"), recovered: float = float("nan")) -> dict:
    return {"condition": condition, "n_kv_heads": n_kv, "method": method, "uptrain_steps": steps,
            "val_nll": round(nll, 5), "val_ppl": round(math.exp(nll), 3),
            "delta_nll_vs_original": round(nll - base_nll, 5),
            "recovered_fraction": round(recovered, 4), "max_abs_logit_diff": logit_diff,
            "kv_bytes_per_token_bf16": kv_bytes_per_token(n_kv), "eval_tokens": n_tokens}


def run(args, model, tok, corpus) -> list[dict]:
    val_text = bytes(corpus.val.tolist()).decode("utf-8", errors="replace")
    train_text = bytes(corpus.train.tolist()).decode("utf-8", errors="replace")
    val = window_token_ids(tok, val_text, args.eval_windows, args.window)  # (eval_windows, window)
    train = window_token_ids(tok, train_text, 512, args.window)  # (512, window): uptraining draws from these
    n_tokens = val[:, 1:].numel()
    checkpoints = sorted({*range(args.eval_every, args.uptrain_steps + 1, args.eval_every), args.uptrain_steps})
    bar = tqdm(total=6 + len(checkpoints) + 2 * args.uptrain_steps, desc="evaluations and uptraining steps",
               unit="step")

    def score(m):
        out = mean_nll(m, val)
        bar.update(1)
        return out

    base = score(model)
    rows = [row("original (3 KV heads)", 3, "none", 0, base, base, n_tokens)]
    mha = convert_kv_heads(model, 9)
    diff = max_logit_difference(model, mha, val[:1])
    rows.append(row("expanded to MHA (9 KV heads)", 9, "copy", 0, score(mha), base, n_tokens, logit_diff=diff))
    del mha
    pooled = {}
    for method in ("mean", "first", "random"):
        converted = convert_kv_heads(model, 1, method, seed=args.seed)
        pooled[method] = score(converted)
        rows.append(row(f"MQA by {method}", 1, method, 0, pooled[method], base, n_tokens))
        if method == "mean":
            uptrained = converted  # uptrained in place below

    def progress(step, loss):
        bar.update(1)
        if step + 1 in checkpoints:
            nll = score(uptrained)
            rec = (pooled["mean"] - nll) / (pooled["mean"] - base)
            rows.append(row("MQA by mean, uptrained", 1, "mean", step + 1, nll, base, n_tokens, recovered=rec))

    uptrain(uptrained, train, args.uptrain_steps, args.batch, args.lr, seed=args.seed, progress=progress)
    control = convert_kv_heads(model, 3)  # a copy with the same 3 KV heads
    tick = lambda step, loss: bar.update(1)  # noqa: E731
    uptrain(control, train, args.uptrain_steps, args.batch, args.lr, seed=args.seed, progress=tick)
    rows.append(row("original, uptrained the same way (control)", 3, "none", args.uptrain_steps, score(control), base,
                    n_tokens))
    bar.close()
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)  # every option checked, --out included, before any work
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    corpus = load_corpus(strict=not args.allow_other_corpus)
    problem = check_text_is_long_enough(args, corpus)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    from gqa_lib.smollm import MODEL_FILE_INFO, load_smollm

    model, tok = load_smollm()
    print(f"SmolLM2 loaded: {len(kv_heads_of(model))} layers, KV heads {kv_heads_of(model)[0]}; corpus: "
          f"{corpus.describe()}")
    rows = run(args, model, tok, corpus)
    print(f"\n{'condition':<45} {'KV':>3} {'steps':>5} {'loss':>7} {'ppl':>11} {'Δloss':>7} {'recovered':>9}")
    for r in rows:
        rec = "" if r["recovered_fraction"] != r["recovered_fraction"] else f"{100 * r['recovered_fraction']:.0f}%"
        print(f"{r['condition']:<45} {r['n_kv_heads']:>3} {r['uptrain_steps']:>5} {r['val_nll']:>7.3f} "
              f"{r['val_ppl']:>11.2f} {r['delta_nll_vs_original']:>+7.3f} {rec:>9}")
    print(f"expansion to MHA: largest logit change {rows[1]['max_abs_logit_diff']:.3g}")
    meta = {
        "what": "SmolLM2-135M converted from 3 to 1 KV heads per layer; loss (nats per token) on held-out stdlib text",
        "command": results.command_line(), **results.environment_metadata(), "model": MODEL_FILE_INFO["name"],
        "model_file": f"{MODEL_FILE_INFO['file']} ({MODEL_FILE_INFO['quantization']})",
        "model_sha256": MODEL_FILE_INFO["sha256"],
        "eval_text": f"{args.eval_windows} evenly spaced windows of {args.window} SmolLM2 tokens of the corpus "
                     "validation files",
        "uptraining": f"AdamW lr {args.lr}, K and V projections only, batch {args.batch} x {args.window} tokens, "
                      "windows drawn (seeded) from 512 fixed windows of the training files",
        "vocab_size": str(model.config.vocab_size),
        "corpus_python": corpus.python, "corpus_sha256": corpus.sha256,
        "corpus_matches_shipped": str(corpus.matches_shipped), "seed": str(args.seed),
        "wall_seconds": f"{time.perf_counter() - start:.0f}",
        "loadavg_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    path = results.save_rows(args.out, rows, meta, overwrite=args.overwrite)  # never loses the rows
    if path is None:
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
