"""Pictures of GQA's groups: which query head reads which KV head, and what each query head sees.

- ``kv_head_map``: the KV head each query head reads, in the contiguous order (``i // group_size``,
  what ``repeat_interleave``, PyTorch's ``enable_gqa`` and transformers' ``repeat_kv`` do) or the
  ``repeat`` order (``i % n_kv_heads``, what ``.repeat`` would give: a different model).
- ``draw_group_diagram``: query heads in one row, KV heads (= groups) in the row below, one line
  from each query head to its KV head, coloured by group.
- ``per_query_head``, ``max_abs_diff_matrix``, ``draw_per_head_rows``, ``draw_max_diff``: the K (or V)
  each query head works with, and how far apart two query heads' copies are (0 inside a group).

Drawing functions take a matplotlib ``Axes`` and return it, so a notebook, a widget and notebook 05
can place them in their own figures.
"""

from __future__ import annotations

import torch

from gqa_lib.core.checks import check_kv_heads
from gqa_lib.core.layout import AttentionLayout

ORDERS = ("contiguous", "repeat")

# Paul Tol's "muted" qualitative scheme: distinguishable with the common colour-vision deficiencies,
# and distinct from the series' attention-kind palette (so a group colour never reads as "GQA").
GROUP_COLORS = ("#332288", "#CC6677", "#117733", "#DDCC77", "#88CCEE", "#882255", "#44AA99", "#999933",
                "#AA4499")


def kv_head_map(n_heads: int, n_kv_heads: int, order: str = "contiguous") -> list[int]:
    """The KV head read by each query head: ``[kv_head_of(0), ..., kv_head_of(n_heads - 1)]``.

    >>> kv_head_map(6, 2)
    [0, 0, 0, 1, 1, 1]
    >>> kv_head_map(6, 2, order="repeat")
    [0, 1, 0, 1, 0, 1]
    """
    check_kv_heads(n_heads, n_kv_heads)
    if order not in ORDERS:
        raise ValueError(f"order={order!r} is not known (valid: {', '.join(ORDERS)})")
    group_size = n_heads // n_kv_heads
    if order == "contiguous":
        return [i // group_size for i in range(n_heads)]
    return [i % n_kv_heads for i in range(n_heads)]


def group_color(kv_head: int) -> str:
    """Colour of group (KV head) ``kv_head``; colours repeat after 9 groups, labels and lines stay exact."""
    return GROUP_COLORS[kv_head % len(GROUP_COLORS)]


def _tick_step(n: int, max_labels: int = 16) -> int:
    """Label every head up to ``max_labels`` heads, then every 2nd, 4th, ... so labels never overlap."""
    step = 1
    while n / step > max_labels:
        step *= 2
    return step


def _head_ticks(n_heads: int, group_size: int, max_labels: int) -> list[int]:
    """Tick positions for a query-head axis: the first head of each group when that fits, else every k-th head."""
    if 1 < group_size and n_heads // group_size <= max_labels:
        return list(range(0, n_heads, group_size))
    return list(range(0, n_heads, _tick_step(n_heads, max_labels)))


def draw_group_diagram(ax, n_heads: int, n_kv_heads: int, order: str = "contiguous", title: str | None = None,
                       max_labels: int = 16):
    """Draw the query-head -> KV-head mapping on ``ax``: two rows of squares joined by lines.

    Top row: query heads 0..n_heads-1. Bottom row: KV heads (= groups) 0..n_kv_heads-1, spread over
    the same width. Each query head's square and line take its group's colour. At most ``max_labels``
    head numbers are written per row.
    """
    from matplotlib.collections import LineCollection

    mapping = kv_head_map(n_heads, n_kv_heads, order)
    q_x = [i + 0.5 for i in range(n_heads)]
    kv_x = [(j + 0.5) * n_heads / n_kv_heads for j in range(n_kv_heads)]
    colors = [group_color(j) for j in mapping]
    ax.add_collection(LineCollection([[(q_x[i], 1.0), (kv_x[j], 0.0)] for i, j in enumerate(mapping)],
                                     colors=colors, linewidths=1.6 if n_heads <= 32 else 1.0))
    size = max(12.0, min(140.0, 2400.0 / n_heads))
    ax.scatter(q_x, [1.0] * n_heads, s=size, marker="s", c=colors, edgecolors="black", linewidths=0.5, zorder=3)
    ax.scatter(kv_x, [0.0] * n_kv_heads, s=size * 1.6, marker="s", c=[group_color(j) for j in range(n_kv_heads)],
               edgecolors="black", linewidths=0.8, zorder=3)
    fontsize = 8 if n_heads <= 32 or max_labels <= 16 else 6
    for i in range(0, n_heads, _tick_step(n_heads, max_labels)):
        ax.text(q_x[i], 1.12, str(i), ha="center", va="bottom", fontsize=fontsize)
    for j in range(0, n_kv_heads, _tick_step(n_kv_heads, max_labels)):
        ax.text(kv_x[j], -0.22, str(j), ha="center", va="top", fontsize=fontsize)
    ax.set_xlim(0, n_heads)
    ax.set_ylim(-0.6, 1.45)
    ax.set_xticks([])
    ax.set_yticks([0.0, 1.0], [f"KV heads\n= groups ({n_kv_heads})", f"query heads\n({n_heads})"])
    ax.grid(False)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    if title is None:
        layout = AttentionLayout(n_heads, n_kv_heads, 1)
        rule = "i // group_size" if order == "contiguous" else "i % n_kv_heads"
        title = (f"{layout.kind}: {n_heads} query heads, {n_kv_heads} KV heads, group size {layout.group_size}"
                 f"  ({order} order: query head i -> KV head {rule})")
    ax.set_title(title, y=1.0, pad=4)
    return ax


def per_query_head(kv: torch.Tensor, n_heads: int, order: str = "contiguous") -> torch.Tensor:
    """The K (or V) each query head works with: (n_kv_heads, seq, head_dim) -> (n_heads, seq, head_dim).

    Contiguous groups (the default) give ``kv.repeat_interleave(n_heads // n_kv_heads, dim=0)``; the
    ``repeat`` order gives ``kv.repeat(n_heads // n_kv_heads, 1, 1)``. Either way a copy.
    """
    if kv.ndim != 3:
        raise ValueError(f"kv.shape={tuple(kv.shape)} must be (n_kv_heads, seq, head_dim)")
    mapping = kv_head_map(n_heads, kv.shape[0], order)  # checks n_kv_heads and order
    return kv[mapping]


def max_abs_diff_matrix(per_head: torch.Tensor) -> torch.Tensor:
    """(n_heads, n_heads) matrix of ``max |X_i - X_j|`` over all entries, for X of shape (n_heads, ...).

    Exactly 0 where heads i and j read the same KV head (the numbers are copies, not recomputations).
    """
    if per_head.ndim < 2:
        raise ValueError(f"per_head.shape={tuple(per_head.shape)} must be (n_heads, ...)")
    flat = per_head.reshape(per_head.shape[0], -1).float()  # (n_heads, seq * head_dim)
    # The Chebyshev (p = inf) distance is max |x_i - x_j|: exact, and faster than forming every difference.
    return torch.cdist(flat[None], flat[None], p=float("inf"))[0]


def _check_group_size(group_size, n_heads: int) -> None:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 or n_heads % group_size:
        raise ValueError(f"group_size={group_size!r} must be a positive integer that divides n_heads={n_heads}")


def _separators(ax, positions, length: float, horizontal: bool, **style) -> None:
    """Draw lines at ``positions`` across the whole image as one artist (hundreds of axhline calls render slowly)."""
    from matplotlib.collections import LineCollection

    if horizontal:
        segments = [[(-0.5, p), (length - 0.5, p)] for p in positions]
    else:
        segments = [[(p, -0.5), (p, length - 0.5)] for p in positions]
    if segments:
        ax.add_collection(LineCollection(segments, **style), autolim=False)


def _group_edges(n_heads: int, group_size: int) -> list[float]:
    """Image coordinates between the last head of one group and the first of the next."""
    if group_size == 1:  # every head is its own group (MHA): lines would only hide the picture
        return []
    return [b - 0.5 for b in range(group_size, n_heads, group_size)]


def draw_per_head_rows(ax, per_head: torch.Tensor, group_size: int, vmax: float, what: str = "K",
                       max_labels: int = 8):
    """Heatmap with one row per query head: that head's (seq, head_dim) block flattened token by token.

    Rows of one group are identical copies; white lines separate the groups. Pass the same ``vmax``
    to every panel that is to be compared (the colour scale runs from -vmax to +vmax). At most
    ``max_labels`` ticks per axis. Returns the image, for a colour bar.
    """
    from gqa_lib.pictures.style import DIVERGING_CMAP

    if per_head.ndim != 3:
        raise ValueError(f"per_head.shape={tuple(per_head.shape)} must be (n_heads, seq, head_dim)")
    n_heads, seq, d = per_head.shape
    _check_group_size(group_size, n_heads)
    img = ax.imshow(per_head.reshape(n_heads, seq * d).detach().numpy(), aspect="auto", interpolation="nearest",
                    cmap=DIVERGING_CMAP, vmin=-vmax, vmax=vmax)
    _separators(ax, _group_edges(n_heads, group_size), seq * d, horizontal=True, colors="white", linewidths=1.2)
    _separators(ax, [t * d - 0.5 for t in range(1, seq)], n_heads, horizontal=False, colors="black",
                linewidths=0.4, alpha=0.5)
    tokens = range(0, seq, _tick_step(seq, max_labels))
    ax.set_xticks([t * d + d / 2 - 0.5 for t in tokens], [str(t) for t in tokens])
    ax.set_yticks(_head_ticks(n_heads, group_size, max_labels))
    ax.set_xlabel(f"token position ({d} numbers each)")
    ax.set_ylabel("query head")
    ax.set_title(f"{what} as seen by each query head", y=1.0, pad=6)
    ax.grid(False)
    return img


def draw_max_diff(ax, diff: torch.Tensor, group_size: int, vmax: float | None = None, what: str = "K",
                  max_labels: int = 8):
    """Heatmap of ``max |X_i - X_j|`` over query-head pairs, with white lines between groups. Returns the image.

    The colour scale runs from 0 to ``vmax`` (default: the largest entry).
    """
    from gqa_lib.pictures.style import HEATMAP_CMAP

    n_heads = diff.shape[0]
    if diff.ndim != 2 or diff.shape[1] != n_heads:
        raise ValueError(f"diff.shape={tuple(diff.shape)} must be (n_heads, n_heads)")
    _check_group_size(group_size, n_heads)
    top = float(diff.max()) if vmax is None else vmax
    img = ax.imshow(diff.detach().numpy(), cmap=HEATMAP_CMAP, vmin=0.0, vmax=top if top > 0 else 1.0,
                    interpolation="nearest")
    edges = _group_edges(n_heads, group_size)
    _separators(ax, edges, n_heads, horizontal=True, colors="white", linewidths=1.2)
    _separators(ax, edges, n_heads, horizontal=False, colors="white", linewidths=1.2)
    ticks = _head_ticks(n_heads, group_size, max_labels)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xlabel("query head j")
    ax.set_ylabel("query head i")
    ax.set_title(f"max |{what}_i - {what}_j| per head pair\n(0 inside a group)", y=1.0, pad=6)
    ax.grid(False)
    return img
