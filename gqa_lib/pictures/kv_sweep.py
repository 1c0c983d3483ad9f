"""Validation loss and cache bytes against KV heads (notebook 06): what ``experiments.kv_sweep`` measured."""

from __future__ import annotations

from gqa_lib.experiments.kv_sweep import summarize_sweep


def plot_sweep(rows: list[dict], axes=None):
    """Two panels: validation loss (mean ± std over seeds) against KV bytes per token, and each seed's
    difference from MHA (dots) with the mean and its 95% paired interval."""
    import matplotlib.pyplot as plt

    from gqa_lib.core.layout import attention_kind
    from gqa_lib.pictures.style import NEUTRAL, kind_color

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax_loss, ax_diff = axes
    summary = summarize_sweep(rows)
    n_heads = int(rows[0]["n_heads"])
    for s in summary:
        color = kind_color(attention_kind(n_heads, s["n_kv_heads"]))
        ax_loss.errorbar(s["kv_bytes_per_token"], s["val_loss_mean"], yerr=s["val_loss_std"], fmt="o", color=color,
                         capsize=4, ms=7)
        ax_loss.annotate(f"{s['n_kv_heads']} KV", (s["kv_bytes_per_token"], s["val_loss_mean"]),
                         textcoords="offset points", xytext=(8, 4), fontsize=8)
    ax_loss.set_xscale("log", base=2)
    ticks = [s["kv_bytes_per_token"] for s in summary]
    ax_loss.set_xticks(ticks, [f"{t:,} B" for t in ticks])
    ax_loss.minorticks_off()
    ax_loss.invert_xaxis()  # MHA on the left, as in the right panel
    ax_loss.set_xlabel("KV cache bytes per token (fp32, all layers; fewer to the right)")
    ax_loss.set_ylabel("validation loss (nats per byte)")
    ax_loss.set_title(f"Mean ± std over {summary[0]['n_seeds']} seeds")
    mha = {int(r["seed"]): float(r["val_loss"]) for r in rows if int(r["n_kv_heads"]) == n_heads}
    for i, s in enumerate(summary):
        kv = s["n_kv_heads"]
        color = kind_color(attention_kind(n_heads, kv))
        diffs = [float(r["val_loss"]) - mha[int(r["seed"])] for r in rows if int(r["n_kv_heads"]) == kv]
        offsets = [(j - (len(diffs) - 1) / 2) * 0.06 for j in range(len(diffs))]
        ax_diff.scatter([i + o for o in offsets], diffs, color=color, s=18, alpha=0.7, zorder=3)
        if kv != n_heads:
            ax_diff.errorbar(i + 0.3, s["diff_vs_mha_mean"], yerr=[[s["diff_vs_mha_mean"] - s["ci95_low"]],
                                                                   [s["ci95_high"] - s["diff_vs_mha_mean"]]],
                             fmt="D", color=color, capsize=4, ms=6, markeredgecolor="black")
    ax_diff.axhline(0, color=NEUTRAL, lw=1)
    ax_diff.set_xticks(range(len(summary)), [f"{s['n_kv_heads']} KV" for s in summary])
    ax_diff.set_xlabel(f"KV heads (query heads: {n_heads})")
    ax_diff.set_ylabel("loss minus MHA's, same seed (nats per byte)")
    ax_diff.set_title("Paired differences: dots = seeds, diamond = mean with 95% CI")
    return axes
