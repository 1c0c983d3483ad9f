"""Notebook 03's widget: the KV cache of one model shape as MHA (a K/V head per query head) and as MQA (one).

All numbers come from ``gqa_lib.cache_math.kv_cache_bytes``; the reduction is ``n_heads / 1``. A preset
fills the sliders with a real model's shape from ``data/models.json``; moving any slider away from
the preset's value switches the preset back to "custom".
"""

from __future__ import annotations

import io
import time

import ipywidgets as widgets
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullLocator

from ..cache_math import DTYPE_BYTES, GIB, auto_format_bytes, dtype_bytes, kv_cache_bytes, reduction_vs_mha
from ..layout import check_positive_int
from ..models import get_model, load_models
from ..plots import GPU_MEMORY_GIB, NEUTRAL, PALETTE

CUSTOM = "custom"
HEAD_DIMS = [32, 64, 80, 96, 128, 160, 192, 256]
CONTEXTS = [2**k for k in range(8, 18)]  # 256 .. 131072 tokens
MAX_HEADS, MAX_LAYERS, MAX_BATCH = 128, 128, 64
DEFAULT_PRESET = "Falcon-7B"


def _context_label(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 else str(n)


def preset_names() -> list[str]:
    """MQA models first (the notebook's subject), then every other model with KV heads, then 'custom'."""
    specs = [s for s in load_models().values() if s.mla is None]
    mqa = [s.name for s in specs if s.attention == "MQA"]
    return mqa + [s.name for s in specs if s.attention != "MQA"] + [CUSTOM]


def cache_comparison(n_heads: int, head_dim: int, n_layers: int, context: int, batch: int = 1,
                     dtype: str = "bf16") -> dict:
    """MHA and MQA cache bytes for one shape; the MQA cache is ``n_heads`` times smaller."""
    check_positive_int("n_heads", n_heads)
    b = dtype_bytes(dtype)
    mha = kv_cache_bytes(n_layers, n_heads, head_dim, context, batch, b)
    mqa = kv_cache_bytes(n_layers, 1, head_dim, context, batch, b)
    return {"n_heads": n_heads, "head_dim": head_dim, "n_layers": n_layers, "context": context, "batch": batch,
            "dtype": dtype, "bytes_per_elem": b, "mha_bytes": mha, "mqa_bytes": mqa,
            "mha_bytes_per_token": kv_cache_bytes(n_layers, n_heads, head_dim, 1, 1, b),
            "mqa_bytes_per_token": kv_cache_bytes(n_layers, 1, head_dim, 1, 1, b),
            "reduction": reduction_vs_mha(n_heads, 1)}


class MQACacheComparison(widgets.VBox):
    """Controls ``.preset``, ``.n_heads``, ``.head_dim``, ``.n_layers``, ``.context``, ``.batch``, ``.dtype``;
    readout ``.readout``; bar chart ``.image``; numbers ``readout_values()``."""

    def __init__(self, preset: str = DEFAULT_PRESET):
        names = preset_names()
        if preset not in names:
            raise ValueError(f"preset={preset!r} is not known (valid: {', '.join(names)})")
        style = {"description_width": "110px"}
        slide = {"style": style, "continuous_update": False}
        self.preset = widgets.Dropdown(options=names, value=CUSTOM, description="model preset", style=style)
        self.n_heads = widgets.IntSlider(value=32, min=1, max=MAX_HEADS, description="query heads", **slide)
        self.head_dim = widgets.Dropdown(options=HEAD_DIMS, value=128, description="head dim", style=style)
        self.n_layers = widgets.IntSlider(value=32, min=1, max=MAX_LAYERS, description="layers", **slide)
        self.context = widgets.SelectionSlider(options=[(_context_label(c), c) for c in CONTEXTS], value=4096,
                                               description="context (tokens)", **slide)
        self.batch = widgets.IntSlider(value=1, min=1, max=MAX_BATCH, description="batch", **slide)
        self.dtype = widgets.Dropdown(options=list(DTYPE_BYTES), value="bf16", description="dtype", style=style)
        self.readout = widgets.HTML()
        # flex-start: keep the picture at its own size; a VBox would otherwise stretch it to the full width
        self.image = widgets.Image(format="png", layout=widgets.Layout(align_self="flex-start"))
        self.last_update_s = float("nan")
        self._filling = False  # True while a preset writes into the sliders
        self._build_figure()
        self.preset.observe(self._on_preset, names="value")
        for c in self._shape_controls():
            c.observe(self._on_shape, names="value")
        left = widgets.VBox([self.preset, self.n_heads, self.head_dim, self.n_layers, self.context, self.batch,
                             self.dtype])
        super().__init__([left, self.readout, self.image])
        self.preset.value = preset  # fills the sliders and draws (or draws now if it is 'custom')
        if preset == CUSTOM:
            self.update()

    def _shape_controls(self):
        return (self.n_heads, self.head_dim, self.n_layers, self.context, self.batch, self.dtype)

    def _on_preset(self, change) -> None:
        if change["new"] == CUSTOM:
            return
        spec = get_model(change["new"])
        self._filling = True
        try:
            self.n_heads.value, self.n_layers.value = spec.n_heads, spec.n_layers
            self.head_dim.value, self.context.value = spec.head_dim, spec.context
        finally:
            self._filling = False
        self.update()

    def _on_shape(self, change) -> None:
        if self._filling:
            return
        name = self.preset.value
        if name != CUSTOM:
            spec = get_model(name)
            shape = (spec.n_heads, spec.head_dim, spec.n_layers, spec.context)
            if shape != (self.n_heads.value, self.head_dim.value, self.n_layers.value, self.context.value):
                self.preset.value = CUSTOM
        self.update()

    def readout_values(self) -> dict:
        """The numbers behind the readout and the bars, from ``cache_comparison``."""
        v = cache_comparison(self.n_heads.value, self.head_dim.value, self.n_layers.value, self.context.value,
                             self.batch.value, self.dtype.value)
        v["preset"] = self.preset.value
        return v

    def _build_figure(self) -> None:
        self.fig = Figure(figsize=(8.2, 2.8))
        self.fig.subplots_adjust(left=0.09, right=0.68, bottom=0.22, top=0.8)
        ax = self.ax = self.fig.add_subplot()
        self.bars = ax.barh([1, 0], [1, 1], color=[PALETTE["MHA"], PALETTE["MQA"]], height=0.6)
        ax.set_yticks([1, 0], ["MHA", "MQA"])
        ax.set_xscale("log")
        # Plain tick labels: log-scale ticks default to mathtext ("10^{-2}"), whose parsing is most of a redraw.
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("KV cache (GiB = 2^30 bytes, log scale)")
        self.bar_text = [ax.text(1, y, "", va="center", ha="left", fontsize=9,
                                 bbox={"facecolor": "white", "edgecolor": "none", "pad": 1}) for y in (1, 0)]
        for (label, gib), ls in zip(GPU_MEMORY_GIB.items(), ("--", "-.", ":"), strict=True):
            ax.axvline(gib, color=NEUTRAL, lw=1.2, ls=ls, label=f"GPU memory {label}")
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
        ax.set_ylim(-0.6, 1.6)
        ax.grid(axis="y", visible=False)

    def _draw(self, v: dict) -> bytes:
        mha, mqa = v["mha_bytes"] / GIB, v["mqa_bytes"] / GIB
        for bar, x, txt, y in zip(self.bars, (mha, mqa), self.bar_text, (1, 0), strict=True):
            bar.set_width(x)
            txt.set_position((x * 1.15, y))
            txt.set_text(auto_format_bytes(x * GIB, binary=True))
        lo = min(mqa, min(GPU_MEMORY_GIB.values())) / 4
        hi = max(mha, max(GPU_MEMORY_GIB.values())) * 12  # room for the label right of the longest bar
        self.ax.set_xlim(lo, hi)
        heads = f"{v['n_heads']} query head{'s' if v['n_heads'] > 1 else ''}"
        self.ax.set_title(f"The MQA cache is {v['reduction']:g}x smaller than the MHA cache\n{heads}, "
                          f"{v['n_layers']} layers, head dim {v['head_dim']}, {v['context']:,} tokens, "
                          f"batch {v['batch']}, {v['dtype']}", fontsize=9)
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", pil_kwargs={"compress_level": 1})  # fast to write, still small
        return buf.getvalue()

    def update(self) -> None:
        """Recompute the readout and the bars from the controls' current values."""
        start = time.perf_counter()
        v = self.readout_values()
        unit = f"{v['bytes_per_elem']} byte{'s' if v['bytes_per_elem'] > 1 else ''} per number ({v['dtype']})"
        note = ""
        if v["preset"] != CUSTOM:
            spec = get_model(v["preset"])
            real = f"{spec.attention} with {spec.n_kv_heads} KV head{'s' if spec.n_kv_heads > 1 else ''}"
            note = f"<br><i>{spec.name} itself is {real}.</i>" + (f" <i>Note: {spec.note}.</i>" if spec.note else "")
        self.readout.value = (
            f"MHA ({v['n_heads']} K/V head{'s' if v['n_heads'] > 1 else ''} a layer): "
            f"<b>{auto_format_bytes(v['mha_bytes'])}</b> = {auto_format_bytes(v['mha_bytes'], binary=True)}, "
            f"{auto_format_bytes(v['mha_bytes_per_token'])} per token<br>"
            f"MQA (1 K/V head a layer): <b>{auto_format_bytes(v['mqa_bytes'])}</b> = "
            f"{auto_format_bytes(v['mqa_bytes'], binary=True)}, {auto_format_bytes(v['mqa_bytes_per_token'])} "
            f"per token<br>"
            f"Reduction: <b>{v['reduction']:g}x</b> (= query heads / 1 K/V head)<br>"
            f"Assumes {v['context']:,} tokens, batch {v['batch']}, {unit}; GB = 10^9 bytes, GiB = 2^30 bytes."
            + note
        )
        self.image.value = self._draw(v)
        self.last_update_s = time.perf_counter() - start


def mqa_cache_comparison(preset: str = DEFAULT_PRESET) -> MQACacheComparison:
    """Build notebook 03's widget: MHA against MQA cache for a model shape (a preset from data/ or custom)."""
    return MQACacheComparison(preset)
