"""SmolLM2 from 3 KV heads to fewer, converted and uptrained (notebook 06): what ``experiments.smollm_conversion``
measured."""

from __future__ import annotations

import math

from gqa_lib.experiments.smollm_conversion import final_rows


def plot_conversion(table, vocab_size: int | None = None, ax=None):
    """Held-out loss of each conversion before and after the same uptraining, with 95% bootstrap intervals.

    ``table``: rows of ``benchmarks/convert_smollm.py`` (list of dicts, or the DataFrame of
    ``gqa_lib.experiments.results.read_results``). One pair of bars per model: the original (its "after" is the
    control, uptrained the same way), mean-pooling, first head, and each random draw; lighter hatched bar
    before uptraining, solid after, the stored BCa intervals as error bars (drawn as given with matplotlib:
    seaborn would recompute intervals from raw data the file does not hold). Inside each uptrained
    conversion's bar, its recovered fraction (control subtracted) with its 95% interval, in percent.
    With ``vocab_size``, a dotted line marks a uniform guess over the vocabulary, ln(vocab_size).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from gqa_lib.pictures.style import NEUTRAL, PALETTE

    t = final_rows(table)
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 5.4), layout="constrained")
    original = t[(t["method"] == "none") & (t["uptrain_steps"] == 0)].iloc[0]
    control = t[(t["method"] == "none") & (t["uptrain_steps"] > 0)]
    pairs = [("original\n(3 KV heads;\nafter = control)", original, control.iloc[0] if len(control) else None)]
    for method in ("mean", "first", "random"):
        for draw, part in t[t["method"] == method].groupby("draw", dropna=False):
            before = part[part["uptrain_steps"] == 0].iloc[0]
            after = part[part["uptrain_steps"] > 0]
            label = (f"MQA by random\ninit, draw {int(draw)}" if method == "random" else
                     {"mean": "MQA by\nmean-pooling", "first": "MQA by\nfirst head"}[method])
            pairs.append((label, before, after.iloc[0] if len(after) else None))
    width = 0.38
    for i, (_label, before, after) in enumerate(pairs):
        colour = PALETTE["GQA"] if before["method"] == "none" else PALETTE["MQA"]
        for r, dx, style in ((before, -width / 2, {"alpha": 0.45, "hatch": "//"}), (after, width / 2, {})):
            if r is None:
                continue
            y = float(r["val_nll"])
            err = [[y - float(r["ci_low"])], [float(r["ci_high"]) - y]]
            ax.bar(i + dx, y, width, color=colour, edgecolor="white", yerr=err, capsize=3, **style)
            ax.text(i + dx, float(r["ci_high"]), f"{y:.2f}", ha="center", va="bottom", fontsize=7)
        if after is not None and after["method"] != "none":
            middle = (float(original["val_nll"]) + float(after["val_nll"])) / 2  # above the original's dashed line
            ax.text(i + width / 2, middle,
                    f"{100 * after['recovered_fraction']:.0f}%\n[{100 * after['recovered_ci_low']:.0f}, "
                    f"{100 * after['recovered_ci_high']:.0f}]", ha="center", va="center", fontsize=7, color="white")
    ax.set_xticks(range(len(pairs)), [p[0] for p in pairs], fontsize=8)
    ax.axhline(float(original["val_nll"]), color=NEUTRAL, ls="--", lw=1, label="original, not uptrained")
    if vocab_size:
        ax.axhline(math.log(vocab_size), color=NEUTRAL, ls=":", lw=1.5,
                   label=f"uniform guess over {vocab_size:,} tokens, ln(vocab)")
    steps = int(t["uptrain_steps"].max())
    handles = [Patch(facecolor=NEUTRAL, alpha=0.45, hatch="//", label="before uptraining"),
               Patch(facecolor=NEUTRAL, label=f"after {steps} uptraining step{'s' if steps != 1 else ''} (K, V only)"),
               *ax.get_legend_handles_labels()[0],
               Patch(facecolor="none", edgecolor="none",
                     label="in an uptrained MQA bar: % of the loss recovered, control subtracted [95% CI]")]
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    top = max(float(t["ci_high"].max()), math.log(vocab_size) if vocab_size else 0.0)
    ax.set_ylim(0, top * 1.08)
    ax.set_ylabel("held-out loss (nats per token)")
    ax.set_title("SmolLM2-135M-Instruct: 3 KV heads -> 1 (MQA) in all 30 layers, 95% bootstrap intervals over windows")
    return ax
