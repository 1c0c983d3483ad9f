"""SmolLM2 converted to latent attention (notebook 07): what ``experiments.latent_conversion`` measured."""

from __future__ import annotations

DIFFERENCE_COLUMNS = ("delta_nll", "delta_ci_low", "delta_ci_high")


def plot_latent_conversion(table, ax=None):
    """Each conversion's loss increase over the original model, with its paired 95% interval, against the cache.

    ``table``: the DataFrame of ``gqa_lib.experiments.results.read_results`` on ``data/results/mla_smollm.csv``.
    What is drawn is ``delta_nll``, the mean over evaluation windows of (the converted model's loss - the
    original's loss on the same window), and its interval ``delta_ci_low``..``delta_ci_high``: a bootstrap
    over the windows of those per-window differences (``gqa_lib.experiments.stats.bootstrap_mean`` with a
    baseline), so the variation between windows, which both models share, cancels. Two intervals of the
    losses drawn side by side would hide that pairing and look far wider. The original is the zero line,
    which a log scale cannot show; every difference in the file is positive. Matplotlib draws the stored
    intervals as given (seaborn would recompute intervals from raw data, which the file does not hold).
    """
    import matplotlib.pyplot as plt

    from gqa_lib.pictures.style import NEUTRAL, PALETTE

    missing = [c for c in (*DIFFERENCE_COLUMNS, "method", "cache_numbers_per_token_layer", "kv_heads_equivalent")
               if c not in table.columns]
    if missing:
        raise ValueError(f"table has no column(s) {', '.join(missing)}: read data/results/mla_smollm.csv with "
                         "gqa_lib.experiments.results.read_results")
    converted = table[~table["method"].str.startswith("original")]
    if (converted["delta_ci_low"] <= 0).any():
        raise ValueError("a difference interval reaches 0 or below, which the log scale cannot draw")
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4.4))
    styles = {"latent, plain SVD": (NEUTRAL, "s--"), "latent, input-weighted SVD": (PALETTE["MLA"], "o-"),
              "mean-pooled to 1 KV head": (PALETTE["MQA"], "v")}
    for method, (colour, fmt) in styles.items():
        part = converted[converted["method"] == method].sort_values("cache_numbers_per_token_layer")
        if part.empty:
            continue
        y = part["delta_nll"]
        below, above = y - part["delta_ci_low"], part["delta_ci_high"] - y
        ax.errorbar(part["cache_numbers_per_token_layer"], y, yerr=[below, above], fmt=fmt, color=colour, ms=7,
                    capsize=4, lw=1.8, label=method)
    ticks = converted.drop_duplicates("cache_numbers_per_token_layer").sort_values("cache_numbers_per_token_layer")
    ax.set_xticks(ticks["cache_numbers_per_token_layer"],
                  [f"{t}\n(= {h:g} KV head{'s' if h != 1 else ''})" for t, h in
                   zip(ticks["cache_numbers_per_token_layer"], ticks["kv_heads_equivalent"], strict=True)])
    lo, hi = ticks["cache_numbers_per_token_layer"].min(), ticks["cache_numbers_per_token_layer"].max()
    ax.set_xlim(lo - 0.35 * (hi - lo), hi + 0.35 * (hi - lo))
    ax.set(yscale="log", xlabel="numbers cached per token and layer",
           ylabel="loss above the original (nats per token, log)",
           title="SmolLM2-135M, every layer converted, no training:\n"
                 "loss increase over the original, paired by window (95% bootstrap intervals)")
    ax.legend(fontsize=8)
    return ax
