"""SmolLM2's tokens per second against its prompt length (notebook 06): what ``experiments.model_decode_speed``
measured."""

from __future__ import annotations

VARIANT_LABELS = {"released": "released (GQA)", "mha_twin": "MHA twin", "kv1_mean": "1 KV head (MQA)"}
_MARKERS = {"gqa_lib": "o", "transformers": "s", "transformers_static": "D"}
PATH_LABELS = {"gqa_lib": "gqa_lib", "transformers": "transformers, DynamicCache",
               "transformers_static": "transformers, StaticCache"}


_LABEL_SIDE = {"MQA": (-6, 0, "right", "center"), "GQA": (5, -4, "left", "top"), "MHA": (5, 4, "left", "bottom")}


def plot_decode_speed(rows: list[dict], read_gbps: float, ax=None):
    """Tokens per second against MB read per token, one point per row; the curve is ``read_gbps / bytes``.

    Colour: the attention kind of the variant (series palette); marker: the path (filled circle gqa_lib, open
    square transformers with its growing cache, open diamond with its static cache); each gqa_lib point is
    labelled with its prompt length, in its variant's colour, and a thin line joins one variant's gqa_lib points
    in order of prompt length, so that a label beside another variant's point still reads as its own.
    Returns the axes.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    from gqa_lib.core.layout import attention_kind
    from gqa_lib.pictures.style import NEUTRAL, kind_color

    if not rows:
        raise ValueError("rows is empty: there is nothing to plot")
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 5), layout="constrained")
    mb = np.array([float(r["bytes_per_token"]) / 1e6 for r in rows])
    grid = np.linspace(mb.min() * 0.9, mb.max() * 1.1, 200)
    ax.plot(grid, read_gbps * 1e3 / grid, "--", color=NEUTRAL,
            label=f"bandwidth prediction: {read_gbps:.2f} GB/s / bytes per token")
    seen = set()
    for r, x in zip(rows, mb, strict=True):
        kind = attention_kind(int(r["n_heads"]), int(r["n_kv_heads"]))
        key = (r["variant"], r["path"])
        ax.scatter(x, float(r["tokens_per_s"]), color=kind_color(kind), marker=_MARKERS[r["path"]], s=45,
                   label=None if key in seen else f"{VARIANT_LABELS[r['variant']]}, {PATH_LABELS[r['path']]}",
                   facecolors="none" if r["path"].startswith("transformers") else kind_color(kind))
        seen.add(key)
        if r["path"] == "gqa_lib":  # in the variant's colour: near another variant's point, it still says whose
            side = _LABEL_SIDE[kind]  # MQA's points are the leftmost: its labels go left, into empty space
            ax.annotate(f"{int(r['prompt_tokens'])}", (x, float(r["tokens_per_s"])), textcoords="offset points",
                        xytext=side[:2], ha=side[2], va=side[3], fontsize=8, color=kind_color(kind))
    for variant in dict.fromkeys(r["variant"] for r in rows):  # each variant's gqa_lib points, joined by prompt
        mine = sorted((int(r["prompt_tokens"]), x, float(r["tokens_per_s"]), r) for r, x in zip(rows, mb, strict=True)
                      if r["variant"] == variant and r["path"] == "gqa_lib")
        if len(mine) > 1:
            kind = attention_kind(int(mine[0][3]["n_heads"]), int(mine[0][3]["n_kv_heads"]))
            ax.plot([m[1] for m in mine], [m[2] for m in mine], color=kind_color(kind), lw=0.8, alpha=0.6, zorder=1)
    ax.set_xlabel("MB read per generated token (float32 weights + KV cache)")
    ax.set_ylabel(f"tokens per second ({rows[0]['clock']} clock)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: points fill the lower left
    return ax
