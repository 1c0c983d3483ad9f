"""Convert the real SmolLM2 between KV-head counts and measure what that does to its perplexity.

Ainslie et al. (2023, "GQA", section 2.1) turn a trained multi-head model into a grouped one by
building each new KV head from the old heads of its group: their mean (best), the first of them, or
a fresh random projection (worst), followed by a short "uptraining". This module does the same to the
transformers model of SmolLM2-135M (9 query heads, 3 KV heads, 30 layers): 3 KV heads -> 1 (MQA) in
every layer. The per-layer arithmetic is gqa_lib.core.kv_head_conversion's (reduce_kv_heads, expand_to_mha); this
module moves weights between transformers' ``LlamaAttention`` and gqa_lib's layer and back.

Held-out text: the validation files of the standard-library corpus (gqa_lib/experiments/corpus.py), tokenised with
SmolLM2's own tokenizer, cut into fixed windows. Statistics are over those windows: :func:`window_nlls`
scores each window, ``experiments.stats.bootstrap_mean`` gives a mean with its bootstrap standard error and 95%
interval (a loss, or a loss difference paired by window), :func:`recovered_fraction_interval` the
share of a conversion's damage that uptraining wins back, with the control's change subtracted.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch.nn import functional as F

from gqa_lib.core.attention import GroupedQueryAttention
from gqa_lib.core.checks import check_positive_int
from gqa_lib.core.kv_head_conversion import METHODS, expand_to_mha, reduce_kv_heads
from gqa_lib.experiments.stats import per_window


def attention_modules(model) -> list:
    """The ``self_attn`` module of every decoder layer of a transformers Llama-family model."""
    return [layer.self_attn for layer in model.model.layers]


def kv_heads_of(model) -> list[int]:
    """KV heads each layer computes, read from the K projection's size (not the config)."""
    return [attn.k_proj.out_features // attn.head_dim for attn in attention_modules(model)]


def _as_gqa_layer(attn, n_heads: int, n_kv_heads: int) -> GroupedQueryAttention:
    """gqa_lib's layer holding ``attn``'s four projections (RoPE is not needed to move weights)."""
    d_model = attn.q_proj.in_features
    layer = GroupedQueryAttention(d_model, n_heads, n_kv_heads, head_dim=attn.head_dim,
                                  bias=attn.k_proj.bias is not None, rope=False)
    layer.load_state_dict({f"{n}.{p}": t for n in ("q_proj", "k_proj", "v_proj", "o_proj")
                           for p, t in getattr(attn, n).named_parameters()})
    return layer


def _set_kv_projections(model, attn, new: GroupedQueryAttention) -> None:
    """Put ``new``'s K and V projections into transformers' ``attn`` and fix the bookkeeping that reads them."""
    attn.k_proj, attn.v_proj = new.k_proj, new.v_proj
    attn.num_key_value_groups = new.group_size  # what eager attention's repeat_kv reads


def convert_kv_heads(model, n_kv_heads: int, method: str = "mean", seed: int = 0):
    """A copy of a transformers Llama-family ``model`` whose every layer has ``n_kv_heads`` KV heads.

    Fewer heads than the model has: ``method`` is 'mean', 'first' or 'random'
    (gqa_lib.core.kv_head_conversion.reduce_kv_heads,
    random with a generator seeded by ``seed``). As many heads as query heads: expansion to MHA
    (gqa_lib.core.kv_head_conversion.expand_to_mha), which changes no output.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not known (valid: {', '.join(METHODS)})")
    cfg = model.config
    n_heads, old_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    check_positive_int("n_kv_heads", n_kv_heads)
    new_model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    for attn in attention_modules(new_model):
        layer = _as_gqa_layer(attn, n_heads, old_kv)
        if n_kv_heads == n_heads and old_kv != n_heads:
            new = expand_to_mha(layer)
        else:
            new = reduce_kv_heads(layer, n_kv_heads, method, generator)
        _set_kv_projections(new_model, attn, new)
    new_model.config.num_key_value_heads = n_kv_heads  # what a new cache is sized by
    return new_model


def window_token_ids(tokenizer, text: str, n_windows: int, window: int) -> torch.Tensor:
    """``n_windows`` evenly spaced windows of ``window`` tokens of ``text``: (n_windows, window) int64."""
    check_positive_int("n_windows", n_windows)
    check_positive_int("window", window)
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    if len(ids) < n_windows * window:
        raise ValueError(f"text has {len(ids)} tokens; n_windows={n_windows} x window={window} needs more")
    starts = torch.linspace(0, len(ids) - window, n_windows).long()
    return ids[starts[:, None] + torch.arange(window)]  # (n_windows, window)


@torch.no_grad()
def window_nlls(model, windows: torch.Tensor, batch: int = 4) -> np.ndarray:
    """Mean next-token loss (nats) of each window of ``windows`` (n, window), window >= 2: (n,) float64.

    The windows are the units the bootstrap resamples (``experiments.stats.bootstrap_mean``): tokens inside a window
    are not independent, windows far apart in the text nearly are. With windows of equal length the
    mean of this array is :func:`mean_nll`.
    """
    _check_windows("windows", windows)
    check_positive_int("batch", batch)
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(windows), batch):
        ids = windows[i:i + batch]
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()  # (b, window - 1, vocab)
        loss = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (b, window - 1)
        out.append(loss.double().mean(1))
    model.train(was_training)
    return torch.cat(out).numpy()


@torch.no_grad()
def mean_nll(model, windows: torch.Tensor, batch: int = 4) -> float:
    """Mean next-token loss (nats) over every predicted token of ``windows`` (n, window); window >= 2."""
    _check_windows("windows", windows)
    check_positive_int("batch", batch)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        ids = windows[i:i + batch]
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1]  # (b, window - 1, vocab)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), reduction="sum")
        total += loss.item()
        count += ids[:, 1:].numel()
    model.train(was_training)
    return total / count


def _check_windows(name: str, windows) -> None:
    """Token windows are a (n, window) integer tensor with window >= 2: a 1-token window predicts nothing."""
    if not isinstance(windows, torch.Tensor) or windows.ndim != 2 or windows.dtype.is_floating_point:
        shape = tuple(windows.shape) if isinstance(windows, torch.Tensor) else type(windows).__name__
        raise TypeError(f"{name}={shape} must be a (n_windows, window) integer tensor; see window_token_ids")
    if windows.shape[0] < 1 or windows.shape[1] < 2:
        raise ValueError(f"{name}.shape={tuple(windows.shape)} must hold at least one window of 2 or more tokens "
                         "(each token after the first is predicted)")


def perplexity(model, windows: torch.Tensor, batch: int = 4) -> float:
    return math.exp(mean_nll(model, windows, batch))


@torch.no_grad()
def max_logit_difference(model_a, model_b, ids: torch.Tensor) -> float:
    """Largest absolute difference between two models' logits on ``ids`` (batch, seq)."""
    a = model_a(input_ids=ids, use_cache=False).logits
    b = model_b(input_ids=ids, use_cache=False).logits
    return (a - b).abs().max().item()


def uptrain(model, train_windows: torch.Tensor, steps: int, batch: int = 2, lr: float = 1e-4, seed: int = 0,
            only_kv: bool = True, progress=None) -> list[float]:
    """Continue training ``model`` in place for ``steps`` AdamW steps on random rows of ``train_windows``.

    ``only_kv``: train only the K and V projections, the weights the conversion replaced (cheaper, and
    a few dozen steps on little text cannot then disturb the rest of the model). Returns the losses.
    """
    check_positive_int("steps", steps)
    check_positive_int("batch", batch)
    _check_windows("train_windows", train_windows)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr={lr!r} must be a finite positive number, such as 1e-4")
    g = torch.Generator().manual_seed(seed)
    params = []
    for name, p in model.named_parameters():
        train_it = (not only_kv) or name.endswith(("k_proj.weight", "v_proj.weight", "k_proj.bias", "v_proj.bias"))
        p.requires_grad_(train_it)
        if train_it:
            params.append(p)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for step in range(steps):
        ids = train_windows[torch.randint(0, len(train_windows), (batch,), generator=g)]  # (batch, window)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if progress is not None:
            progress(step, loss.item())
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return losses


# --- statistics over windows ---------------------------------------------------------------------

# The token budget the GQA paper's recipe would give SmolLM2-135M. Ainslie et al. (2023), sections 2.1
# and 3.1: uptraining runs for a proportion alpha = 0.05 of the original pre-training steps; applied to
# tokens (as if uptraining batches held as many tokens as pre-training ones). SmolLM2-135M was
# pre-trained on 2 trillion tokens (HuggingFaceTB/SmolLM2-135M model card: "The 135M model was trained
# on 2 trillion tokens").
PAPER_UPTRAIN_FRACTION = 0.05
SMOLLM2_135M_PRETRAIN_TOKENS = 2 * 10**12
PAPER_UPTRAIN_TOKENS = round(PAPER_UPTRAIN_FRACTION * SMOLLM2_135M_PRETRAIN_TOKENS)  # 100 billion


def recovered_fraction(converted, uptrained, original, control):
    """Share of a conversion's damage that uptraining wins back, net of what uptraining does to the original.

    recovered = ((converted - uptrained) - (original - control)) / (converted - original), with losses in
    nats: ``converted`` the converted model before uptraining, ``uptrained`` after, ``original`` the
    unconverted model, ``control`` the unconverted model uptrained the same way (same steps, learning rate
    and batches). Uptraining on this text lowers even the original's loss (it adapts to the text, not
    only to its new KV heads); without subtracting that, the conversion would get credit for it. 1 means
    back to where the same uptraining takes the original; 0, no better than the control's own gain.
    Works on numbers or on arrays (element by element).
    """
    return ((converted - uptrained) - (original - control)) / (converted - original)


def recovered_fraction_interval(converted, uptrained, original, control, confidence: float = 0.95,
                                n_resamples: int = 2000, seed: int = 0) -> tuple[float, float, float, float]:
    """:func:`recovered_fraction` of four models' mean losses, with bootstrap se and interval: (value, se, low, high).

    Each argument is the (n,) per-window loss of one model on the same n windows (:func:`window_nlls`).
    The value is the fraction computed from the four mean losses (a ratio of mean changes, not a mean of
    per-window ratios: a window the conversion barely hurts would put a near-zero denominator in the
    latter). scipy.stats.bootstrap with ``paired=True`` resamples window indices and takes the same
    windows from all four arrays, because all four were scored on the same windows and a hard window
    raises all four losses together; resampling them independently would count that shared difficulty as
    noise and widen the interval. BCa, 2000 resamples, ``numpy.random.default_rng(seed)``.
    """
    from scipy.stats import bootstrap

    c = per_window("converted", converted)
    u, o, k = (per_window(name, x, len(c)) for name, x in
               (("uptrained", uptrained), ("original", original), ("control", control)))
    value = float(recovered_fraction(c.mean(), u.mean(), o.mean(), k.mean()))

    def statistic(c, u, o, k, axis=-1):
        return recovered_fraction(c.mean(axis), u.mean(axis), o.mean(axis), k.mean(axis))

    res = bootstrap((c, u, o, k), statistic, paired=True, vectorized=True, confidence_level=confidence,
                    n_resamples=n_resamples, method="BCa", rng=np.random.default_rng(seed))
    return value, float(res.standard_error), float(res.confidence_interval.low), float(res.confidence_interval.high)


def final_rows(table):
    """The conversion table as a DataFrame, keeping only the rows before uptraining or at its last step."""
    import pandas as pd

    t = pd.DataFrame(table).copy()
    last = t["uptrain_steps"].max()
    return t[t["uptrain_steps"].isin([0, last])]


def rank_methods(table) -> list[dict]:
    """The three conversions ranked by held-out loss after uptraining, best first.

    ``table``: rows of ``benchmarks/convert_smollm.py`` (list of dicts, or the DataFrame of
    ``gqa_lib.experiments.results.read_results``). Only the rows at the last uptraining step count. A method with
    several draws (random init) is the mean of its draws; ``draw_min``/``draw_max`` give their spread
    (equal to ``val_nll`` for a single draw) and ``se`` is the bootstrap standard error of a single draw
    (NaN for several: their spread is the figure to read). ``recovered`` is the mean recovered fraction.
    """
    t = final_rows(table)
    done = t[(t["uptrain_steps"] > 0) & t["method"].isin(METHODS)]
    if done.empty:
        raise ValueError("table has no uptrained conversion rows (method mean, first or random, uptrain_steps > 0)")
    out = []
    for method, part in done.groupby("method"):
        single = len(part) == 1
        out.append({"method": method, "draws": len(part), "val_nll": float(part["val_nll"].mean()),
                    "se": float(part["se"].iloc[0]) if single else float("nan"),
                    "draw_min": float(part["val_nll"].min()), "draw_max": float(part["val_nll"].max()),
                    "recovered": float(part["recovered_fraction"].mean())})
    return sorted(out, key=lambda r: r["val_nll"])


def ranking_line(table) -> str:
    """One line: the methods ranked after uptraining, e.g. 'mean 5.263 (se 0.041) < random 5.9 (3 draws ...) < ...'."""
    parts = []
    for r in rank_methods(table):
        if r["draws"] == 1:
            parts.append(f"{r['method']} {r['val_nll']:.3f} (se {r['se']:.3f})")
        else:
            parts.append(f"{r['method']} {r['val_nll']:.3f} (mean of {r['draws']} draws, "
                         f"{r['draw_min']:.3f} to {r['draw_max']:.3f})")
    return "after uptraining, loss (nats per token), best first: " + " < ".join(parts)

