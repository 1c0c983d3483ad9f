"""The methods notebook 08 compares, the loop that scores them on a trained model, and the chart.

A method is an attention source (the model's own layers, fewer KV heads, a latent of some rank) and a
cache policy (``gqa_lib.experiments.cache_shrink.CachePolicy``: window, sinks, number format), optionally with
cross-layer sharing, or an eviction policy (``gqa_lib.experiments.token_eviction``: H2O, SnapKV, KeyNorm,
OracleTopK) on the original layers. :func:`score_methods` runs each over the same token windows with
``gqa_lib.models.smollm_decoder.SmolLMDecoder`` and returns its loss per window, on the tokens after
``score_from`` only, so that every scored token has at least that much context (a sliding window
shorter than it is then always in force). Bytes are counted where the loss is earned: the cache's bytes at
each scored prediction, averaged over them, divided by their mean context (``cache_shrink.bytes_per_token_over``;
for eviction, the tokens each KV head held at each step). :func:`summarise` adds bootstrap intervals
(``gqa_lib.experiments.stats.bootstrap_interval``, scipy's BCa bootstrap over windows, paired by window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from gqa_lib.core.checks import check_positive_int
from gqa_lib.experiments.cache_shrink import (
    CachePolicy,
    bytes_per_token_over,
    layer_cache_bytes,
    pareto_front,
    shrink_layers,
)
from gqa_lib.experiments.token_eviction import H2O, POLICIES, EvictedCacheAttention, KeyNorm, OracleTopK, SnapKV

LATENT = "low-rank latent (explicit)"  # the SVD latent of notebook 07: keys rebuilt from it at every step, not MLA
FAMILIES = ("original", "fewer KV heads", LATENT, "sliding window", "token eviction", "quantized", "cross-layer",
            "combined")
DATA_KINDS = ("none", "calibration", "uptraining")  # what text a method was given before it was scored


@dataclass(frozen=True)
class Method:
    """One way to shrink the cache: ``source`` names the attention layers, ``policy`` what their cache keeps."""

    name: str
    family: str
    source: str = "original"
    policy: CachePolicy = field(default_factory=CachePolicy)
    share_every: int = 1
    eviction: object = None  # a token_eviction policy; then ``policy`` must be the default and source 'original'

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r} must be one of {FAMILIES}")
        if self.eviction is not None:
            if not isinstance(self.eviction, POLICIES):
                raise TypeError(f"eviction={type(self.eviction).__name__} must be one of "
                                f"{', '.join(p.__name__ for p in POLICIES)}")
            if self.policy != CachePolicy() or self.share_every != 1 or self.source != "original":
                raise ValueError("an eviction method runs on the original layers with a bf16 cache: no policy, "
                                 "sharing or other source")

    @property
    def data(self) -> str:
        """What text the method was given before it was scored: 'none', 'calibration' or 'uptraining'."""
        if self.source in ("uptrained", "control"):
            return "uptraining"
        if self.source.startswith("latent-") or (self.policy.fp8 is not None and self.policy.fp8_scale != "group"):
            return "calibration"
        return "none"


def default_methods(ranks=(64, 128, 256), windows=(128, 256, 512), sinks: int = 4, uptrained: bool = True,
                    budget: int = 256, prompt: int = 512, top_k: int = 64, observe: int = 32) -> list[Method]:
    """Every method of the shipped chart. Sources: 'original', 'mean-pooled', 'uptrained', 'control',
    'latent-R' for each rank R (input-weighted SVD).

    Eviction: ``budget`` tokens per KV head (H2O and KeyNorm with half of them recent, as the H2O paper splits
    them; SnapKV compressing a ``prompt`` of that many tokens, observation window ``observe``), scored per KV head
    (the group's attention summed or maxed) and per query head (the KV head stores the union), and H2O per KV head
    with 1.5 x ``budget``, near the union's bytes; the oracle reads ``top_k`` keys a step of a cache it keeps whole.
    ``prompt`` should be the benchmark's ``score_from``, so that every scored prediction comes after the prompt was
    compressed.
    """
    m = [Method("original (3 KV heads, bf16)", "original"),
         Method("1 KV head, mean-pooled", "fewer KV heads", "mean-pooled")]
    if uptrained:
        m += [Method("1 KV head, mean-pooled, uptrained", "fewer KV heads", "uptrained"),
              Method("original, same uptraining (control)", "original", "control")]
    m += [Method(f"latent rank {r}", LATENT, f"latent-{r}") for r in ranks]
    for w in windows:
        m.append(Method(f"window {w}", "sliding window", policy=CachePolicy(window=w)))
        if sinks:
            m.append(Method(f"window {w} + {sinks} sinks", "sliding window", policy=CachePolicy(window=w, sinks=sinks)))
    who = {"kv_sum": "per KV head, sum", "kv_max": "per KV head, max", "query": "per query head, union"}
    half = budget // 2
    m += [Method(f"H2O {budget} ({who[s]})", "token eviction", eviction=H2O(budget, half, s)) for s in who]
    wide = budget * 3 // 2  # per KV head, about the bytes a per-query-head union holds: the two compared at equal bytes
    m.append(Method(f"H2O {wide} ({who['kv_sum']})", "token eviction", eviction=H2O(wide, wide // 2, "kv_sum")))
    m += [Method(f"SnapKV {budget} ({who[s]})", "token eviction", eviction=SnapKV(budget, prompt, observe, scoring=s))
          for s in who]
    m.append(Method(f"smallest key norms {budget}", "token eviction", eviction=KeyNorm(budget, half)))
    m += [Method(f"oracle top-{top_k} read ({who[s]})", "token eviction", eviction=OracleTopK(top_k, s))
          for s in ("kv_sum", "query")]
    m += [Method(f"int{b} per {axis}", "quantized", policy=CachePolicy(bits=b, axis=axis))
          for b in (8, 4) for axis in ("token", "channel")]
    m += [Method("int2 per channel (KIVI-2)", "quantized", policy=CachePolicy(bits=2, axis="channel")),
          Method("int4 per token + newest block in bf16", "quantized", policy=CachePolicy(bits=4, newest_bf16=True))]
    m += [Method(f"FP8 {f.upper()}, scale per {scope}", "quantized", policy=CachePolicy(fp8=f, fp8_scale=scope))
          for f in ("e4m3", "e5m2") for scope in ("tensor", "head")]
    m.append(Method("layer pairs share K/V (CLA-2)", "cross-layer", share_every=2))
    # Methods that stack: each changes a different factor of the bytes.
    top = max(ranks)
    combos = [Method(f"latent rank {top} + int8", "combined", f"latent-{top}", CachePolicy(bits=8))]
    if top % 128 == 0:
        combos.append(Method(f"latent rank {top} + FP8 E4M3 (scale per 128)", "combined", f"latent-{top}",
                             CachePolicy(fp8="e4m3", fp8_scale="group")))
    combos.append(Method(f"window {max(windows)} + {sinks} sinks + int4 per channel", "combined",
                         policy=CachePolicy(window=max(windows), sinks=sinks, bits=4, axis="channel")))
    if uptrained:
        combos.insert(0, Method("1 KV head uptrained + int8", "combined", "uptrained", CachePolicy(bits=8)))
    return m + combos


def widget_methods(methods: list[Method]) -> list[Method]:
    """The methods the budget widget offers, measured at a second context too: one or two of each family whose bytes
    follow from their parameters at any context (no eviction, whose bytes are measured), within a nat of the
    original: the original, the two largest windows with sinks, int8 and int4 per token, int4 and int2 per channel,
    FP8 E4M3 per tensor, the largest latent, and the window with int4 per channel."""
    ranks = [int(m.source.split("-")[1]) for m in methods if m.family == LATENT]
    windows = sorted(m.policy.window for m in methods if m.family == "sliding window" and m.policy.sinks)
    keep = {"original (3 KV heads, bf16)", "int8 per token", "int4 per token", "int4 per channel",
            "int2 per channel (KIVI-2)", "FP8 E4M3, scale per tensor"}
    keep |= {f"latent rank {max(ranks)}"} if ranks else set()
    out = [m for m in methods if m.name in keep or (m.family == "sliding window" and m.policy.sinks
                                                    and m.policy.window in windows[-2:])
           or (m.family == "combined" and m.source == "original")]
    return out


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


def scored_contexts(seq: int, score_from: int) -> range:
    """Context lengths of the scored predictions: position p (score_from .. seq - 2) predicts with p + 1 tokens."""
    return range(score_from + 1, seq)


def score_methods(decoder, sources: dict, methods: list[Method], windows: torch.Tensor, score_from: int,
                  progress=None, amax: list | None = None) -> dict[str, dict]:
    """{method name: {'losses': (n,) per-window losses, 'bytes_per_token': float, 'read_bytes_per_token': float,
    'method': Method, ...}}.

    ``decoder``: a ``SmolLMDecoder``; ``sources``: {source name: list of attention layers}; ``amax``: per layer,
    calibrated (keys', values') largest magnitudes for FP8 scales (``cache_shrink.calibrated_amax``). Bytes per
    token are averaged over the scored predictions (:func:`scored_contexts`): their bytes' mean over their mean
    context. Eviction methods count the tokens each KV head held (stored) and gave its query heads (read) at each
    scored step; for every other method the two are equal.
    """
    seq = windows.shape[1]
    contexts = scored_contexts(seq, score_from)
    out = {}
    for method in methods:
        if method.source not in sources:
            raise KeyError(f"method {method.name!r} needs source {method.source!r}; sources: {sorted(sources)}")
        if method.eviction is not None:
            out[method.name] = _score_eviction(decoder, sources["original"], method, windows, score_from)
        else:
            layers = shrink_layers(list(sources[method.source]), method.policy, method.share_every, amax)
            losses = window_losses_after(decoder.with_attention(layers), windows, score_from)
            caching = [a for a in layers if a.caches]
            per_token = bytes_per_token_over(layers, contexts)
            out[method.name] = {"losses": losses, "bytes_per_token": per_token, "read_bytes_per_token": per_token,
                                "numbers_per_token_layer": caching[0].numbers_per_token(),
                                "caching_layers": len(caching)}
        out[method.name].update(method=method, context=seq, score_from=score_from)
        if progress is not None:
            progress(method)
    return out


def _score_eviction(decoder, attention, method: Method, windows: torch.Tensor, score_from: int) -> dict:
    layers = [EvictedCacheAttention(a, method.eviction) for a in attention]
    run = decoder.with_attention(layers)
    losses, stored, read = [], 0.0, 0.0
    for ids in windows:
        losses.append(window_losses_after(run, ids[None], score_from))
        for a in layers:  # tokens per KV head at the scored steps, x 2 (K, V) x head_dim x 2 bytes (bf16)
            per_token = 2 * a.base.head_dim * 2
            stored += float(a.last.stored[..., score_from:-1].sum()) * per_token
            read += float(a.last.read[..., score_from:-1].sum()) * per_token
        for a in layers:
            a.last = None
    total_context = sum(scored_contexts(windows.shape[1], score_from)) * len(windows)
    return {"losses": torch.cat(losses), "bytes_per_token": stored / total_context,
            "read_bytes_per_token": read / total_context,
            "numbers_per_token_layer": layers[0].numbers_per_token(), "caching_layers": len(layers)}


def summarise(scores: dict[str, dict], baseline: str, seed: int = 0, data_tokens: dict | None = None) -> list[dict]:
    """One row per method: bytes, loss and 95% intervals (of the loss, and of its change from ``baseline``).

    Intervals are BCa bootstrap intervals over windows (paired by window for the change); ``pareto``
    marks the methods that no other beats in both bytes and loss (:func:`mark_pareto`). ``data_tokens``:
    {'calibration': tokens, 'uptraining': tokens} given to the methods that used them ('data' column).
    ``text_losses``: each window's loss, space-separated, in window order (6 decimals), so that two methods
    scored on the same windows can be compared paired by window (:func:`text_losses`).
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
        tokens = (data_tokens or {}).get(m.data, 0)
        rows.append({"method": name, "family": m.family, "source": m.source,
                     "policy": repr(m.eviction) if m.eviction is not None else p.label(),
                     "share_every": m.share_every, "numbers_per_token_layer": s["numbers_per_token_layer"],
                     "caching_layers": s["caching_layers"], "bits": 8 if p.fp8 else (p.bits or 16), "axis": p.axis,
                     "window": p.window or 0, "sinks": p.sinks, "block": p.block,
                     "newest_bf16": p.newest_bf16, "fp8": p.fp8 or "", "fp8_scale": p.fp8_scale if p.fp8 else "",
                     "evicts": m.eviction is not None,
                     "context": s["context"], "score_from": s["score_from"], "data": m.data, "data_tokens": tokens,
                     "kv_bytes_per_token": round(s["bytes_per_token"], 1),
                     "read_bytes_per_token": round(s["read_bytes_per_token"], 1),
                     "bytes_vs_original": round(s["bytes_per_token"] / base["bytes_per_token"], 4),
                     "val_nll": round(float(losses.mean()), 5), "ci_low": round(low, 5), "ci_high": round(high, 5),
                     "delta_nll": round(float(losses.mean() - base["losses"].mean()), 5),
                     "delta_ci_low": round(d_low, 5), "delta_ci_high": round(d_high, 5),
                     "text_losses": " ".join(f"{x:.6f}" for x in losses.tolist())})
    mark_pareto(rows)
    return rows


def text_losses(row) -> list[float]:
    """A row's per-window losses (its ``text_losses`` column), in window order: pair two rows of one context by
    position to compare them text by text (``gqa_lib.experiments.stats.bootstrap_mean(a, b)``)."""
    value = row.get("text_losses")
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"row {row.get('method')!r} has no text_losses: rerun benchmarks/cache_pareto.py")
    return [float(x) for x in value.split()]


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


def _flag(value) -> bool:
    return str(value) == "True"


def policy_of(row) -> CachePolicy:
    """The ``CachePolicy`` a row of ``cache_pareto.csv`` was measured with (bits or FP8, axis, window, sinks, block).

    Raises ValueError for an eviction row: its cache is chosen by attention, not by parameters."""
    if _flag(row.get("evicts", False)):
        raise ValueError(f"row {row['method']!r} evicts tokens: its bytes were measured, not recomputable")
    fp8 = row.get("fp8")
    fp8 = fp8 if isinstance(fp8, str) and fp8 else None
    bits = int(row["bits"])
    return CachePolicy(window=int(row["window"]) or None, sinks=int(row["sinks"]),
                       bits=None if bits == 16 or fp8 else bits, axis=str(row["axis"]), block=int(row["block"]),
                       newest_bf16=_flag(row.get("newest_bf16", False)), fp8=fp8,
                       fp8_scale=str(row.get("fp8_scale") or "tensor") if fp8 else "tensor")


def bytes_per_token_at(row, context: int) -> float:
    """A row's cache bytes per token of context at ``context`` tokens (a window's share falls as context grows).

    Recomputed from the row's parameters with ``gqa_lib.experiments.cache_shrink.layer_cache_bytes``; the row's loss
    was measured at its own ``context`` only (the texts' length; its ``kv_bytes_per_token`` is averaged over the
    scored predictions: :func:`scored_bytes_per_token`).
    """
    check_positive_int("context", context)
    per_layer = layer_cache_bytes(int(row["numbers_per_token_layer"]), context, policy_of(row))
    return per_layer * int(row["caching_layers"]) / context


def scored_bytes_per_token(row) -> float:
    """A row's bytes recomputed as the benchmark counts them: averaged over its scored predictions' contexts."""
    contexts = scored_contexts(int(row["context"]), int(row["score_from"]))
    return sum(bytes_per_token_at(row, n) * n for n in contexts) / sum(contexts)


def best_within(rows: list[dict], budget: float) -> dict | None:
    """The row of lowest loss among those whose bytes per token are at most ``budget``; None if none fits."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget < 0:
        raise ValueError(f"budget={budget!r} must be a non-negative number of bytes per token")
    fits = [r for r in rows if float(r["kv_bytes_per_token"]) <= budget]
    return min(fits, key=lambda r: float(r["val_nll"])) if fits else None

