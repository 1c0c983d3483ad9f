"""The methods notebook 08 compares, the loop that scores them on a trained model, and the chart.

A method is an attention source (the model's own layers, fewer KV heads, a latent of some rank) and a
cache policy (``gqa_lib.experiments.cache_shrink.CachePolicy``: window, sinks, number format), optionally with
cross-layer sharing. :func:`score_methods` runs each over the same token windows with
``gqa_lib.models.smollm_decoder.SmolLMDecoder`` and returns its loss per window, on the tokens after
``score_from`` only, so that every scored token has at least that much context (a sliding window
shorter than it is then always in force). :func:`summarise` adds bytes and bootstrap intervals
(``gqa_lib.experiments.stats.bootstrap_interval``, scipy's BCa bootstrap over windows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from gqa_lib.core.checks import check_positive_int
from gqa_lib.experiments.cache_shrink import (
    CachePolicy,
    layer_cache_bytes,
    pareto_front,
    shrink_layers,
    shrunk_cache_bytes_per_token,
)

FAMILIES = ("original", "fewer KV heads", "latent (MLA)", "sliding window", "quantized", "cross-layer",
            "combined")


@dataclass(frozen=True)
class Method:
    """One way to shrink the cache: ``source`` names the attention layers, ``policy`` what their cache keeps."""

    name: str
    family: str
    source: str = "original"
    policy: CachePolicy = field(default_factory=CachePolicy)
    share_every: int = 1

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r} must be one of {FAMILIES}")


def default_methods(ranks=(64, 128, 192, 256), windows=(256, 512, 1024), sinks: int = 4,
                    uptrained: bool = True) -> list[Method]:
    """Every method of the shipped chart. Sources: 'original', 'mean-pooled', 'uptrained', 'control',
    'latent-R' for each rank R (input-weighted SVD)."""
    m = [Method("original (3 KV heads, bf16)", "original"),
         Method("1 KV head, mean-pooled", "fewer KV heads", "mean-pooled")]
    if uptrained:
        m += [Method("1 KV head, mean-pooled, uptrained", "fewer KV heads", "uptrained"),
              Method("original, same uptraining (control)", "original", "control")]
    m += [Method(f"latent rank {r}", "latent (MLA)", f"latent-{r}") for r in ranks]
    for w in windows:
        m.append(Method(f"window {w}", "sliding window", policy=CachePolicy(window=w)))
        if sinks:
            m.append(Method(f"window {w} + {sinks} sinks", "sliding window", policy=CachePolicy(window=w, sinks=sinks)))
    m += [Method(f"int{b} per {axis}", "quantized", policy=CachePolicy(bits=b, axis=axis))
          for b in (8, 4) for axis in ("token", "channel")]
    m.append(Method("layer pairs share K/V (CLA-2)", "cross-layer", share_every=2))
    # Two methods that stack: each changes a different factor of the bytes.
    combos = [Method(f"latent rank {max(ranks)} + int8", "combined", f"latent-{max(ranks)}", CachePolicy(bits=8)),
              Method(f"window {max(windows)} + {sinks} sinks + int4 per channel", "combined",
                     policy=CachePolicy(window=max(windows), sinks=sinks, bits=4, axis="channel"))]
    if uptrained:
        combos.insert(0, Method("1 KV head uptrained + int8", "combined", "uptrained", CachePolicy(bits=8)))
    return m + combos


@torch.no_grad()
def window_losses_after(decoder, windows: torch.Tensor, score_from: int) -> torch.Tensor:
    """Mean next-token loss (nats) of each window (n, seq), over the tokens at positions > ``score_from``: (n,) float64.

    Position p's logits predict token p + 1; the scored predictions are those of positions
    ``score_from`` .. seq - 2, each made with at least ``score_from`` tokens of context.
    """
    if windows.ndim != 2 or not 0 <= score_from < windows.shape[1] - 1:
        raise ValueError(f"score_from={score_from} must be in 0..{windows.shape[1] - 2} for windows of shape "
                         f"{tuple(windows.shape)}")
    out = []
    for ids in windows:
        hidden = decoder.hidden_states(ids[None])[0, score_from:-1]  # (seq - 1 - score_from, d_model)
        logits = decoder.lm_head(hidden).float()  # scored positions only: the head holds a fifth of the weights
        out.append(F.cross_entropy(logits, ids[score_from + 1:]).double())
    return torch.stack(out)


def score_methods(decoder, sources: dict, methods: list[Method], windows: torch.Tensor, score_from: int,
                  progress=None) -> dict[str, dict]:
    """{method name: {'losses': (n,) per-window losses, 'bytes_per_token': float, 'method': Method}}.

    ``decoder``: a ``SmolLMDecoder``; ``sources``: {source name: list of attention layers}. Bytes per token
    are counted at the windows' length of context (``gqa_lib.experiments.cache_shrink.shrunk_cache_bytes_per_token``).
    """
    context = windows.shape[1]
    out = {}
    for method in methods:
        if method.source not in sources:
            raise KeyError(f"method {method.name!r} needs source {method.source!r}; sources: {sorted(sources)}")
        layers = shrink_layers(list(sources[method.source]), method.policy, method.share_every)
        losses = window_losses_after(decoder.with_attention(layers), windows, score_from)
        caching = [a for a in layers if a.caches]
        out[method.name] = {"losses": losses, "bytes_per_token": shrunk_cache_bytes_per_token(layers, context),
                            "method": method, "numbers_per_token_layer": caching[0].numbers_per_token(),
                            "caching_layers": len(caching), "context": context}
        if progress is not None:
            progress(method)
    return out


def summarise(scores: dict[str, dict], baseline: str, seed: int = 0) -> list[dict]:
    """One row per method: bytes, loss and 95% intervals (of the loss, and of its change from ``baseline``).

    Intervals are BCa bootstrap intervals over windows (paired by window for the change); ``pareto``
    marks the methods that no other beats in both bytes and loss (:func:`mark_pareto`).
    """
    from gqa_lib.experiments.stats import bootstrap_interval

    base = scores[baseline]
    rows = []
    for name, s in scores.items():
        losses = s["losses"]
        low, high = bootstrap_interval(losses, seed=seed)
        same = name == baseline
        d_low, d_high = (0.0, 0.0) if same else bootstrap_interval(losses, base["losses"], seed=seed)
        m = s["method"]
        p = m.policy
        rows.append({"method": name, "family": m.family, "source": m.source, "policy": p.label(),
                     "share_every": m.share_every, "numbers_per_token_layer": s["numbers_per_token_layer"],
                     "caching_layers": s["caching_layers"], "bits": p.bits or 16, "axis": p.axis,
                     "window": p.window or 0, "sinks": p.sinks, "block": p.block, "context": s["context"],
                     "kv_bytes_per_token": round(s["bytes_per_token"], 1),
                     "bytes_vs_original": round(s["bytes_per_token"] / base["bytes_per_token"], 4),
                     "val_nll": round(float(losses.mean()), 5), "ci_low": round(low, 5), "ci_high": round(high, 5),
                     "delta_nll": round(float(losses.mean() - base["losses"].mean()), 5),
                     "delta_ci_low": round(d_low, 5), "delta_ci_high": round(d_high, 5)})
    mark_pareto(rows)
    return rows


def mark_pareto(rows: list[dict]) -> None:
    """Set each row's 'pareto': on the front of bytes against loss among the ways to shrink the cache.

    The control (the original model given the uptraining, source 'control') is a check on the uptraining,
    not a way to shrink the cache, so it is left out of the front and marked False.
    """
    methods = [r for r in rows if r["source"] != "control"]
    flags = pareto_front([(float(r["kv_bytes_per_token"]), float(r["val_nll"])) for r in methods])
    for r in rows:
        r["pareto"] = False
    for r, f in zip(methods, flags, strict=True):
        r["pareto"] = f


def policy_of(row) -> CachePolicy:
    """The ``CachePolicy`` a row of ``cache_pareto.csv`` was measured with (its bits, axis, window, sinks, block)."""
    bits = int(row["bits"])
    return CachePolicy(window=int(row["window"]) or None, sinks=int(row["sinks"]), bits=None if bits == 16 else bits,
                       axis=str(row["axis"]), block=int(row["block"]))


def bytes_per_token_at(row, context: int) -> float:
    """A row's cache bytes per token of context at ``context`` tokens (a window's share falls as context grows).

    Recomputed from the row's parameters with ``gqa_lib.experiments.cache_shrink.layer_cache_bytes``; the row's loss
    was measured at its own ``context`` only.
    """
    check_positive_int("context", context)
    per_layer = layer_cache_bytes(int(row["numbers_per_token_layer"]), context, policy_of(row))
    return per_layer * int(row["caching_layers"]) / context


def best_within(rows: list[dict], budget: float) -> dict | None:
    """The row of lowest loss among those whose bytes per token are at most ``budget``; None if none fits."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget < 0:
        raise ValueError(f"budget={budget!r} must be a non-negative number of bytes per token")
    fits = [r for r in rows if float(r["kv_bytes_per_token"]) <= budget]
    return min(fits, key=lambda r: float(r["val_nll"])) if fits else None

