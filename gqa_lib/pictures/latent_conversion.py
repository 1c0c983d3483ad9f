"""SmolLM2 converted to latent attention (notebook 07): what ``experiments.latent_conversion`` measured."""

from __future__ import annotations


def plot_latent_conversion(table, ax=None):
    """Held-out loss against cache per token and layer, with 95% intervals, from ``data/results/mla_smollm.csv``.

    ``table``: the DataFrame of ``gqa_lib.experiments.results.read_results``. The latents at full rank (384) are the
    original model exactly (tested), so their lines end at the original's point. Error bars are the
    stored bootstrap intervals; matplotlib draws them as given (seaborn would recompute intervals from raw
    data, which the file does not hold).
    """
    import matplotlib.pyplot as plt

    from gqa_lib.pictures.style import NEUTRAL, PALETTE

    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 4.4))
    original = table[table["method"].str.startswith("original")].iloc[0]
    styles = {"latent, plain SVD": (NEUTRAL, "s--"), "latent, input-weighted SVD": (PALETTE["MLA"], "o-")}
    for method, (colour, fmt) in styles.items():
        part = table[table["method"] == method].sort_values("cache_numbers_per_token_layer")
        x = [*part["cache_numbers_per_token_layer"], original["cache_numbers_per_token_layer"]]
        y = [*part["val_nll"], original["val_nll"]]
        low = [*(part["val_nll"] - part["ci_low"]), 0.0]
        high = [*(part["ci_high"] - part["val_nll"]), 0.0]
        ax.errorbar(x, y, yerr=[low, high], fmt=fmt, color=colour, capsize=4, lw=1.8, label=method)
    for name, colour, marker in (("original", PALETTE["GQA"], "D"), ("mean-pooled", PALETTE["MQA"], "v")):
        r = table[table["method"].str.startswith(name)].iloc[0]
        ax.errorbar([r["cache_numbers_per_token_layer"]], [r["val_nll"]],
                    yerr=[[r["val_nll"] - r["ci_low"]], [r["ci_high"] - r["val_nll"]]], fmt=marker, color=colour,
                    ms=8, capsize=4, label=r["method"])
    ticks = table.drop_duplicates("cache_numbers_per_token_layer").sort_values("cache_numbers_per_token_layer")
    ax.set_xticks(ticks["cache_numbers_per_token_layer"],
                  [f"{t}\n(= {h:g} KV head{'s' if h != 1 else ''})" for t, h in
                   zip(ticks["cache_numbers_per_token_layer"], ticks["kv_heads_equivalent"], strict=True)])
    ax.set(xlabel="numbers cached per token and layer", ylabel="held-out loss (nats per token)",
           title="SmolLM2-135M, every layer converted, no training")
    ax.legend(fontsize=8)
    return ax
