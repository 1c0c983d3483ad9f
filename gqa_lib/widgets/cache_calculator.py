"""The KV-cache calculator of notebook 01: pick a model or a shape, see what its cache costs.

``kv_cache_calculator(preset="Llama-3 8B")`` returns a :class:`KVCacheCalculator` (an
``ipywidgets.VBox``). Its controls are attributes, so code and tests can drive it by setting
``.value``:

- ``.preset``: Dropdown of the models in ``data/models.json`` that cache KV heads, plus
  ``"(custom)"``. Choosing a model sets every slider to its shape and released context. MLA
  models (DeepSeek-V2, V3) cache a latent, not KV heads, so they are left out (notebook 07).
  Moving a shape slider away from the chosen model switches the dropdown to ``"(custom)"``.
- ``.n_layers``, ``.n_heads`` (query heads), ``.head_dim``: IntSliders.
- ``.n_kv_heads``: SelectionSlider whose options are always the divisors of ``.n_heads.value``;
  when the query heads change it keeps the nearest valid value (MHA stays MHA).
- ``.context``: SelectionSlider of tokens, powers of 2 from 128 to 1,048,576 (plus a preset's
  context if that is not a power of 2).
- ``.batch``: IntSlider; ``.dtype``: Dropdown over ``gqa_lib.cache_math.DTYPE_BYTES``.

Outputs: ``.readout`` (HTML), ``.plot`` (an Image: cache against context, log-log, with lines for
common GPU memory sizes and a marker at the chosen context), and ``readout_values()``, a dict of
the numbers shown. Every number comes from ``gqa_lib.cache_math``.

Readout format (stable; browser tests parse it). The text of ``.readout.value`` with tags
removed has these five lines, in this order::

    Kind: GQA (32 query heads, 8 KV heads (= groups), group size 4)
    Cache: 1.07 GB (1.00 GiB) = 1,073,741,824 bytes
    Per token: 131,072 bytes (128.00 KiB) over all 32 layers, one sequence
    Reduction against MHA of the same shape: 4.00x (MHA would cache 4.29 GB (4.00 GiB))
    Assumptions: batch 1, 8,192 tokens, bf16 = 2 bytes per number; GB = 10^9 bytes, GiB = 2^30 bytes

The first size on a "Cache:" line is in the largest decimal unit (B, KB, MB, GB, TB; powers of
1000) that keeps the number at or above 1, the second in the binary unit (B, KiB, MiB, GiB, TiB;
powers of 1024), both with two decimals and comma thousands separators; then the exact byte count.
Kind is MHA, GQA or MQA; reductions have two decimals and an ``x``.
"""

from __future__ import annotations

import contextlib
import html
import io
import math
import time

import ipywidgets as widgets
import numpy as np

from ..cache_math import (
    DTYPE_BYTES,
    GIB,
    auto_format_bytes,
    dtype_bytes,
    kv_cache_bytes,
    reduction_vs_mha,
)
from ..layout import AttentionLayout, divisors
from ..models import ModelSpec, get_model, load_models
from ..plots import GPU_MEMORY_GIB, NEUTRAL, PALETTE

CUSTOM = "(custom)"
CONTEXT_POWERS = [2**k for k in range(7, 21)]  # 128 .. 1,048,576 tokens
MAX_LAYERS, MAX_HEADS, MAX_HEAD_DIM, MAX_BATCH = 128, 128, 256, 256


def cache_presets() -> dict[str, ModelSpec]:
    """Models the calculator offers: every model in ``data/`` that caches KV heads (MLA left out)."""
    return {name: spec for name, spec in load_models().items() if spec.mla is None}


def nearest_valid_kv_heads(n_heads: int, wanted: int, keep_mha: bool = False) -> int:
    """The divisor of ``n_heads`` closest to ``wanted`` (ties go to the smaller); ``keep_mha`` returns ``n_heads``."""
    options = divisors(n_heads)
    if keep_mha:
        return n_heads
    return min(options, key=lambda d: (abs(d - wanted), d))


def context_options(extra: int | None = None) -> list[tuple[str, int]]:
    """(label, tokens) pairs for the context slider: powers of 2, plus ``extra`` if given."""
    values = sorted(set(CONTEXT_POWERS) | ({extra} if extra else set()))
    return [(f"{v:,}", v) for v in values]


def _k_label(tokens: int) -> str:
    return f"{tokens // 2**20}M" if tokens >= 2**20 else f"{tokens // 2**10}K" if tokens >= 2**10 else str(tokens)


_SUPERSCRIPTS = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _gib_label(value, _pos=None) -> str:
    """Tick labels as plain text (math text is slow to lay out): 0.01 .. 1,000, then 10⁴, 10⁵, ..."""
    if 0.01 <= value <= 1000:
        return f"{value:,.0f}" if value >= 1 else f"{value:g}"
    return "10" + str(round(math.log10(value))).translate(_SUPERSCRIPTS)


class KVCacheCalculator(widgets.VBox):
    """Sliders for a model's attention shape and use; readouts of the KV cache they need."""

    def __init__(self, preset: str | None = "Llama-3 8B"):
        self._presets = cache_presets()
        spec = self._check_preset(preset)
        self._holding = 0  # > 0 while several controls are set at once: update once at the end
        self.last_update_seconds = 0.0
        self._build_controls()
        self._build_figure()
        super().__init__(children=[
            widgets.HBox([self.preset, self.source]),
            widgets.HBox([widgets.VBox([self.n_layers, self.n_heads, self.n_kv_heads, self.head_dim]),
                          widgets.VBox([self.context, self.batch, self.dtype])]),
            self.readout, self.plot, self.note,
        ])
        if spec is not None:
            self.apply_preset(spec.name)
        else:
            self.update()

    # ---- building -----------------------------------------------------------------------
    def _check_preset(self, preset) -> ModelSpec | None:
        if preset is None or preset == CUSTOM:
            return None
        spec = get_model(preset)  # unknown names raise UnknownModelError naming the closest ones
        if spec.mla is not None:
            raise ValueError(f"preset={preset!r} uses MLA, which caches a latent instead of KV heads; this "
                             "calculator covers MHA, GQA and MQA (see notebook 07 for MLA). "
                             f"Valid presets: {', '.join(self._presets)}")
        return spec

    def _build_controls(self):
        style = {"description_width": "120px"}
        wide = widgets.Layout(width="380px")
        self.preset = widgets.Dropdown(options=[CUSTOM, *self._presets], value=CUSTOM, description="model",
                                       style=style, layout=wide)
        self.source = widgets.HTML()
        self.n_layers = widgets.IntSlider(32, 1, MAX_LAYERS, description="layers", style=style, layout=wide)
        self.n_heads = widgets.IntSlider(32, 1, MAX_HEADS, description="query heads", style=style, layout=wide)
        # continuous_update=False on the two sliders whose options change: otherwise the browser pushes its
        # old slider position back to the kernel after the options are rebuilt (seen in the browser tests).
        self.n_kv_heads = widgets.SelectionSlider(options=divisors(32), value=8, description="KV heads (groups)",
                                                  style=style, layout=wide, continuous_update=False)
        self.head_dim = widgets.IntSlider(128, 8, MAX_HEAD_DIM, step=8, description="head dim", style=style,
                                          layout=wide)
        self.context = widgets.SelectionSlider(options=context_options(), value=8192, description="context (tokens)",
                                               style=style, layout=wide, continuous_update=False)
        self.batch = widgets.IntSlider(1, 1, MAX_BATCH, description="batch", style=style, layout=wide)
        dtype_labels = [(f"{name} ({b} byte{'s' if b > 1 else ''})", name) for name, b in DTYPE_BYTES.items()]
        self.dtype = widgets.Dropdown(options=dtype_labels, value="bf16", description="dtype", style=style,
                                      layout=wide)
        self.readout = widgets.HTML()
        self.plot = widgets.Image(format="png", layout=widgets.Layout(align_self="flex-start"))  # natural size
        self.note = widgets.HTML("<small>MLA models (DeepSeek-V2, DeepSeek-V3/R1) cache a compressed latent, not "
                                 "KV heads, so they are not in the list; notebook 07 covers them.</small>")
        self.preset.observe(self._on_preset, "value")
        self.n_heads.observe(self._on_n_heads, "value")
        for control in (self.n_layers, self.n_kv_heads, self.head_dim, self.context, self.batch, self.dtype):
            control.observe(self._on_change, "value")

    def _build_figure(self):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

        # Fixed margins and few ticks: a layout engine and minor log ticks would triple the draw time.
        self._fig = Figure(figsize=(7.0, 3.8), dpi=90)
        self._fig.subplots_adjust(left=0.135, right=0.98, bottom=0.14, top=0.91)
        ax = self._ax = self._fig.add_subplot()
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, numticks=8))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(FuncFormatter(_gib_label))  # plain text: math text is slow to lay out
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("context (tokens; 1K = 1,024)")
        ax.set_ylabel("KV cache (GiB = 2^30 bytes)")
        ticks = CONTEXT_POWERS[::2]
        ax.set_xticks(ticks, [_k_label(t) for t in ticks])
        ax.set_xlim(CONTEXT_POWERS[0] / 1.25, CONTEXT_POWERS[-1] * 1.25)  # room for the marker at either end
        largest = max(GPU_MEMORY_GIB.values())
        for label, gib in GPU_MEMORY_GIB.items():
            ax.axhline(gib, color=NEUTRAL, lw=0.8, ls=":")
            above = gib == largest  # the top label above its line, the others below: 80 and 141 sit close
            ax.text(CONTEXT_POWERS[0] * 1.1, gib * (1.08 if above else 0.93), label, fontsize=8, color=NEUTRAL,
                    va="bottom" if above else "top")
        (self._mha_line,) = ax.plot([], [], color=PALETTE["MHA"], ls="--", lw=1.2, label="MHA of the same shape")
        (self._line,) = ax.plot([], [], lw=2.2, label="this shape")
        (self._marker,) = ax.plot([], [], "o", ms=8, mec="black", label="chosen context")
        self._legend = ax.legend(loc="lower right", fontsize=8)  # made once; only its colours change
        self._title = self._fig.text(0.5, 0.985, "", ha="center", va="top", fontsize=10)
        FigureCanvasAgg(self._fig)  # attaches itself to the figure
        self._dynamic = [self._mha_line, self._line, self._marker, self._legend, self._title]
        self._background, self._background_ylim = None, None

    # ---- events -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _hold(self):
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1

    def _on_preset(self, change):
        if self._holding or change["new"] == CUSTOM:
            return
        self.apply_preset(change["new"])

    def _on_n_heads(self, change):
        if self._holding:
            return
        self._set_kv_options(change["new"], self.n_kv_heads.value, keep_mha=self.n_kv_heads.value == change["old"])
        self._sync_preset()
        self.update()

    def _on_change(self, change):
        if self._holding:
            return
        self._sync_preset()
        self.update()

    def _set_kv_options(self, n_heads: int, wanted: int, keep_mha: bool = False):
        """Offer exactly the divisors of ``n_heads``; select the valid value nearest ``wanted``."""
        with self._hold():
            value = nearest_valid_kv_heads(n_heads, wanted, keep_mha)
            if list(self.n_kv_heads.options) != divisors(n_heads):
                self.n_kv_heads.options = divisors(n_heads)  # resets the value, hence the hold
            self.n_kv_heads.value = value

    def _sync_preset(self):
        """Show "(custom)" once the shape no longer is the chosen model's (context, batch, dtype may vary)."""
        name = self.preset.value
        if name == CUSTOM:
            return
        spec = self._presets[name]
        shape = (self.n_layers.value, self.n_heads.value, self.n_kv_heads.value, self.head_dim.value)
        if shape != (spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.head_dim):
            with self._hold():
                self.preset.value = CUSTOM

    def apply_preset(self, name: str):
        """Set every slider to the shape and released context of model ``name``, then update once."""
        spec = self._check_preset(name)
        if spec is None:
            return
        with self._hold():
            self.preset.value = spec.name
            self.n_layers.value = spec.n_layers
            self.n_heads.value = spec.n_heads
            self._set_kv_options(spec.n_heads, spec.n_kv_heads)
            self.head_dim.value = spec.head_dim
            if spec.context not in CONTEXT_POWERS or len(self.context.options) != len(CONTEXT_POWERS):
                self.context.options = context_options(spec.context)
            self.context.value = spec.context
        self.update()

    # ---- numbers ------------------------------------------------------------------------
    def readout_values(self) -> dict:
        """The numbers the readout shows, computed with ``gqa_lib.cache_math``."""
        n_layers, n_heads, n_kv = self.n_layers.value, self.n_heads.value, self.n_kv_heads.value
        head_dim, tokens, batch, dtype = self.head_dim.value, self.context.value, self.batch.value, self.dtype.value
        shape = AttentionLayout(n_heads, n_kv, head_dim, n_layers)  # validates n_kv | n_heads
        b = dtype_bytes(dtype)
        return {
            "n_layers": n_layers, "n_heads": n_heads, "n_kv_heads": n_kv, "head_dim": head_dim,
            "context": tokens, "batch": batch, "dtype": dtype, "bytes_per_elem": b,
            "kind": shape.kind, "group_size": shape.group_size,
            "bytes": kv_cache_bytes(n_layers, n_kv, head_dim, tokens, batch, b),
            "bytes_per_token": kv_cache_bytes(n_layers, n_kv, head_dim, 1, 1, b),
            "mha_bytes": kv_cache_bytes(n_layers, n_heads, head_dim, tokens, batch, b),
            "reduction": reduction_vs_mha(n_heads, n_kv),
        }

    def readout_lines(self, v: dict | None = None) -> list[str]:
        """The five readout lines as plain text (the format is in the module docstring)."""
        v = self.readout_values() if v is None else v

        def size(n):
            return f"{auto_format_bytes(n)} ({auto_format_bytes(n, binary=True)})"

        return [
            f"Kind: {v['kind']} ({v['n_heads']} query heads, {v['n_kv_heads']} KV heads (= groups), "
            f"group size {v['group_size']})",
            f"Cache: {size(v['bytes'])} = {v['bytes']:,} bytes",
            f"Per token: {v['bytes_per_token']:,} bytes ({auto_format_bytes(v['bytes_per_token'], binary=True)}) "
            f"over all {v['n_layers']} layers, one sequence",
            f"Reduction against MHA of the same shape: {v['reduction']:.2f}x (MHA would cache {size(v['mha_bytes'])})",
            f"Assumptions: batch {v['batch']:,}, {v['context']:,} tokens, {v['dtype']} = {v['bytes_per_elem']} "
            f"byte{'s' if v['bytes_per_elem'] > 1 else ''} per number; GB = 10^9 bytes, GiB = 2^30 bytes",
        ]

    # ---- drawing ------------------------------------------------------------------------
    def update(self):
        """Recompute the readout and redraw the plot from the current control values."""
        start = time.perf_counter()
        v = self.readout_values()
        lines = self.readout_lines(v)
        lines[1] = f"<b>{html.escape(lines[1])}</b>"
        self.readout.value = "<div style='line-height:1.5'>" + "<br>".join(
            line if line.startswith("<b>") else html.escape(line) for line in lines) + "</div>"
        name = self.preset.value
        if name == CUSTOM:
            self.source.value = "<small>custom shape</small>"
        else:
            spec = self._presets[name]
            self.source.value = (f"<small>{html.escape(spec.attention)}, released context {spec.context:,} tokens; "
                                 f"source: {html.escape(spec.source)}</small>")
        self._draw(v)
        self.last_update_seconds = time.perf_counter() - start

    def _draw(self, v: dict):
        per_token_gib = v["bytes_per_token"] * v["batch"] / GIB
        xs = CONTEXT_POWERS
        ys = [per_token_gib * x for x in xs]
        mha_ys = [y * v["reduction"] for y in ys]
        colour = PALETTE[v["kind"]]
        self._line.set_data(xs, ys)
        self._line.set_color(colour)
        handles = self._legend.legend_handles
        handles[1].set_color(colour)
        handles[2].set_color(colour)
        handles[2].set_markeredgecolor("black")
        self._legend.texts[1].set_text(f"this shape ({v['kind']})")
        self._legend.texts[0].set_text("MHA of the same shape" + (" (= this shape)" if v["kind"] == "MHA" else ""))
        self._mha_line.set_data(xs, mha_ys)
        self._mha_line.set_visible(v["kind"] != "MHA")  # MHA's own line is the dashed one
        self._marker.set_data([v["context"]], [v["bytes"] / GIB])
        self._marker.set_color(colour)
        self._marker.set_markeredgecolor("black")
        # y range in whole decades, so that most slider moves keep it and can reuse the drawn background
        low = 10.0 ** math.floor(math.log10(min(ys[0], 1.0) / 3))
        high = 10.0 ** math.ceil(math.log10(max(mha_ys[-1], max(GPU_MEMORY_GIB.values())) * 3))
        self._title.set_text(f"{v['n_layers']} layers, {v['n_heads']} query / {v['n_kv_heads']} KV heads, "
                             f"head dim {v['head_dim']}, batch {v['batch']}, {v['dtype']}")
        self._render((low, high))

    def _render(self, ylim: tuple[float, float]):
        """Draw the figure into ``.plot`` as PNG.

        Axes, ticks and GPU lines (the slow part: text) are drawn once per y range and kept as a bitmap;
        each update pastes that bitmap and draws only the curves, marker, legend and title on top.
        """
        from PIL import Image

        canvas = self._fig.canvas
        if ylim != self._background_ylim:
            self._ax.set_ylim(*ylim)
            shown = [a.get_visible() for a in self._dynamic]
            for a in self._dynamic:
                a.set_visible(False)
            canvas.draw()
            self._background = canvas.copy_from_bbox(self._fig.bbox)
            self._background_ylim = ylim
            for a, visible in zip(self._dynamic, shown, strict=True):
                a.set_visible(visible)
        else:
            canvas.restore_region(self._background)
        for a in self._dynamic:
            if a.get_visible():
                self._fig.draw_artist(a)
        buf = io.BytesIO()
        Image.fromarray(np.asarray(canvas.buffer_rgba())).save(buf, format="png", compress_level=1)
        self.plot.value = buf.getvalue()


def kv_cache_calculator(preset: str | None = "Llama-3 8B") -> KVCacheCalculator:
    """The KV-cache calculator, starting at model ``preset`` (a name in ``data/models.json``, or None for custom).

    Unknown names raise ``UnknownModelError`` suggesting the closest names; MLA models raise
    ``ValueError`` (they cache a latent, not KV heads).
    """
    return KVCacheCalculator(preset)
