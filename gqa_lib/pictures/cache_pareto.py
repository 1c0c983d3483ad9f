"""Bytes per token against loss for every way to shrink SmolLM2's cache (notebook 08): what
``experiments.cache_pareto`` measured."""

from __future__ import annotations

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

    from gqa_lib.pictures.style import NEUTRAL

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
    from gqa_lib.pictures.style import PALETTE

    marker, key = FAMILY_STYLE.get(family, ("x", None))
    return marker, PALETTE[key] if key else OTHER_COLOURS.get(family, "#888888")


# Points named on the chart besides the front, and where their names go (points, from the marker).
LABELLED = ("window 1024", "window 1024 + 4 sinks", "window 512", "window 512 + 4 sinks",
            "latent rank 128", "latent rank 256", "1 KV head, mean-pooled", "1 KV head, mean-pooled, uptrained",
            "layer pairs share K/V (CLA-2)", "int4 per token", "int8 per channel")
LABEL_OFFSETS = {"original (3 KV heads, bf16)": (-105, 6), "window 256": (6, 6), "window 256 + 4 sinks": (6, 6),
                 "window 1024": (6, 4),
                 "window 1024 + 4 sinks": (-40, -16), "window 512 + 4 sinks": (-20, -16), "window 512": (6, 4),
                 "latent rank 128": (6, 4), "int4 per token": (6, 4), "int4 per channel": (6, 6),
                 "int8 per channel": (-80, 6),  # left: int8 per token sits on nearly the same point
                 "layer pairs share K/V (CLA-2)": (-60, 8),
                 "1 KV head, mean-pooled": (-130, 4), "1 KV head, mean-pooled, uptrained": (-175, 4),
                 "latent rank 256": (6, 4)}
OTHER_COLOURS = {"sliding window": "#E69F00", "quantized": "#56B4E9", "cross-layer": "#000000",
                 "combined": "#882255"}  # Okabe-Ito's other colours (the palette's own scheme), and Tol's wine
