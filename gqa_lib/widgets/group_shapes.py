"""Notebook 04's widget, the group explorer: pick query heads and KV heads, see the groups and what they cost.

On every change it recomputes, from ``gqa_lib.core.cache_math``, the KV cache of the chosen shape and its
reduction against MHA, and it builds a small random ``GroupedQueryAttention`` of that shape (fixed
seed) to show, on a short random input, the K and V each query head works with: identical rows
inside a group, different rows across groups, and the matrix of ``max |K_i - K_j|`` that proves it.

- The KV-head slider only ever offers divisors of the query-head count; any other value is refused
  with the list of valid ones (``controls.NotOffered``).
- A model preset (``data/models.json`` through ``gqa_lib.models.catalog.load_models``) fills query heads, KV
  heads, head dim and layers; moving one of them away from the preset switches it to ``"custom"``.
  Only models whose shape the sliders can show are offered (``preset_names``).
- The order toggle switches between the contiguous order (query head i reads KV head
  ``i // group_size``: ``repeat_interleave``, what the series' layers and PyTorch do) and the
  ``repeat`` order (``i % n_kv_heads``), so the strided pattern of ``.repeat`` shows in the diagram,
  the K/V panels and the difference matrix.

Why one module of about 490 lines: the widget's controls interlock (preset, query heads, KV heads that
follow them, order), and its three pictures are drawn from one shared state and redrawn together; the
parts other widgets share live in ``controls``, ``blit`` and ``gqa_lib.core.checks``.
"""

from __future__ import annotations

import functools
import time

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from gqa_lib.core.attention import GroupedQueryAttention
from gqa_lib.core.cache_math import auto_format_bytes, dtype_bytes, kv_cache_bytes, reduction_vs_mha
from gqa_lib.core.checks import check_positive_int
from gqa_lib.core.layout import AttentionLayout
from gqa_lib.models.catalog import get_model, load_models
from gqa_lib.pictures.group_map import ORDERS, _tick_step, group_color, kv_head_map, max_abs_diff_matrix, per_query_head
from gqa_lib.pictures.style import DIVERGING_CMAP, HEATMAP_CMAP
from gqa_lib.widgets.blit import BlitFigure
from gqa_lib.widgets.controls import (
    CUSTOM,
    KVHeadsSlider,
    NotOffered,
    StrictDropdown,
    StrictIntSlider,
    StrictSelectionSlider,
    StrictToggleButtons,
    Syncing,
)
from gqa_lib.widgets.text import context_label, plural

MAX_HEADS = 64  # bounds one update's work (a 64 x 64 difference matrix, 64 rows per panel); tests time it
MAX_LAYERS = 128
HEAD_DIMS = [8, 16, 32, 64, 128]
CONTEXTS = [2**k for k in range(8, 18)]  # 256 .. 131,072 tokens
SEQ_LEN = 8  # tokens of the random input whose K and V are drawn
D_MODEL = 64  # width of the random input; it does not change the K/V shapes
# Fixed colour scales, the same for every shape, so pictures can be compared across settings. With D_MODEL = 64
# and PyTorch's default init every K or V entry has a standard deviation of about 0.58 whatever the shape, so
# +-2 holds all but a few tenths of a percent of the values, and max |K_i - K_j| stays under 5
# (tests/test_widget_group_explorer.py checks both).
KV_LIMIT = 2.0
DIFF_LIMIT = 5.0
LAYOUTS_KEPT = 8  # rendered layouts (diagram and head numbers) kept for a return to a recent layout
MAX_LABELS = 8  # head numbers written per row of the diagram; each costs about a millisecond to draw
PICTURES_KEPT = 16  # shapes whose random K/V and difference matrices are kept (about 1 MB each at most)
ORDER_LABELS = {"contiguous": "contiguous (i // group_size)", "repeat": "repeat (i % n_kv_heads)"}


def _check_choice(name: str, value, valid: list) -> None:
    if value not in valid or isinstance(value, bool):
        raise NotOffered(f"{name}={value!r} is not offered (valid: {', '.join(map(str, valid))})")


def _check_range(name: str, value, lo: int, hi: int) -> None:
    check_positive_int(name, value)
    if not lo <= value <= hi:
        raise NotOffered(f"{name}={value!r} is outside the slider (valid: {lo}, {lo + 1}, ..., {hi})")


def preset_names() -> list[str]:
    """Models of data/models.json whose shape the sliders can show (KV heads, at most 64 query heads, a head dim
    on the slider), in the file's order, then ``"custom"``."""
    fits = [s.name for s in load_models().values() if s.mla is None and s.n_heads <= MAX_HEADS
            and s.head_dim in HEAD_DIMS and s.n_layers <= MAX_LAYERS]
    return fits + [CUSTOM]


def _preset_shape(name: str) -> tuple[int, int, int, int]:
    spec = get_model(name)
    return spec.n_heads, spec.n_kv_heads, spec.head_dim, spec.n_layers


def random_kv(n_heads: int, n_kv_heads: int, head_dim: int, seq_len: int = SEQ_LEN, seed: int = 0):
    """K and V of a random ``GroupedQueryAttention`` of this shape on a random input: (n_kv_heads, seq, head_dim) each.

    Uses its own seeded RNG state, so calling it never changes the caller's random numbers.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = GroupedQueryAttention(D_MODEL, n_heads, n_kv_heads, head_dim=head_dim)
        x = torch.randn(1, seq_len, D_MODEL)  # (batch, seq, d_model)
    with torch.no_grad():
        _, k, v = layer.qkv(x)  # k, v: (1, n_kv_heads, seq, head_dim), k after RoPE
    return k[0], v[0]


def shape_pictures(n_heads: int, n_kv_heads: int, head_dim: int, order: str, seed: int = 0) -> dict:
    """What the explorer shows of one shape's random layer (``random_kv``): K and V per query head
    (n_heads, seq, head_dim), their max-difference matrices (n_heads, n_heads) and each query head's KV head."""
    k, v = random_kv(n_heads, n_kv_heads, head_dim, SEQ_LEN, seed)
    k_heads, v_heads = per_query_head(k, n_heads, order), per_query_head(v, n_heads, order)
    return {"k_per_head": k_heads, "v_per_head": v_heads,
            "max_diff": max_abs_diff_matrix(k_heads), "max_diff_v": max_abs_diff_matrix(v_heads),
            "kv_head_of": kv_head_map(n_heads, n_kv_heads, order)}


def _head_ticks(n_heads: int, group_size: int, order: str) -> list[int]:
    """Query-head ticks: the first head of each group when groups are contiguous and few, else every k-th head."""
    if order == "contiguous" and 1 < group_size and n_heads // group_size <= 4:
        return list(range(0, n_heads, group_size))
    return list(range(0, n_heads, _tick_step(n_heads, 4)))


class _Canvas:
    """The explorer's figure, built once: a diagram, K and V per query head, and the max-difference matrix.

    Text is most of matplotlib's drawing time, and most of the text here (colour bars, panel titles,
    token ticks) never changes. So the figure is drawn in full once and kept as a background; an update
    moves the artists that change (diagram marks and labels, images, group lines, head ticks) in place,
    pastes the background and draws only those on top (matplotlib's "blitting", ``blit.BlitFigure``).
    """

    def __init__(self):
        self.fig = fig = Figure(figsize=(12, 6.4), dpi=72)
        self.ax_diagram = fig.add_axes((0.1, 0.7, 0.87, 0.22))
        self.ax_k = fig.add_axes((0.06, 0.1, 0.25, 0.5))
        self.ax_v = fig.add_axes((0.33, 0.1, 0.25, 0.5))
        cax_kv = fig.add_axes((0.595, 0.1, 0.01, 0.5))
        self.ax_diff = fig.add_axes((0.72, 0.1, 0.19, 0.5))
        cax_diff = fig.add_axes((0.925, 0.1, 0.01, 0.5))
        fig.colorbar(ScalarMappable(Normalize(-KV_LIMIT, KV_LIMIT), DIVERGING_CMAP), cax=cax_kv, extend="both",
                     label="value (same scale for K and V)", ticks=[-KV_LIMIT, 0, KV_LIMIT])
        fig.colorbar(ScalarMappable(Normalize(0.0, DIFF_LIMIT), HEATMAP_CMAP), cax=cax_diff, extend="max",
                     label="max abs difference", ticks=[0, DIFF_LIMIT / 2, DIFF_LIMIT])
        dynamic = []
        # The diagram: query heads on top, KV heads (= groups) below, a line from each query head to its KV head.
        ax = self.ax_diagram
        self.lines = LineCollection([], linewidths=1.6)
        ax.add_collection(self.lines, autolim=False)
        self.q_marks = ax.scatter([], [], marker="s", edgecolors="black", linewidths=0.5, zorder=3)
        self.kv_marks = ax.scatter([], [], marker="s", edgecolors="black", linewidths=0.8, zorder=3)
        self.q_labels = [ax.text(0, 1.12, "", ha="center", va="bottom", fontsize=8) for _ in range(MAX_LABELS)]
        self.kv_labels = [ax.text(0, -0.22, "", ha="center", va="top", fontsize=8) for _ in range(MAX_LABELS)]
        # Row names as plain texts: an axis with ticks costs several times more to draw than its labels alone.
        self.row_names = [ax.text(-0.01, y, "", transform=ax.get_yaxis_transform(), ha="right", va="center",
                                  fontsize=10) for y in (0.0, 1.0)]
        ax.set_ylim(-0.6, 1.45)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for side in ("top", "right", "bottom", "left"):
            ax.spines[side].set_visible(False)
        ax.set_title(" ", y=1.0, pad=4)
        layout = [self.lines, self.q_marks, self.kv_marks, *self.q_labels, *self.kv_labels, *self.row_names,
                  ax.title]
        dynamic += layout
        # K and V as each query head sees them: one row per query head, x in token units (head_dim columns each).
        self.images, self.row_lines = [], []
        for ax, what in ((self.ax_k, "K"), (self.ax_v, "V")):
            im = ax.imshow(np.zeros((1, 1)), aspect="auto", interpolation="nearest", cmap=DIVERGING_CMAP,
                           vmin=-KV_LIMIT, vmax=KV_LIMIT, extent=(0, SEQ_LEN, 0.5, -0.5))
            tokens = LineCollection([[(t, -1), (t, MAX_HEADS + 1)] for t in range(1, SEQ_LEN)], colors="black",
                                    linewidths=0.4, alpha=0.5)
            groups = LineCollection([], colors="white", linewidths=1.2)
            ax.add_collection(tokens, autolim=False)
            ax.add_collection(groups, autolim=False)
            ax.set_xlim(0, SEQ_LEN)
            shown = range(0, SEQ_LEN, _tick_step(SEQ_LEN, 4))
            ax.set_xticks([t + 0.5 for t in shown], [str(t) for t in shown])
            ax.set_xlabel("token position (head_dim numbers each)")
            ax.set_title(f"{what} as seen by each query head", y=1.0, pad=6)
            ax.grid(False)
            self.images.append(im)
            self.row_lines.append(groups)
            dynamic += [im, tokens, groups]
        self.ax_k.set_yticks([])
        self.ax_v.set_yticks([])  # same rows as K: head numbers on the K panel only
        self.ax_k.set_ylabel("query head")
        self.ax_k.yaxis.set_label_coords(-0.12, 0.5)
        self.head_ticks = [self._ticks(self.ax_k, "y")]
        # max |K_i - K_j| for every pair of query heads.
        ax = self.ax_diff
        self.diff_image = ax.imshow(np.zeros((1, 1)), aspect="auto", interpolation="nearest", cmap=HEATMAP_CMAP,
                                    vmin=0.0, vmax=DIFF_LIMIT, extent=(-0.5, 0.5, 0.5, -0.5))
        self.diff_lines = LineCollection([], colors="white", linewidths=1.2)
        ax.add_collection(self.diff_lines, autolim=False)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("query head j")
        ax.set_ylabel("query head i")
        ax.xaxis.set_label_coords(0.5, -0.1)
        ax.yaxis.set_label_coords(-0.16, 0.5)
        ax.set_title("max |K_i - K_j| per head pair\n(0 where two heads share a KV head)", y=1.0, pad=6)
        ax.grid(False)
        self.head_ticks += [self._ticks(ax, "y"), self._ticks(ax, "x")]
        dynamic += [self.diff_image, self.diff_lines]
        layout += [a for marks, labels in self.head_ticks for a in (marks, *labels)]
        dynamic += layout[-len(self.head_ticks) * 9:]
        # Two layers over the background. The layout's artists (the diagram, head numbers, title: mostly text,
        # the slow part) depend only on the layout, so they are drawn once per layout and kept, with the
        # background, for the last LAYOUTS_KEPT layouts; the images and group lines are drawn at every update.
        # Unhinted glyphs render faster and look the same at this size.
        update = [a for a in dynamic if not any(a is b for b in layout)]
        self.blit = BlitFigure(fig, update, keyed=layout, kept=LAYOUTS_KEPT, rc={"text.hinting": "none"})

    @staticmethod
    def _ticks(ax, which: str, n: int = 8):
        """Tick marks (one collection) and a pool of ``n`` label texts for head numbers along ``which`` axis."""
        if which == "y":  # x in axes coordinates, y in data coordinates
            marks = LineCollection([], colors="black", linewidths=0.8, transform=ax.get_yaxis_transform())
            labels = [ax.text(-0.03, 0, "", transform=ax.get_yaxis_transform(), ha="right", va="center",
                              fontsize=10) for _ in range(n)]
        else:
            marks = LineCollection([], colors="black", linewidths=0.8, transform=ax.get_xaxis_transform())
            labels = [ax.text(0, -0.03, "", transform=ax.get_xaxis_transform(), ha="center", va="top",
                              fontsize=10) for _ in range(n)]
        marks.set_clip_on(False)
        ax.add_collection(marks, autolim=False)
        return marks, labels

    @staticmethod
    def _set_ticks(ticks, positions: list[int], which: str) -> None:
        marks, labels = ticks
        if which == "y":
            marks.set_segments([[(-0.02, p), (0.0, p)] for p in positions])
        else:
            marks.set_segments([[(p, -0.02), (p, 0.0)] for p in positions])
        for k, text in enumerate(labels):
            text.set_visible(k < len(positions))
            if k < len(positions):
                text.set_position((-0.03, positions[k]) if which == "y" else (positions[k], -0.03))
                text.set_text(str(positions[k]))

    def _diagram(self, n_heads: int, n_kv_heads: int, order: str, head_dim: int) -> None:
        mapping = kv_head_map(n_heads, n_kv_heads, order)
        q_x = np.arange(n_heads) + 0.5
        kv_x = (np.arange(n_kv_heads) + 0.5) * n_heads / n_kv_heads
        colors = [group_color(j) for j in mapping]
        self.lines.set_segments([[(q_x[i], 1.0), (kv_x[j], 0.0)] for i, j in enumerate(mapping)])
        self.lines.set_color(colors)
        self.lines.set_linewidth(1.6 if n_heads <= 32 else 1.0)
        size = max(12.0, min(140.0, 2400.0 / n_heads))
        self.q_marks.set_offsets(np.column_stack([q_x, np.ones(n_heads)]))
        self.q_marks.set_facecolor(colors)
        self.q_marks.set_sizes([size])
        self.kv_marks.set_offsets(np.column_stack([kv_x, np.zeros(n_kv_heads)]))
        self.kv_marks.set_facecolor([group_color(j) for j in range(n_kv_heads)])
        self.kv_marks.set_sizes([size * 1.6])
        for labels, xs, n in ((self.q_labels, q_x, n_heads), (self.kv_labels, kv_x, n_kv_heads)):
            shown = list(range(0, n, _tick_step(n, MAX_LABELS)))
            for k, text in enumerate(labels):
                text.set_visible(k < len(shown))
                if k < len(shown):
                    text.set_x(xs[shown[k]])
                    text.set_text(str(shown[k]))
        ax = self.ax_diagram
        ax.set_xlim(0, n_heads)
        self.row_names[0].set_text(f"KV heads\n= groups ({n_kv_heads})")
        self.row_names[1].set_text(f"query heads\n({n_heads})")
        layout = AttentionLayout(n_heads, n_kv_heads, 1)
        rule = "i // group_size" if order == "contiguous" else "i % n_kv_heads"
        ax.title.set_text(f"{layout.kind}: {plural(n_heads, 'query head')}, {plural(n_kv_heads, 'KV head')}, "
                          f"group size {layout.group_size}, head dim {head_dim}  ({order} order: query head i -> "
                          f"KV head {rule})")

    def draw(self, v: dict) -> bytes:
        """Show the values of ``GroupExplorer._compute``; return the PNG bytes."""
        h, kv, group_size, order = v["n_heads"], v["n_kv_heads"], v["group_size"], v["order"]
        self._diagram(h, kv, order, v["head_dim"])
        # Contiguous order: a line between groups (blocks of group_size rows). Repeat order: a line after every
        # n_kv_heads rows, where the same KV heads start over. None when every head is its own group (MHA).
        step = group_size if order == "contiguous" else kv
        edges = [b - 0.5 for b in range(step, h, step)] if group_size > 1 else []
        for im, lines, x in zip(self.images, self.row_lines, (v["k_per_head"], v["v_per_head"]), strict=True):
            im.set_data(x.reshape(h, -1).numpy())  # (n_heads, seq * head_dim)
            im.set_extent((0, SEQ_LEN, h - 0.5, -0.5))
            lines.set_segments([[(0, e), (SEQ_LEN, e)] for e in edges])
        ticks = _head_ticks(h, group_size, order)
        for ax in (self.ax_k, self.ax_v):
            ax.set_ylim(h - 0.5, -0.5)
        for marks_labels, which in zip(self.head_ticks, ("y", "y", "x"), strict=True):
            self._set_ticks(marks_labels, ticks, which)
        self.diff_image.set_data(v["max_diff"].numpy())
        self.diff_image.set_extent((-0.5, h - 0.5, h - 0.5, -0.5))
        self.ax_diff.set_xlim(-0.5, h - 0.5)
        self.ax_diff.set_ylim(h - 0.5, -0.5)
        self.diff_lines.set_segments([[(-0.5, e), (h - 0.5, e)] for e in edges]
                                     + [[(e, -0.5), (e, h - 0.5)] for e in edges])
        return self.blit.render((h, kv, order, v["head_dim"]))  # the layout: what the diagram and head numbers show


class GroupExplorer(widgets.VBox):
    """Controls ``.model``, ``.n_heads``, ``.n_kv_heads``, ``.head_dim``, ``.n_layers``, ``.context``, ``.order``;
    readout ``.readout`` (HTML); figure ``.image`` (PNG); numbers ``readout_values()``; ``update()`` redraws;
    ``last_update_s`` times it."""

    def __init__(self, n_heads: int = 32, n_kv_heads: int = 8, head_dim: int = 128, context: int = 8192,
                 n_layers: int = 32, batch: int = 1, dtype: str = "bf16", seed: int = 0, order: str = "contiguous",
                 model: str | None = None):
        presets = preset_names()
        if model is not None:
            _check_choice("model", model, presets)
            if model != CUSTOM:
                n_heads, n_kv_heads, head_dim, n_layers = _preset_shape(model)
        _check_range("n_heads", n_heads, 1, MAX_HEADS)
        AttentionLayout(n_heads, n_kv_heads, 1)  # n_kv_heads must divide n_heads; the error lists the divisors
        _check_choice("head_dim", head_dim, HEAD_DIMS)
        _check_choice("context", context, CONTEXTS)
        _check_range("n_layers", n_layers, 1, MAX_LAYERS)
        _check_choice("order", order, list(ORDERS))
        self.batch = check_positive_int("batch", batch)
        self.dtype, self.bytes_per_elem = dtype, dtype_bytes(dtype)
        self.seed = seed
        if model is None:  # name the model the starting shape is, if one is (the first in data/models.json)
            shape = (n_heads, n_kv_heads, head_dim, n_layers)
            model = next((m for m in presets[:-1] if _preset_shape(m) == shape), CUSTOM)
        style = {"description_width": "140px"}  # wide enough for "KV heads (= groups)" in full
        # The readout of a slider needs room for "131k" and "128"; 440 px leaves it after the 140 px label.
        wide = widgets.Layout(width="440px")
        slide = {"style": style, "layout": wide, "continuous_update": False}
        self.model = StrictDropdown(options=presets, value=model, description="model preset", name="model",
                                    style=style, layout=widgets.Layout(width="440px"))
        self.n_heads = StrictIntSlider(value=n_heads, min=1, max=MAX_HEADS, description="query heads",
                                       name="n_heads", **slide)
        self.n_kv_heads = KVHeadsSlider(n_heads, n_kv_heads, description="KV heads (= groups)", **slide)
        self.head_dim = StrictSelectionSlider(options=HEAD_DIMS, value=head_dim, description="head dim",
                                              name="head_dim", **slide)
        self.n_layers = StrictIntSlider(value=n_layers, min=1, max=MAX_LAYERS, description="layers",
                                        name="n_layers", **slide)
        self.context = StrictSelectionSlider(options=[(context_label(c), c) for c in CONTEXTS], value=context,
                                             description="context (tokens)", name="context", **slide)
        self.order = StrictToggleButtons(options=[(ORDER_LABELS[o], o) for o in ORDERS], value=order,
                                         description="order", name="order", style={**style, "button_width": "auto"})
        # Beside the controls when there is room (at least 300 px), below them in a narrow window; never over them.
        self.readout = widgets.HTML(layout=widgets.Layout(flex="1 1 300px", min_width="300px"))
        self.image = widgets.Image(format="png", layout=widgets.Layout(align_self="flex-start"))  # natural size
        self.last_update_s = float("nan")
        self._values: dict = {}
        # The same shape always gives the same random layer, so its pictures are computed once and kept for the
        # last PICTURES_KEPT shapes: (h, kv, head_dim, order) -> shape_pictures. A well-kept standard-library
        # cache instead of our own LRU, made per widget (with its seed), so it goes with the widget.
        self._pictures = functools.lru_cache(maxsize=PICTURES_KEPT)(functools.partial(shape_pictures, seed=seed))
        self._syncing = Syncing()  # set while a preset or the head count rewrites other controls
        self._canvas = _Canvas()
        self.fig = self._canvas.fig
        self.model.observe(self._on_model, names="value")
        self.n_heads.observe(self._on_n_heads, names="value")
        for control in (self.n_kv_heads, self.head_dim, self.order):
            control.observe(self._on_change, names="value")
        self.n_layers.observe(self._on_numbers, names="value")
        self.context.observe(self._on_numbers, names="value")
        controls = widgets.VBox([self.model, self.n_heads, self.n_kv_heads, self.head_dim, self.n_layers,
                                 self.context], layout=widgets.Layout(flex="0 0 auto"))
        row = widgets.HBox([controls, self.readout], layout=widgets.Layout(flex_flow="row wrap"))
        super().__init__([row, self.order, self.image])
        self.update()

    # -- events ---------------------------------------------------------------------------------------
    def _leave_preset_if_changed(self) -> None:
        name = self.model.value
        shape = (self.n_heads.value, self.n_kv_heads.value, self.head_dim.value, self.n_layers.value)
        if name != CUSTOM and _preset_shape(name) != shape:
            with self._syncing:
                self.model.value = CUSTOM

    def _on_model(self, change) -> None:
        if self._syncing or change["new"] == CUSTOM:
            return
        h, kv, d, layers = _preset_shape(change["new"])
        with self._syncing:
            self.n_heads.value = h
            self.n_kv_heads.follow(h, kv)
            self.head_dim.value, self.n_layers.value = d, layers
        self.update()

    def _on_n_heads(self, change) -> None:
        """Offer only the divisors of the new head count; keep the KV heads if they still divide, else the closest."""
        if self._syncing:
            return
        with self._syncing:
            self.n_kv_heads.follow(change["new"])
        self._leave_preset_if_changed()
        self.update()

    def _on_change(self, change) -> None:
        if not self._syncing:
            self._leave_preset_if_changed()
            self.update()

    def _on_numbers(self, change) -> None:
        """Layers and context change only the cache size: recompute the numbers and the text, keep the picture."""
        if self._syncing:
            return
        start = time.perf_counter()
        self._leave_preset_if_changed()
        self._values.update(self._cache_numbers())
        self.readout.value = self._readout_html(self._values)
        self.last_update_s = time.perf_counter() - start

    # -- numbers --------------------------------------------------------------------------------------
    def readout_values(self) -> dict:
        """The numbers behind the readout and the figure for the current controls (tensors for the matrices)."""
        return dict(self._values)

    def _cache_numbers(self) -> dict:
        """Cache bytes of the current shape and of MHA with the same query heads, from ``kv_cache_bytes``."""
        h, kv, d, ctx = self.n_heads.value, self.n_kv_heads.value, self.head_dim.value, self.context.value
        n_layers = self.n_layers.value
        layout = AttentionLayout(h, kv, d, n_layers)
        return {"n_heads": h, "n_kv_heads": kv, "head_dim": d, "context": ctx, "n_layers": n_layers,
                "batch": self.batch, "dtype": self.dtype, "bytes_per_elem": self.bytes_per_elem,
                "group_size": layout.group_size, "kind": layout.kind, "kv_choices": list(self.n_kv_heads.options),
                "order": self.order.value, "model": self.model.value,
                "cache_bytes": kv_cache_bytes(n_layers, kv, d, ctx, self.batch, self.bytes_per_elem),
                "mha_cache_bytes": kv_cache_bytes(n_layers, h, d, ctx, self.batch, self.bytes_per_elem),
                "reduction": reduction_vs_mha(h, kv)}

    def _compute(self) -> dict:
        v = self._cache_numbers()
        v.update(self._pictures(v["n_heads"], v["n_kv_heads"], v["head_dim"], v["order"]))
        return v

    def _readout_html(self, v: dict) -> str:
        h, kv, group_size = v["n_heads"], v["n_kv_heads"], v["group_size"]
        groups = torch.tensor(v["kv_head_of"])
        same = groups[:, None] == groups[None, :]
        others = same & ~torch.eye(h, dtype=torch.bool)  # two different heads of one group
        if others.any():
            largest = float(v["max_diff"][others].max())
            within = "exactly 0 (the same numbers)" if largest == 0 else f"at most {largest:g}"
        else:
            within = "n/a (each group has one query head)"
        across = f"at least {float(v['max_diff'][~same].min()):.3f}" if (~same).any() else "n/a (one group)"
        if kv == h:
            saving = "this is MHA itself: the same size (1x, every query head has its own KV head)."
        else:
            saving = f"this cache is <b>{v['reduction']:g}x smaller</b> (= {h} / {kv})."
        reads = "reads" if h == 1 else "read"
        preset = ""
        if v["model"] != CUSTOM:
            spec = get_model(v["model"])
            preset = f"<br>Shape of <b>{spec.name}</b> (data/models.json)." + (f" Note: {spec.note}." if spec.note
                                                                                  else "")
        order = "query head i reads KV head i // group_size" if v["order"] == "contiguous" else \
            "query head i reads KV head i % n_kv_heads (a different model: groups are not neighbours)"
        return (
            f"<b>{v['kind']}</b>: {plural(h, 'query head')} {reads} {plural(kv, 'KV head')} (= groups), "
            f"<b>{group_size}</b> query {'head' if group_size == 1 else 'heads'} per group.<br>"
            f"KV cache: <b>{auto_format_bytes(v['cache_bytes'])}</b> "
            f"({auto_format_bytes(v['cache_bytes'], binary=True)})<br>"
            f"&nbsp;= 2 (K and V) x {plural(v['n_layers'], 'layer')} x {plural(kv, 'KV head')} "
            f"x head dim {v['head_dim']} x {v['context']:,} tokens x batch {v['batch']} "
            f"x {plural(v['bytes_per_elem'], 'byte')} ({v['dtype']})<br>"
            f"MHA of the same shape: {auto_format_bytes(v['mha_cache_bytes'])}; {saving}<br>"
            f"Order: {order}.<br>"
            f"Random layer, {SEQ_LEN} random tokens: max |K_i - K_j| inside a group {within}; "
            f"across groups {across}." + preset +
            "<br><i>GB = 10^9 bytes, GiB = 2^30 bytes.</i>"
        )

    def update(self) -> None:
        """Recompute the numbers, the readout and the figure from the controls' current values."""
        start = time.perf_counter()
        self._values = self._compute()
        self.readout.value = self._readout_html(self._values)
        self.image.value = self._canvas.draw(self._values)
        self.last_update_s = time.perf_counter() - start


def group_explorer(n_heads: int = 32, n_kv_heads: int = 8, head_dim: int = 128, context: int = 8192,
                   n_layers: int = 32, batch: int = 1, dtype: str = "bf16", order: str = "contiguous",
                   model: str | None = None) -> GroupExplorer:
    """Build notebook 04's group explorer.

    Defaults: Llama-3 8B's shape (32 query heads, 8 KV heads, head dim 128, 32 layers) at 8,192 tokens, bf16.
    ``model`` (one of ``preset_names()``) starts from that model's shape instead. Values a control does not
    offer are refused with the valid ones (``NotOffered``, a ``ValueError``).
    """
    return GroupExplorer(n_heads, n_kv_heads, head_dim, context, n_layers, batch, dtype, order=order, model=model)
