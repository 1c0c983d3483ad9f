"""Notebook 04's widget, the group explorer: pick query heads and KV heads, see the groups and what they cost.

On every change it recomputes, from ``gqa_lib.cache_math``, the KV cache of the chosen shape and its
reduction against MHA, and it builds a small random ``GroupedQueryAttention`` of that shape (fixed
seed) to show, on a short random input, the K and V each query head works with: identical rows
inside a group, different rows across groups, and the matrix of ``max |K_i - K_j|`` that proves it.
The KV-head slider only ever offers divisors of the query-head count.
"""

from __future__ import annotations

import io
import time

import ipywidgets as widgets
import matplotlib as mpl
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ..attention import GroupedQueryAttention
from ..cache_math import auto_format_bytes, dtype_bytes, kv_cache_bytes, reduction_vs_mha
from ..group_diagram import draw_group_diagram, draw_max_diff, draw_per_head_rows, max_abs_diff_matrix, per_query_head
from ..layout import AttentionLayout, check_positive_int, divisors
from ..plots import DIVERGING_CMAP, HEATMAP_CMAP

MAX_HEADS = 64  # bounds one update's work (a 64 x 64 difference matrix, 64 rows per panel); tests time it
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


def closest_divisor(n_heads: int, wanted: int) -> int:
    """The divisor of ``n_heads`` closest to ``wanted`` (the smaller one on a tie)."""
    return min(divisors(n_heads), key=lambda d: (abs(d - wanted), d))


def _context_label(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 else str(n)


def _check_choice(name: str, value, valid: list[int]) -> None:
    if value not in valid or isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not offered (valid: {', '.join(map(str, valid))})")


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


class GroupExplorer(widgets.VBox):
    """Controls ``.n_heads``, ``.n_kv_heads``, ``.head_dim``, ``.context``; readout ``.readout`` (HTML);
    figure ``.image`` (PNG); numbers ``readout_values()``; ``update()`` redraws; ``last_update_s`` times it."""

    def __init__(self, n_heads: int = 32, n_kv_heads: int = 8, head_dim: int = 128, context: int = 8192,
                 n_layers: int = 32, batch: int = 1, dtype: str = "bf16", seed: int = 0):
        _check_choice("n_heads", n_heads, list(range(1, MAX_HEADS + 1)))
        AttentionLayout(n_heads, n_kv_heads, 1)  # n_kv_heads must divide n_heads; the error lists the divisors
        _check_choice("head_dim", head_dim, HEAD_DIMS)
        _check_choice("context", context, CONTEXTS)
        self.n_layers, self.batch = check_positive_int("n_layers", n_layers), check_positive_int("batch", batch)
        self.dtype, self.bytes_per_elem = dtype, dtype_bytes(dtype)
        self.seed = seed
        style = {"description_width": "140px"}  # wide enough for "KV heads (= groups)" in full
        wide = widgets.Layout(width="400px")
        self.n_heads = widgets.IntSlider(value=n_heads, min=1, max=MAX_HEADS, description="query heads",
                                         style=style, layout=wide, continuous_update=False)
        self.n_kv_heads = widgets.SelectionSlider(options=divisors(n_heads), value=n_kv_heads,
                                                  description="KV heads (= groups)", style=style,
                                                  layout=wide, continuous_update=False)
        self.head_dim = widgets.SelectionSlider(options=HEAD_DIMS, value=head_dim, description="head dim",
                                                style=style, layout=wide, continuous_update=False)
        self.context = widgets.SelectionSlider(options=[(_context_label(c), c) for c in CONTEXTS], value=context,
                                               description="context (tokens)", style=style, layout=wide,
                                               continuous_update=False)
        self.readout = widgets.HTML()
        self.image = widgets.Image(format="png", layout=widgets.Layout(align_self="flex-start"))  # natural size
        self.last_update_s = float("nan")
        self._values: dict = {}
        self._syncing = False  # True while the KV-head options are being replaced
        self._build_figure()
        self.n_heads.observe(self._on_n_heads, names="value")
        for control in (self.n_kv_heads, self.head_dim):
            control.observe(self._on_change, names="value")
        self.context.observe(self._on_context, names="value")
        controls = widgets.VBox([self.n_heads, self.n_kv_heads, self.head_dim, self.context])
        super().__init__([widgets.HBox([controls, self.readout]), self.image])
        self.update()

    def _on_n_heads(self, change) -> None:
        """Offer only the divisors of the new head count; keep the KV heads if they still divide, else the closest."""
        wanted = closest_divisor(change["new"], self.n_kv_heads.value)
        self._syncing = True
        try:
            self.n_kv_heads.options = divisors(change["new"])
            self.n_kv_heads.value = wanted
        finally:
            self._syncing = False
        self.update()

    def _on_change(self, change) -> None:
        if not self._syncing:
            self.update()

    def _on_context(self, change) -> None:
        """The context changes only the cache size: recompute the numbers and the text, keep the picture."""
        start = time.perf_counter()
        self._values.update(self._cache_numbers())
        self.readout.value = self._readout_html(self._values)
        self.last_update_s = time.perf_counter() - start

    def readout_values(self) -> dict:
        """The numbers behind the readout and the figure for the current controls (tensors for the matrices)."""
        return dict(self._values)

    def _cache_numbers(self) -> dict:
        """Cache bytes of the current shape and of MHA with the same query heads, from ``kv_cache_bytes``."""
        h, kv, d, ctx = self.n_heads.value, self.n_kv_heads.value, self.head_dim.value, self.context.value
        layout = AttentionLayout(h, kv, d, self.n_layers)
        return {"n_heads": h, "n_kv_heads": kv, "head_dim": d, "context": ctx, "n_layers": self.n_layers,
                "batch": self.batch, "dtype": self.dtype, "bytes_per_elem": self.bytes_per_elem,
                "group_size": layout.group_size, "kind": layout.kind, "kv_choices": list(self.n_kv_heads.options),
                "cache_bytes": kv_cache_bytes(self.n_layers, kv, d, ctx, self.batch, self.bytes_per_elem),
                "mha_cache_bytes": kv_cache_bytes(self.n_layers, h, d, ctx, self.batch, self.bytes_per_elem),
                "reduction": reduction_vs_mha(h, kv)}

    def _compute(self) -> dict:
        v = self._cache_numbers()
        k, val = random_kv(v["n_heads"], v["n_kv_heads"], v["head_dim"], SEQ_LEN, self.seed)
        k_heads, v_heads = per_query_head(k, v["n_heads"]), per_query_head(val, v["n_heads"])  # (n_heads, seq, d)
        v.update(k_per_head=k_heads, v_per_head=v_heads, max_diff=max_abs_diff_matrix(k_heads),
                 max_diff_v=max_abs_diff_matrix(v_heads))
        return v

    def _readout_html(self, v: dict) -> str:
        groups = torch.arange(v["n_heads"]) // v["group_size"]
        across = groups[:, None] != groups[None, :]
        largest_within = float(v["max_diff"][~across].max())  # pairs in one group, including a head with itself
        smallest_across = f"{float(v['max_diff'][across].min()):.3f}" if across.any() else "none (one group)"
        per = "head" if v["group_size"] == 1 else "heads"
        return (
            f"<b>{v['kind']}</b>: {v['n_heads']} query heads read {v['n_kv_heads']} KV heads (= groups), "
            f"<b>{v['group_size']}</b> query {per} per group.<br>"
            f"KV cache: <b>{auto_format_bytes(v['cache_bytes'])}</b> "
            f"({auto_format_bytes(v['cache_bytes'], binary=True)})<br>"
            f"&nbsp;= 2 (K and V) x {v['n_layers']} layers x {v['n_kv_heads']} KV heads x head dim {v['head_dim']} "
            f"x {v['context']:,} tokens x batch {v['batch']} x {v['bytes_per_elem']} bytes ({v['dtype']})<br>"
            f"MHA of the same shape: {auto_format_bytes(v['mha_cache_bytes'])}; this cache is "
            f"<b>{v['reduction']:g}x smaller</b> (= {v['n_heads']} / {v['n_kv_heads']}).<br>"
            f"Random layer, {SEQ_LEN} random tokens: max |K_i - K_j| inside a group at most {largest_within:g}; "
            f"across groups at least {smallest_across}.<br>"
            f"<i>GB = 10^9 bytes, GiB = 2^30 bytes. The layer count ({v['n_layers']}) is fixed here.</i>"
        )

    def _build_figure(self) -> None:
        """One figure for the widget's life, with fixed axes positions: redrawing is then a cheap PNG render."""
        self.fig = Figure(figsize=(12, 6.4), dpi=72)
        self.ax_diagram = self.fig.add_axes((0.1, 0.7, 0.87, 0.22))
        self.ax_k = self.fig.add_axes((0.06, 0.1, 0.25, 0.5))
        self.ax_v = self.fig.add_axes((0.33, 0.1, 0.25, 0.5))
        self.cax_kv = self.fig.add_axes((0.595, 0.1, 0.01, 0.5))
        self.ax_diff = self.fig.add_axes((0.72, 0.1, 0.19, 0.5))
        self.cax_diff = self.fig.add_axes((0.925, 0.1, 0.01, 0.5))
        # The colour bars never change (fixed scales), so they are drawn once, not at every update.
        kv_scale = ScalarMappable(Normalize(-KV_LIMIT, KV_LIMIT), DIVERGING_CMAP)
        self.fig.colorbar(kv_scale, cax=self.cax_kv, extend="both", label="value (same scale for K and V)",
                          ticks=[-KV_LIMIT, 0, KV_LIMIT])
        self.fig.colorbar(ScalarMappable(Normalize(0.0, DIFF_LIMIT), HEATMAP_CMAP), cax=self.cax_diff,
                          extend="max", label="max abs difference", ticks=[0, DIFF_LIMIT / 2, DIFF_LIMIT])

    def _draw(self, v: dict) -> bytes:
        # Remove the previous drawing's artists but keep the axes: clearing axes rebuilds their ticks, which is slow.
        for ax in (self.ax_diagram, self.ax_k, self.ax_v, self.ax_diff):
            for artist in (*ax.images, *ax.collections, *ax.texts, *ax.lines):
                artist.remove()
        # Few labels: each one costs about a millisecond to render, the largest part of an update.
        draw_group_diagram(self.ax_diagram, v["n_heads"], v["n_kv_heads"], max_labels=8)
        draw_per_head_rows(self.ax_k, v["k_per_head"], v["group_size"], KV_LIMIT, "K", max_labels=4)
        draw_per_head_rows(self.ax_v, v["v_per_head"], v["group_size"], KV_LIMIT, "V", max_labels=4)
        self.ax_v.set_ylabel("")
        self.ax_v.set_yticks(self.ax_k.get_yticks(), [])  # same rows as K: labels on the K panel only
        draw_max_diff(self.ax_diff, v["max_diff"], v["group_size"], vmax=DIFF_LIMIT, what="K", max_labels=4)
        buf = io.BytesIO()
        # Unhinted glyphs and light PNG compression render about 20% faster and look the same at this size.
        with mpl.rc_context({"text.hinting": "none"}):
            self.fig.savefig(buf, format="png", pil_kwargs={"compress_level": 1})
        return buf.getvalue()

    def update(self) -> None:
        """Recompute the numbers, the readout and the figure from the controls' current values."""
        start = time.perf_counter()
        self._values = self._compute()
        self.readout.value = self._readout_html(self._values)
        self.image.value = self._draw(self._values)
        self.last_update_s = time.perf_counter() - start


def group_explorer(n_heads: int = 32, n_kv_heads: int = 8, head_dim: int = 128, context: int = 8192,
                   n_layers: int = 32, batch: int = 1, dtype: str = "bf16") -> GroupExplorer:
    """Build notebook 04's group explorer.

    Defaults: Llama-3 8B's shape (32 query heads, 8 KV heads, head dim 128, 32 layers) at 8,192 tokens, bf16.
    """
    return GroupExplorer(n_heads, n_kv_heads, head_dim, context, n_layers, batch, dtype)

