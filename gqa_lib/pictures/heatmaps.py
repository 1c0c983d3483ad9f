"""Pictures of attention maps: one head, a grid of heads, and the head-to-head distance matrix.

Every map here is drawn the same way so panels can be compared across notebooks 02-05:
query tokens down the rows, key tokens along the columns, a colour scale that starts at 0 and is
shared by every panel of a figure, and the series' heatmap colour map. Functions take a matplotlib
``Axes`` or ``Figure`` to draw into when given one, so a widget can redraw without pyplot.
"""

from __future__ import annotations

import math

import numpy as np

from gqa_lib.pictures.style import HEATMAP_CMAP


def _as_array(x, name: str) -> np.ndarray:
    """A float64 numpy copy of a tensor or array; torch tensors are detached first."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a tensor or an array of numbers, got {type(x).__name__}") from None


def check_head_maps(weights, tokens=None) -> np.ndarray:
    """Validate attention maps and return them as a (n_heads, seq, seq) float64 array.

    ``weights``: (n_heads, seq, seq) or one map (seq, seq), rows = queries, columns = keys.
    ``tokens``: None or a list of ``seq`` strings naming the positions.
    """
    w = _as_array(weights, "weights")
    if w.ndim == 2:
        w = w[None]
    if w.ndim != 3 or w.shape[1] != w.shape[2] or w.shape[1] == 0 or w.shape[0] == 0:
        raise ValueError(f"weights.shape={tuple(w.shape)} must be (n_heads, seq, seq) or (seq, seq) with seq >= 1")
    if not np.isfinite(w).all():
        raise ValueError("weights contain NaN or infinity; attention weights must be finite probabilities")
    if tokens is not None:
        if isinstance(tokens, str) or not all(isinstance(t, str) for t in tokens):
            raise TypeError(f"tokens must be a list of strings, got {type(tokens).__name__}")
        if len(tokens) != w.shape[1]:
            raise ValueError(f"len(tokens)={len(tokens)} must equal seq={w.shape[1]} of weights.shape={tuple(w.shape)}")
    return w


def token_labels(tokens, max_chars: int = 10) -> list[str]:
    """Tick labels for tokens: surrounding spaces dropped, long tokens cut, '$' escaped for matplotlib.

    A token that is only whitespace is shown as its repr (e.g. ``' '``) so it stays visible.
    """
    if max_chars < 2:
        raise ValueError(f"max_chars={max_chars} must be 2 or more")
    out = []
    for t in tokens:
        s = t.strip() or repr(t)
        if len(s) > max_chars:
            s = s[: max_chars - 1] + "…"
        out.append(s.replace("$", r"\$"))
    return out


def _label_axes(ax, labels: list[str], show_x: bool = True, show_y: bool = True, fontsize: float = 8) -> None:
    n = len(labels)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(labels if show_x else [], rotation=90, fontsize=fontsize)
    ax.set_yticklabels(labels if show_y else [], fontsize=fontsize)
    ax.tick_params(length=0)
    ax.grid(False)


def plot_attention_map(weights, tokens, ax=None, vmax: float | None = 1.0, title: str | None = None,
                       cmap: str = HEATMAP_CMAP, axis_names: bool = True, fontsize: float = 8):
    """Draw one attention map (seq, seq) with token labels on both axes; return the ``AxesImage``.

    Rows are query tokens (the token doing the looking), columns are key tokens (what it looks at).
    The colour scale runs from 0 to ``vmax`` (None: the map's own maximum).
    """
    w = check_head_maps(weights, tokens)
    if w.shape[0] != 1:
        raise ValueError(f"weights.shape={tuple(w.shape)} must be one map (seq, seq); use plot_head_maps for many")
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(4.5, 4.2))
    vmax = float(w.max()) if vmax is None else vmax
    im = ax.imshow(w[0], cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
    _label_axes(ax, token_labels(tokens), fontsize=fontsize)
    if axis_names:
        ax.set_xlabel("key token (looked at)")
        ax.set_ylabel("query token (looking)")
    if title:
        ax.set_title(title)
    return im


def plot_head_maps(weights, tokens, heads=None, ncols: int | None = None, vmax: float | None = None,
                   group_size: int | None = None, title: str | None = None, fig=None, cmap: str = HEATMAP_CMAP,
                   panel_size: float = 2.6, colorbar_label: str = "attention weight"):
    """A grid with one attention map per head, one shared colour scale and one colour bar; return the Figure.

    weights: (n_heads, seq, seq) maps of one layer; tokens: the seq token strings.
    heads: which heads to draw (default all); ncols: panels per row (default up to 3, or fewer heads).
    vmax: top of the shared colour scale (default: the largest weight in the panels drawn).
    group_size: if given, each title also names the KV head (query head i reads KV head i // group_size).
    fig: a matplotlib Figure to draw into (it is cleared); default a new pyplot figure.
    """
    w = check_head_maps(weights, tokens)
    n_heads = w.shape[0]
    heads = list(range(n_heads)) if heads is None else [int(h) for h in heads]
    bad = [h for h in heads if not 0 <= h < n_heads]
    if not heads or bad:
        raise ValueError(f"heads={heads} must be a non-empty list of head indices in 0..{n_heads - 1}")
    if group_size is not None and (group_size < 1 or n_heads % group_size):
        raise ValueError(f"group_size={group_size} must divide n_heads={n_heads}")
    ncols = min(3, len(heads)) if ncols is None else ncols
    if ncols < 1:
        raise ValueError(f"ncols={ncols} must be 1 or more")
    nrows = math.ceil(len(heads) / ncols)
    vmax = float(w[heads].max()) if vmax is None else vmax
    if fig is None:
        import matplotlib.pyplot as plt

        fig = plt.figure(figsize=(panel_size * ncols + 1.2, panel_size * nrows + 0.6), layout="constrained")
    else:
        fig.clear()
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    labels = token_labels(tokens)
    fs = 7 if len(labels) <= 16 else 5
    im = None
    for k, ax in enumerate(axes):
        if k >= len(heads):
            ax.set_visible(False)
            continue
        h = heads[k]
        im = ax.imshow(w[h], cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
        row, col = divmod(k, ncols)
        last_in_col = k + ncols >= len(heads)
        _label_axes(ax, labels, show_x=last_in_col, show_y=col == 0, fontsize=fs)
        name = f"head {h}" if group_size is None else f"head {h} · KV head {h // group_size}"
        ax.set_title(name, fontsize=9)
        if col == 0:
            ax.set_ylabel("query token")
        if last_in_col:
            ax.set_xlabel("key token")
    fig.colorbar(im, ax=list(axes[: len(heads)]), shrink=0.8, label=colorbar_label)
    if title:
        fig.suptitle(title)
    return fig


def plot_distance_matrix(distance, ax=None, title: str | None = None, vmax: float | None = None,
                         annotate: bool = True, label: str = "Jensen-Shannon distance", cmap: str = HEATMAP_CMAP,
                         colorbar: bool = True, group_size: int | None = None):
    """Draw the (n_heads, n_heads) head-to-head distance matrix with its values; return the ``AxesImage``.

    ``distance`` is ``gqa_lib.core.diversity.pairwise_head_distance(weights)``: 0 on the diagonal, larger
    where two heads attend more differently. The scale runs from 0 to ``vmax`` (default 1, the
    largest possible Jensen-Shannon distance in base 2). With ``group_size`` (query heads per KV head,
    contiguous groups) white lines separate the groups, so the pairs that share a KV head are the
    squares on the diagonal.
    """
    d = _as_array(distance, "distance")
    if d.ndim != 2 or d.shape[0] != d.shape[1] or d.shape[0] == 0:
        raise ValueError(f"distance.shape={tuple(d.shape)} must be square (n_heads, n_heads)")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                   or group_size < 1 or d.shape[0] % group_size):
        raise ValueError(f"group_size={group_size!r} must be a positive integer that divides n_heads={d.shape[0]}")
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(4.6, 4.0))
    vmax = 1.0 if vmax is None else vmax
    im = ax.imshow(d, cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
    n = d.shape[0]
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("query head")
    ax.set_ylabel("query head")
    ax.grid(False)
    if annotate and n <= 16:
        for i in range(n):
            for j in range(n):
                light = d[i, j] < 0.6 * vmax  # viridis is dark at the bottom: write white there
                ax.text(j, i, f"{d[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if light else "black")
    if group_size is not None and 1 < group_size < n:
        for edge in range(group_size, n, group_size):
            ax.axhline(edge - 0.5, color="white", lw=2)
            ax.axvline(edge - 0.5, color="white", lw=2)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, shrink=0.85, label=label)
    if title:
        ax.set_title(title)
    return im
