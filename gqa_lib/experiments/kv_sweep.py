"""Train and evaluate tiny byte-level language models that differ only in their number of KV heads.

The point is a fair comparison. For one seed, every variant (MHA, the GQA variants, MQA):

- starts from the same initial weights for everything it shares with MHA (embeddings, query and
  output projections, MLPs, norms); its K and V projections are the first ``n_kv_heads`` heads
  of MHA's, so they come from the same distribution;
- sees the same batches in the same order (a generator seeded by the seed alone draws them);
- runs the same number of steps with the same learning-rate schedule and optimiser.

So the loss difference between a variant and MHA at one seed is the effect of the KV heads plus the
noise that the different K/V weights bring to training; differences across seeds show that noise.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F

from gqa_lib.core.checks import check_positive_int, check_real
from gqa_lib.experiments.corpus import fixed_windows, sample_batch
from gqa_lib.experiments.stats import holm, t_975
from gqa_lib.models.tiny_lm import TinyLM, TinyLMConfig

EMBED_INIT_STD = 0.02  # GPT-2's


@dataclass(frozen=True)
class TrainConfig:
    """How long and how to train; every variant of a comparison uses the same one."""

    steps: int = 600
    batch: int = 32
    seq_len: int = 64
    lr: float = 3e-3
    warmup: int = 30
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio at the last step
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_windows: int = 2048  # fixed validation windows of seq_len bytes
    eval_batch: int = 128

    def __post_init__(self):
        for name in ("steps", "batch", "seq_len", "eval_windows", "eval_batch"):
            check_positive_int(name, getattr(self, name))
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int):
            raise TypeError(f"warmup={self.warmup!r} must be an integer in 0..steps-1={self.steps - 1}")
        if self.warmup < 0 or self.warmup >= self.steps:
            raise ValueError(f"warmup={self.warmup} must be in 0..steps-1={self.steps - 1}")
        check_real("lr", self.lr, low=0, low_ok=False)
        check_real("min_lr_ratio", self.min_lr_ratio, low=0, high=1)
        check_real("weight_decay", self.weight_decay, low=0)
        check_real("grad_clip", self.grad_clip, low=0, low_ok=False)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up for ``cfg.warmup`` steps, then a cosine from ``lr`` down to ``lr * min_lr_ratio``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - 1 - cfg.warmup)  # 0 -> 1
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def init_model(model_cfg: TinyLMConfig, seed: int) -> TinyLM:
    """A TinyLM whose initial weights depend on ``seed`` only, shared with MHA wherever the shapes allow.

    The MHA model of the same seed is built first; the variant copies every tensor of it and takes
    the first ``n_kv_heads * head_dim`` rows of each K and V projection. The (tied) embedding is
    re-drawn with std ``EMBED_INIT_STD``.
    """
    mha_cfg = TinyLMConfig(**{**asdict(model_cfg), "n_kv_heads": model_cfg.n_heads})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reference = TinyLM(mha_cfg)
        # TinyLM keeps nn.Embedding's N(0, 1) init; tied to the output layer that makes the first logits
        # about sqrt(d_model) times too large (initial loss ~90 nats instead of ln 256 = 5.5), and the
        # model spends its first hundred steps recovering. GPT-2's N(0, 0.02) starts at ln 256.
        torch.nn.init.normal_(reference.embed.weight, std=EMBED_INIT_STD)
        model = TinyLM(model_cfg)  # its own random init is overwritten below
    ref_state = reference.state_dict()
    state = {}
    for name, tensor in model.state_dict().items():
        src = ref_state[name]
        state[name] = src[: tensor.shape[0]].clone() if src.shape != tensor.shape else src.clone()
    model.load_state_dict(state)
    return model


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms' gains)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def lm_loss(model: TinyLM, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross-entropy in nats; x, y: (batch, seq_len)."""
    logits = model(x)  # (batch, seq_len, 256)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@torch.no_grad()
def evaluate(model: TinyLM, tokens: torch.Tensor, cfg: TrainConfig) -> float:
    """Mean loss (nats per byte) over the fixed validation windows of ``tokens``."""
    was_training = model.training
    model.eval()
    x, y = fixed_windows(tokens, cfg.eval_windows, cfg.seq_len)  # (eval_windows, seq_len) each
    total = 0.0
    for i in range(0, len(x), cfg.eval_batch):
        xb, yb = x[i:i + cfg.eval_batch], y[i:i + cfg.eval_batch]
        total += lm_loss(model, xb, yb).item() * len(xb)
    model.train(was_training)
    return total / len(x)


def train_lm(model_cfg: TinyLMConfig, cfg: TrainConfig, train_tokens: torch.Tensor, val_tokens: torch.Tensor,
             seed: int, progress=None) -> dict:
    """Train one model; return its validation loss and a few facts about the run.

    ``progress``, if given, is called as ``progress(step, loss)`` after each step (a tqdm update).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")
    model = init_model(model_cfg, seed)
    model.train()
    opt = make_optimizer(model, cfg)
    batches = torch.Generator().manual_seed(seed)  # the same batches for every variant of this seed
    start = time.perf_counter()
    train_loss = float("nan")
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        x, y = sample_batch(train_tokens, cfg.batch, cfg.seq_len, batches)  # (batch, seq_len) each
        loss = lm_loss(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        train_loss = loss.item()
        if progress is not None:
            progress(step, train_loss)
    train_s = time.perf_counter() - start
    val_loss = evaluate(model, val_tokens, cfg)
    return {"model": model, "val_loss": val_loss, "final_train_loss": train_loss, "train_seconds": train_s,
            "n_params": sum(p.numel() for p in model.parameters())}


# --- the sweep: every KV-head count, several seeds --------------------------------------------------

def kv_bytes_per_token(model_cfg: TinyLMConfig, bytes_per_elem: int = 4) -> int:
    """Bytes the KV cache grows by per token, all layers (fp32 by default, what the models train in)."""
    from gqa_lib.core.cache_math import kv_cache_bytes

    head_dim = model_cfg.d_model // model_cfg.n_heads
    return kv_cache_bytes(model_cfg.n_layers, model_cfg.n_kv_heads, head_dim, 1, 1, bytes_per_elem)


def run_variant(model_cfg: TinyLMConfig, cfg: TrainConfig, train_tokens: torch.Tensor, val_tokens: torch.Tensor,
                seed: int, threads: int | None = None, progress=None) -> dict:
    """One row of the sweep's results table (the trained model is dropped)."""
    from gqa_lib.core.layout import attention_kind

    if threads is not None:
        torch.set_num_threads(threads)
    out = train_lm(model_cfg, cfg, train_tokens, val_tokens, seed, progress)
    return {
        "seed": seed, "n_heads": model_cfg.n_heads, "n_kv_heads": model_cfg.n_kv_heads,
        "kind": attention_kind(model_cfg.n_heads, model_cfg.n_kv_heads),
        "kv_bytes_per_token": kv_bytes_per_token(model_cfg), "val_loss": round(out["val_loss"], 6),
        "val_bits_per_byte": round(out["val_loss"] / math.log(2), 6),
        "final_train_loss": round(out["final_train_loss"], 6), "n_params": out["n_params"],
        "train_seconds": round(out["train_seconds"], 2),
    }


def summarize_sweep(rows: list[dict]) -> list[dict]:
    """Per KV-head count: val loss mean ± std, and the paired difference against MHA seed by seed.

    ``rows`` are run_variant rows. A difference is ``variant - MHA`` at the same seed (positive:
    the variant is worse). ``ci95_low``/``ci95_high`` is the paired t interval of its mean;
    ``n_worse`` counts the seeds at which the variant's loss is higher than MHA's. ``n_params`` and
    ``params_vs_mha_pct`` (from the rows' ``n_params``; -1 and NaN without it) say how much smaller the
    variant is: fewer KV heads also mean smaller K and V projections, so a difference mixes the
    effect of sharing K and V with that of having fewer parameters.
    """
    import statistics

    by_kv: dict[int, dict[int, float]] = {}
    bytes_of: dict[int, int] = {}
    params_of: dict[int, int] = {}
    for r in rows:
        by_kv.setdefault(int(r["n_kv_heads"]), {})[int(r["seed"])] = float(r["val_loss"])
        bytes_of[int(r["n_kv_heads"])] = int(r["kv_bytes_per_token"])
        if "n_params" in r:
            params_of[int(r["n_kv_heads"])] = int(r["n_params"])
    n_heads = max(by_kv)
    if int(rows[0]["n_heads"]) != n_heads:
        raise ValueError(f"the rows hold no MHA run (n_kv_heads == n_heads={rows[0]['n_heads']}) to pair with")
    mha = by_kv[n_heads]
    out = []
    for kv in sorted(by_kv, reverse=True):
        losses = by_kv[kv]
        seeds = sorted(set(losses) & set(mha))
        diffs = [losses[s] - mha[s] for s in seeds]
        n = len(diffs)
        mean_d = statistics.fmean(diffs)
        std_d = statistics.stdev(diffs) if n > 1 else float("nan")
        half = t_975(n - 1) * std_d / math.sqrt(n) if n > 1 else float("nan")
        vals = list(losses.values())
        out.append({
            "n_kv_heads": kv, "kv_bytes_per_token": bytes_of[kv], "n_params": params_of.get(kv, -1),
            "params_vs_mha_pct": (100 * (params_of[kv] / params_of[n_heads] - 1)
                                  if kv in params_of and n_heads in params_of else float("nan")),
            "n_seeds": len(vals),
            "val_loss_mean": statistics.fmean(vals), "val_loss_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "diff_vs_mha_mean": mean_d, "diff_vs_mha_std": std_d, "ci95_low": mean_d - half,
            "ci95_high": mean_d + half, "n_worse": sum(d > 0 for d in diffs), "n_paired": n,
            "diff_pct": 100 * mean_d / statistics.fmean(mha[s] for s in seeds),
        })
    return out


def pairwise_tests(rows: list[dict], alpha: float = 0.05) -> list[dict]:
    """Paired t-tests of every pair of variants (loss of ``a`` minus loss of ``b``, seed by seed), Holm-corrected.

    One dict per pair (fewer KV heads as ``a``): ``n_kv_a``, ``n_kv_b``, ``n_paired``, ``mean_diff``,
    ``t``, ``p`` (two-sided, ``scipy.stats.ttest_rel``), ``p_holm`` (adjusted over all the pairs, see
    :func:`holm`) and ``resolved`` (``p_holm < alpha``). Needs at least 2 shared seeds per pair.
    """
    from itertools import combinations

    from scipy import stats

    by_kv: dict[int, dict[int, float]] = {}
    for r in rows:
        by_kv.setdefault(int(r["n_kv_heads"]), {})[int(r["seed"])] = float(r["val_loss"])
    out = []
    for b, a in combinations(sorted(by_kv, reverse=True), 2):  # b has more KV heads than a
        seeds = sorted(set(by_kv[a]) & set(by_kv[b]))
        if len(seeds) < 2:
            raise ValueError(f"{a} and {b} KV heads share {len(seeds)} seed(s); a paired test needs at least 2")
        xa, xb = [by_kv[a][s] for s in seeds], [by_kv[b][s] for s in seeds]
        res = stats.ttest_rel(xa, xb)
        out.append({"n_kv_a": a, "n_kv_b": b, "n_paired": len(seeds),
                    "mean_diff": sum(x - y for x, y in zip(xa, xb, strict=True)) / len(seeds),
                    "t": float(res.statistic), "p": float(res.pvalue)})
    for row, adj in zip(out, holm([r["p"] for r in out]), strict=True):
        row["p_holm"] = adj
        row["resolved"] = bool(adj < alpha)
    return out

