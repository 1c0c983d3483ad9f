"""Bytes per token against loss for every way to shrink SmolLM2's cache (notebook 08): what
``experiments.cache_pareto`` measured, every point numbered and named in a key beside the axes."""

from __future__ import annotations

import math

FAMILY_STYLE = {  # marker per family; colours from the series' palette where a family has one
    "original": ("D", "GQA"), "fewer KV heads": ("v", "MQA"), "low-rank latent (explicit)": ("o", "MLA"),
    "latent (MLA)": ("o", "MLA"),  # the name files written before the relabelling use
    "sliding window": ("s", None), "token eviction": ("X", None), "quantized": ("^", None),
    "cross-layer": ("P", None), "combined": ("*", None),
}
CONTROL_SHIFT = 1.12  # the control is drawn this factor right of its bytes (the original's),
# so that its error bar clears the original's marker


def plot_pareto(table, ax=None, budget: float | None = None, key: bool = True):
    """Change in held-out loss from the original (95% intervals, paired by text) against KV bytes per token.

    ``table``: a DataFrame with the columns of ``data/results/cache_pareto.csv``, one context. One marker per
    family; the Pareto front (``pareto`` column) is a dashed step line. Every point carries a number, and ``key``
    writes the numbered names beside the axes (points closer than a few pixels share one label, "3,4"), so no
    name sits on another point. A method that reads fewer bytes per step than it stores (the oracle top-k) has a
    hollow marker at the bytes it reads, joined to its point. The change in loss, not the loss, is drawn because
    its paired interval is what separates the methods. The y axis is symmetric-log: linear within 0.01 nats of
    zero, logarithmic beyond. ``budget`` draws a vertical line at that many bytes per token.
    Returns (ax, key_lines): the key as "number  name" strings.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from gqa_lib.pictures.style import NEUTRAL

    if ax is None:
        _, ax = plt.subplots(figsize=(12, 7))
    rows = table.sort_values("kv_bytes_per_token", ascending=False, kind="stable").reset_index(drop=True)
    control = rows["source"] == "control"
    x = rows["kv_bytes_per_token"].where(~control, rows["kv_bytes_per_token"] * CONTROL_SHIFT)
    for family, part in rows[~control].groupby("family", sort=False):
        marker, colour = family_style(family)
        ax.errorbar(x[part.index], part["delta_nll"],
                    yerr=[part["delta_nll"] - part["delta_ci_low"], part["delta_ci_high"] - part["delta_nll"]],
                    fmt=marker, color=colour, ms=7, capsize=3, lw=1, label=family, alpha=0.9)
    for i, r in rows[control].iterrows():  # hollow: a check on the uptraining, not a way to shrink the cache
        ax.errorbar([x[i]], [r["delta_nll"]], yerr=[[r["delta_nll"] - r["delta_ci_low"]],
                                                    [r["delta_ci_high"] - r["delta_nll"]]],
                    fmt="D", mfc="white", color=family_style("original")[1], ms=7, capsize=3, lw=1,
                    label=f"original, uptrained (control; drawn {CONTROL_SHIFT - 1:.0%} right of its bytes)")
    if "read_bytes_per_token" in rows:
        reads = rows[rows["read_bytes_per_token"] < rows["kv_bytes_per_token"] - 0.5]
        for i, r in reads.iterrows():
            colour = family_style(r["family"])[1]
            ax.plot([r["read_bytes_per_token"], x[i]], [r["delta_nll"]] * 2, color=colour, lw=0.8, ls=":")
        if len(reads):
            ax.scatter(reads["read_bytes_per_token"], reads["delta_nll"], marker="X", facecolors="white",
                       edgecolors=family_style("token eviction")[1], s=60, zorder=3,
                       label="bytes read per step (stores all: the filled marker)")
    front = rows[rows["pareto"].astype(str) == "True"].sort_values("kv_bytes_per_token")
    right = rows["kv_bytes_per_token"].max() * 1.3
    ax.step(front["kv_bytes_per_token"], front["delta_nll"], where="post",  # ends at the front's largest cache:
            color=NEUTRAL, lw=1, ls="--", label="Pareto front", zorder=1)  # run on, it would pass under the original
    if budget is not None:
        ax.axvline(budget, color="black", lw=1.2, ls=":")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=0.01)
    low = min(-0.05, float(rows["delta_ci_low"].min()) * 1.5)
    ax.set_ylim(low, max(40.0, float(rows["delta_ci_high"].max()) * 2))
    left = min(rows["kv_bytes_per_token"].min(), rows.get("read_bytes_per_token", rows["kv_bytes_per_token"]).min())
    ax.set_xlim(left / 1.25, right)
    ax.axhline(0, color=NEUTRAL, lw=0.8)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks([t for t in (1000, 2000, 3000, 5000, 10000, 20000) if left / 1.25 <= t <= right])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    where = "averaged over the scored predictions" if "score_from" in rows else \
        f"at a context of {int(rows['context'].iloc[0]):,} tokens"  # files written before the bytes were averaged
    ax.set(xlabel=f"KV cache bytes per token of context (all 30 layers, {where})",
           ylabel="change in held-out loss from the original\n(nats; linear within ±0.01, log beyond)")
    lines = _number_points(ax, rows, x)
    legend = ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(1.01, 0.0), title="families")
    _ = legend
    if key:
        ax.text(1.01, 1.0, "\n".join(lines), transform=ax.transAxes, va="top", ha="left", fontsize=7.5,
                family="monospace")
    return ax, lines


def _number_points(ax, rows, x) -> list[str]:
    """Number every point (largest cache first); points within a few pixels of each other share one label."""
    ax.figure.canvas.draw()
    to_px = ax.transData
    px = [tuple(to_px.transform((float(x[i]), float(r["delta_nll"])))) for i, r in rows.iterrows()]
    clusters: list[list[int]] = []
    for i, p in enumerate(px):
        for c in clusters:
            if any(math.dist(p, px[j]) < 20 for j in c):
                c.append(i)
                break
        else:
            clusters.append([i])
    for c in clusters:
        label = ",".join(str(i + 1) for i in c)
        i = c[0]
        below = rows.loc[i, "source"] == "control"  # beside the original's point: its label goes below
        ax.annotate(label, (float(x[i]), float(rows.loc[i, "delta_nll"])), xytext=(5, -11 if below else 3),
                    textcoords="offset points", fontsize=7, color="#222222")
    return [f"{i + 1:>2} {r['method']}" for i, r in rows.iterrows()]


def family_style(family: str) -> tuple[str, str]:
    """Marker and colour of a method family: the series' palette for GQA, MQA and MLA, OTHER_COLOURS else."""
    from gqa_lib.pictures.style import PALETTE

    marker, key = FAMILY_STYLE.get(family, ("x", None))
    return marker, PALETTE[key] if key else OTHER_COLOURS.get(family, "#888888")


OTHER_COLOURS = {"sliding window": "#E69F00", "quantized": "#56B4E9", "cross-layer": "#000000",
                 "combined": "#882255", "token eviction": "#44AA99"}  # Okabe-Ito's other colours, Tol's wine and teal
