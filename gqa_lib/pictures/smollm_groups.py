"""Pictures of the KV groups inside a real model: K/V blocks, within/across lines, weight profiles.

The attention-kind palette (``gqa_lib.pictures.style.PALETTE``) names MHA, GQA, MQA and MLA and nothing
else, so the lines here (pairs of heads, KV heads of one layer) take the other Okabe-Ito colours.
"""

from __future__ import annotations

import numpy as np

from gqa_lib.pictures.heatmaps import _as_array
from gqa_lib.pictures.style import DIVERGING_CMAP

# Okabe-Ito colours not used by the attention-kind palette (colour-blind safe).
PAIR_COLORS = {"within": "#000000", "across": "#E69F00"}  # black, orange
KV_HEAD_COLORS = ("#000000", "#E69F00", "#56B4E9")  # black, orange, sky blue


def clip_limit(x, percentile: float = 99.0) -> float:
    """The ``percentile``-th percentile of |x|: a colour-scale limit that a few outliers cannot wash out."""
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 < percentile <= 100:
        raise ValueError(f"percentile={percentile!r} must be a number in (0, 100]")
    a = np.abs(_as_array(x, "x"))
    if a.size == 0 or not np.isfinite(a).all():
        raise ValueError("x must be non-empty and finite")
    return float(np.percentile(a, percentile))


def plot_kv_blocks(x_seen, group_size: int, ax, name: str = "K", percentile: float = 99.0, tokens=None):
    """Draw K or V as each query head reads it: one block of ``seq`` rows per query head; return the image.

    ``x_seen``: (n_heads, seq, head_dim). Thin lines separate heads, thick lines groups (query head i
    reads KV head i // group_size). The diverging colour scale is symmetric and clipped at the
    ``percentile``-th percentile of |x|; the colour bar's pointed ends mark values beyond it.
    ``tokens``: optional list of the ``seq`` token strings; the title then names the first and last
    (each block's rows run from the first token at the top to the last at the bottom).
    """
    x = _as_array(x_seen, "x_seen")
    if x.ndim != 3:
        raise ValueError(f"x_seen.shape={x.shape} must be (n_heads, seq, head_dim)")
    n_heads, seq, head_dim = x.shape
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 or n_heads % group_size:
        raise ValueError(f"group_size={group_size!r} must be a positive integer that divides n_heads={n_heads}")
    if tokens is not None and len(tokens) != seq:
        raise ValueError(f"tokens has {len(tokens)} entries; x_seen has seq={seq} tokens a block")
    lim = clip_limit(x, percentile)
    im = ax.imshow(x.reshape(-1, head_dim), cmap=DIVERGING_CMAP, vmin=-lim, vmax=lim, aspect="auto",
                   interpolation="nearest")  # (n_heads * seq, head_dim)
    for h in range(1, n_heads):
        ax.axhline(h * seq - 0.5, color="black", lw=2.5 if h % group_size == 0 else 0.6)
    ax.set_yticks([h * seq + seq / 2 - 0.5 for h in range(n_heads)],
                  [f"q head {h} (KV {h // group_size})" for h in range(n_heads)])
    ax.set_xlabel(f"dimension of the head (0-{head_dim - 1})")
    rows = f",\n{tokens[0].strip()!r} to {tokens[-1].strip()!r} top to bottom" if tokens is not None else ""
    ax.set_title(f"{name} seen by each query head ({seq} tokens a block{rows})")
    ax.grid(False)
    label = f"{name} value (clipped at the {percentile:g}th percentile of |{name}|, {lim:.2f})"
    ax.figure.colorbar(im, ax=ax, shrink=0.5, extend="both", label=label)
    return im


def plot_within_across(within, across, ax, layer_label: str = "layer"):
    """Mean within- and across-group head diversity per layer, with the range over texts as a band.

    ``within``, ``across``: (n_texts, n_layers) from ``gqa_lib.models.smollm.diversity_by_layer``. Drawn with
    seaborn's ``lineplot``, which computes the mean line and the min-max band from the long table,
    so the band is the data's own range, not an assumed spread.
    """
    import pandas as pd
    import seaborn as sns

    w, a = _as_array(within, "within"), _as_array(across, "across")
    if w.ndim != 2 or w.shape != a.shape:
        raise ValueError(f"within.shape={w.shape} and across.shape={a.shape} must be the same (n_texts, n_layers)")
    rows = [{layer_label: layer, "pairs": kind, "distance": float(x[t, layer])}
            for kind, x in (("within a group (share a KV head)", w), ("across groups", a))
            for t in range(x.shape[0]) for layer in range(x.shape[1])]
    palette = dict(zip(("within a group (share a KV head)", "across groups"), PAIR_COLORS.values(), strict=True))
    sns.lineplot(pd.DataFrame(rows), x=layer_label, y="distance", hue="pairs", style="pairs", palette=palette,
                 errorbar=lambda v: (v.min(), v.max()), markers=True, ax=ax)
    ax.set_ylabel("mean Jensen-Shannon distance")
    return ax


def column_norm_profiles(blocks, inputs=None) -> np.ndarray:
    """(n_kv_heads, d_model): how strongly each KV head's projection reads each input dimension.

    ``blocks``: (n_kv_heads, head_dim, d_model), e.g. ``smollm.projection_blocks(layer, 'k_proj')``.
    Entry (j, c) is the Euclidean norm of input column c over KV head j's head_dim rows: the weights
    alone, as if every input dimension were equally large.

    ``inputs``: optional (tokens, d_model), the real inputs of the projection. Each column norm is then
    multiplied by the root mean square of its input dimension over the tokens, which makes entry (j, c)
    the root mean square, over the tokens, of the norm of what input c alone adds to KV head j's output
    (``||W_j[:, c]|| * rms(x_c)``). Squared, it is input c's share of that output's mean energy, exactly so
    where mean(x_c * x_d) over the tokens is 0 for every pair c != d (uncorrelated is not enough: a dimension
    that keeps one sign has a non-zero mean, and its cross terms remain).
    """
    b = _as_array(blocks, "blocks")
    if b.ndim != 3:
        raise ValueError(f"blocks.shape={b.shape} must be (n_kv_heads, head_dim, d_model)")
    norms = np.linalg.norm(b, axis=1)  # (n_kv_heads, d_model)
    if inputs is None:
        return norms
    x = _as_array(inputs, "inputs")
    if x.ndim != 2 or x.shape[1] != b.shape[2] or x.shape[0] == 0:
        raise ValueError(f"inputs.shape={x.shape} must be (tokens, d_model={b.shape[2]}) with at least one token")
    if not np.isfinite(x).all():
        raise ValueError("inputs must be finite")
    return norms * np.sqrt(np.mean(np.square(x, dtype=np.float64), axis=0))[None, :]


def top_input_share(profiles, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """The share of each profile's energy (sum of squares) held by its ``k`` largest entries, and which they are.

    ``profiles``: (n_kv_heads, d_model) from :func:`column_norm_profiles`. Returns ``share`` (n_kv_heads,) in
    0..1 and ``top`` (n_kv_heads, k), the input dimensions of the k largest entries, largest first.
    """
    p = _as_array(profiles, "profiles")
    if p.ndim != 2:
        raise ValueError(f"profiles.shape={p.shape} must be (n_kv_heads, d_model)")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= p.shape[1]:
        raise ValueError(f"k={k!r} must be an integer in 1..{p.shape[1]} (the input dimensions)")
    energy = np.square(p, dtype=np.float64)
    top = np.argsort(-energy, axis=1, kind="stable")[:, :k]
    total = energy.sum(axis=1)
    if (total == 0).any():
        raise ValueError(f"profile {int(np.flatnonzero(total == 0)[0])} is all zeros: it has no energy to share")
    return np.take_along_axis(energy, top, axis=1).sum(axis=1) / total, top


def plot_column_norm_profiles(profiles, axes, name: str = "k_proj", quantity: str = "column norm"):
    """One panel per KV head: its column-norm profile over the input dimensions (``column_norm_profiles``).

    ``axes``: one matplotlib Axes per KV head, stacked; they share the y scale so heights compare.
    ``quantity``: what a bar measures, for the labels ("column norm", or "column norm x input RMS" for
    profiles weighted by the inputs).
    """
    p = _as_array(profiles, "profiles")
    axes = list(np.atleast_1d(axes))
    if p.ndim != 2 or len(axes) != p.shape[0]:
        raise ValueError(f"profiles.shape={p.shape} needs one Axes per KV head, got {len(axes)}")
    top = float(p.max()) * 1.05
    for j, ax in enumerate(axes):
        ax.fill_between(range(p.shape[1]), p[j], color=KV_HEAD_COLORS[j % len(KV_HEAD_COLORS)], lw=0.6, step="mid")
        ax.set_ylim(0, top)
        ax.set_xlim(-0.5, p.shape[1] - 0.5)
        ax.set_ylabel(f"KV head {j}\n{quantity}", rotation=0, ha="right", va="center")
    axes[0].set_title(f"{name}: {quantity}\nof each input dimension, per KV head")
    axes[-1].set_xlabel(f"input dimension (d_model = {p.shape[1]})")
    return axes
