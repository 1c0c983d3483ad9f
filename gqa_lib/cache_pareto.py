"""The methods notebook 08 compares, the loop that scores them on a trained model, and the chart.

A method is an attention source (the model's own layers, fewer KV heads, a latent of some rank) and a
cache policy (``gqa_lib.cache_shrink.CachePolicy``: window, sinks, number format), optionally with
cross-layer sharing. :func:`score_methods` runs each over the same token windows with
``gqa_lib.smollm_decoder.SmolLMDecoder`` and returns its loss per window, on the tokens after
``score_from`` only, so that every scored token has at least that much context (a sliding window
shorter than it is then always in force). :func:`summarise` adds bytes and bootstrap intervals
(``gqa_lib.mla_convert.bootstrap_interval``, scipy's BCa bootstrap over windows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from .cache_shrink import CachePolicy, cache_bytes_per_token, layer_cache_bytes, pareto_front, shrink_layers
from .layout import check_positive_int

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
    are counted at the windows' length of context (``gqa_lib.cache_shrink.cache_bytes_per_token``).
    """
    context = windows.shape[1]
    out = {}
    for method in methods:
        if method.source not in sources:
            raise KeyError(f"method {method.name!r} needs source {method.source!r}; sources: {sorted(sources)}")
        layers = shrink_layers(list(sources[method.source]), method.policy, method.share_every)
        losses = window_losses_after(decoder.with_attention(layers), windows, score_from)
        caching = [a for a in layers if a.caches]
        out[method.name] = {"losses": losses, "bytes_per_token": cache_bytes_per_token(layers, context),
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
    from .mla_convert import bootstrap_interval

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

    Recomputed from the row's parameters with ``gqa_lib.cache_shrink.layer_cache_bytes``; the row's loss
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


FAMILY_STYLE = {  # marker per family; colours from the series' palette where a family has one
    "original": ("D", "GQA"), "fewer KV heads": ("v", "MQA"), "latent (MLA)": ("o", "MLA"),
    "sliding window": ("s", None), "quantized": ("^", None), "cross-layer": ("P", None), "combined": ("*", None),
}


def plot_pareto(table, ax=None, budget: float | None = None, label_front: bool = True):
    """Change in held-out loss from the original (95% intervals, paired by window) against KV bytes per token.

    ``table``: a DataFrame with the columns of ``data/results/cache_pareto.csv``. One marker per family;
    the Pareto front (``pareto`` column) is drawn as a step line and labelled. The change in loss, not the
    loss, is drawn because its paired interval is what separates the methods (the loss itself varies far
    more from window to window than between most methods). The y axis is symmetric-log: linear within
    0.01 nats of zero, logarithmic beyond, so changes from a thousandth to ten nats all show. matplotlib's
    errorbar draws the stored intervals as given (seaborn would recompute them from raw data).
    ``budget`` draws a vertical line at that many bytes per token.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from .plots import NEUTRAL

    if ax is None:
        _, ax = plt.subplots(figsize=(9, 5.2))
    control = table["source"] == "control"
    for family, part in table[~control].groupby("family", sort=False):
        marker, colour = family_style(family)
        ax.errorbar(part["kv_bytes_per_token"], part["delta_nll"],
                    yerr=[part["delta_nll"] - part["delta_ci_low"], part["delta_ci_high"] - part["delta_nll"]],
                    fmt=marker, color=colour, ms=7, capsize=3, lw=1, label=family, alpha=0.9)
    for _, r in table[control].iterrows():  # hollow: a check on the uptraining, not a way to shrink the cache
        ax.errorbar([r["kv_bytes_per_token"] * 1.04], [r["delta_nll"]],
                    yerr=[[r["delta_nll"] - r["delta_ci_low"]], [r["delta_ci_high"] - r["delta_nll"]]],
                    fmt="D", mfc="white", color=family_style("original")[1], ms=7, capsize=3, lw=1,
                    label="original, uptrained (control)")
    front = table[table["pareto"].astype(str) == "True"].sort_values("kv_bytes_per_token")
    right = table["kv_bytes_per_token"].max() * 1.3
    ax.step([*front["kv_bytes_per_token"], right], [*front["delta_nll"], front["delta_nll"].iloc[-1]], where="post",
            color=NEUTRAL, lw=1, ls="--", label="Pareto front")
    if label_front:
        shown = table[(table["pareto"].astype(str) == "True") | table["method"].isin(LABELLED)]
        for _, r in shown.sort_values("kv_bytes_per_token").iterrows():
            dx, dy = LABEL_OFFSETS.get(r["method"], (6, -12))
            ax.annotate(r["method"], (r["kv_bytes_per_token"], r["delta_nll"]), xytext=(dx, dy),
                        textcoords="offset points", fontsize=8)
    if budget is not None:
        ax.axvline(budget, color="black", lw=1.2, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_ylim(-0.05, 40)
    ax.set_xlim(table["kv_bytes_per_token"].min() / 1.2, right)
    ax.axhline(0, color=NEUTRAL, lw=0.8)
    plain = FuncFormatter(lambda v, _: f"{v:,.0f}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks([2000, 3000, 5000, 10000, 20000])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set(xlabel="KV cache bytes per token of context (all 30 layers, at a context of 2,048 tokens)",
           ylabel="change in held-out loss from the original\n(nats; linear within ±0.01, log beyond)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: the points fill the axes
    return ax


def family_style(family: str) -> tuple[str, str]:
    """Marker and colour of a method family: the series' palette for GQA, MQA and MLA, OTHER_COLOURS else."""
    from .plots import PALETTE

    marker, key = FAMILY_STYLE.get(family, ("x", None))
    return marker, PALETTE[key] if key else OTHER_COLOURS.get(family, "#888888")


# Points named on the chart besides the front, and where their names go (points, from the marker).
LABELLED = ("window 1024", "window 1024 + 4 sinks", "window 512", "window 512 + 4 sinks",
            "latent rank 128", "latent rank 256", "1 KV head, mean-pooled", "1 KV head, mean-pooled, uptrained",
            "layer pairs share K/V (CLA-2)", "int4 per token")
LABEL_OFFSETS = {"window 256": (6, 6), "window 256 + 4 sinks": (6, 6), "window 1024": (6, 4),
                 "window 1024 + 4 sinks": (-40, -16), "window 512 + 4 sinks": (-20, -16), "window 512": (6, 4),
                 "latent rank 128": (6, 4), "int4 per token": (6, 4), "int4 per channel": (6, 6),
                 "int8 per channel": (-30, 10), "layer pairs share K/V (CLA-2)": (-60, 8),
                 "1 KV head, mean-pooled": (-130, 4), "1 KV head, mean-pooled, uptrained": (-175, 4),
                 "latent rank 256": (6, 4)}
OTHER_COLOURS = {"sliding window": "#E69F00", "quantized": "#56B4E9", "cross-layer": "#000000",
                 "combined": "#882255"}  # Okabe-Ito's other colours (the palette's own scheme), and Tol's wine
