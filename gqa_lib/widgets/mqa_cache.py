"""Notebook 03's widget: the KV cache of one model shape as MHA (a K/V head per query head) and as MQA (one).

All numbers come from ``gqa_lib.core.cache_math.CacheRecipe``, each number format priced by
``ElementType`` (int8/int4 with a 2-byte scale and a 2-byte minimum per 64 numbers, as notebooks 01 and 08
count them); the reduction is ``n_heads / 1``. A preset
fills the sliders with a real model's shape from ``data/models.json``; moving any slider away from
the preset's value switches the preset back to ``"custom"``. For a GQA preset the model as released
is drawn between the two (MHA -> GQA -> MQA), as long as the sliders still show its shape. Every size
counts every token in every layer; for a preset with sliding-window layers (``data/models.json``) the
readout adds the model's own cache as built, its local layers keeping only their window.
Controls refuse values they do not offer, listing the valid ones (``controls.NotOffered``).
"""

from __future__ import annotations

import math
import time

import ipywidgets as widgets
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullLocator

from gqa_lib.core.cache_math import (
    ELEMENT_BITS,
    GIB,
    QUANTIZED,
    CacheRecipe,
    ElementType,
    auto_format_bytes,
    reduction_vs_mha,
)
from gqa_lib.core.checks import check_positive_int
from gqa_lib.models.catalog import get_model, load_models
from gqa_lib.pictures.style import GPU_MEMORY_GIB, NEUTRAL, PALETTE
from gqa_lib.widgets.blit import BlitFigure
from gqa_lib.widgets.controls import CUSTOM, StrictDropdown, StrictIntSlider, StrictSelectionSlider, Syncing
from gqa_lib.widgets.text import context_label, plural

ROWS_WITH_GQA = {"MHA": 2.0, "GQA": 1.0, "MQA": 0.0}  # bar positions (y) with the released GQA model drawn
ROWS_WITHOUT = {"MHA": 1.6, "GQA": 1.0, "MQA": 0.4}
HEAD_DIMS = [32, 64, 80, 96, 128, 160, 192, 256]
CONTEXTS = [2**k for k in range(8, 18)]  # 256 .. 131072 tokens
MAX_HEADS, MAX_LAYERS, MAX_BATCH = 128, 128, 64
DEFAULT_PRESET = "Falcon-7B"


def preset_names() -> list[str]:
    """MQA models first (the notebook's subject), then every other model with KV heads, then 'custom'."""
    specs = [s for s in load_models().values() if s.mla is None]
    mqa = [s.name for s in specs if s.attention == "MQA"]
    return mqa + [s.name for s in specs if s.attention != "MQA"] + [CUSTOM]


def element_of(dtype: str) -> ElementType:
    """The number format a dtype name stands for, as ``core.cache_math`` prices it (int8/int4: scales and minima)."""
    if dtype not in ELEMENT_BITS:
        raise ValueError(f"dtype={dtype!r} is not known (valid: {', '.join(ELEMENT_BITS)})")
    return ElementType(dtype)


def kv_bytes(n_layers: int, n_kv_heads: int, head_dim: int, context: int, batch: int = 1, dtype: str = "bf16") -> int:
    """Cache bytes of ``n_kv_heads`` K/V heads a layer: ``2 x n_kv_heads`` vectors of ``head_dim`` numbers per token,
    layer and sequence, each ``element_of(dtype).vector_bytes(head_dim)`` bytes (``CacheRecipe``, all layers global)."""
    check_positive_int("context", context)
    check_positive_int("batch", batch)
    return CacheRecipe(n_layers, n_kv_heads, head_dim, element_of(dtype)).cache_bytes(context, batch)


def cache_comparison(n_heads: int, head_dim: int, n_layers: int, context: int, batch: int = 1,
                     dtype: str = "bf16") -> dict:
    """MHA and MQA cache bytes for one shape; the MQA cache is ``n_heads`` times smaller."""
    check_positive_int("n_heads", n_heads)
    e = element_of(dtype)
    return {"n_heads": n_heads, "head_dim": head_dim, "n_layers": n_layers, "context": context, "batch": batch,
            "dtype": dtype, "element": e, "bytes_per_vector": e.vector_bytes(head_dim),
            "mha_bytes": kv_bytes(n_layers, n_heads, head_dim, context, batch, dtype),
            "mqa_bytes": kv_bytes(n_layers, 1, head_dim, context, batch, dtype),
            "mha_bytes_per_token": kv_bytes(n_layers, n_heads, head_dim, 1, 1, dtype),
            "mqa_bytes_per_token": kv_bytes(n_layers, 1, head_dim, 1, 1, dtype),
            "reduction": reduction_vs_mha(n_heads, 1)}


def number_format(v: dict) -> str:
    """The readout's words for the number format: '2 bytes per number (bf16)', or for int8/int4 what they store."""
    e = v["element"]
    if v["dtype"] in QUANTIZED:
        return (f"{v['dtype']}: {e.bits / 8:g} byte{'s' if e.bits != 8 else ''} per number + {e.stored()} "
                f"({v['bytes_per_vector']:,} bytes per K or V vector of {v['head_dim']})")
    return f"{plural(e.bits // 8, 'byte')} per number ({v['dtype']})"


class MQACacheComparison(widgets.VBox):
    """Controls ``.preset``, ``.n_heads``, ``.head_dim``, ``.n_layers``, ``.context``, ``.batch``, ``.dtype``;
    readout ``.readout``; bar chart ``.image``; numbers ``readout_values()``."""

    def __init__(self, preset: str = DEFAULT_PRESET):
        names = preset_names()
        if preset not in names:
            raise ValueError(f"preset={preset!r} is not known (valid: {', '.join(names)})")
        style = {"description_width": "110px"}
        slide = {"style": style, "continuous_update": False}
        self.preset = StrictDropdown(options=names, value=CUSTOM, description="model preset", style=style,
                                     name="preset")
        self.n_heads = StrictIntSlider(value=32, min=1, max=MAX_HEADS, description="query heads", name="n_heads",
                                       **slide)
        self.head_dim = StrictDropdown(options=HEAD_DIMS, value=128, description="head dim", style=style,
                                       name="head_dim")
        self.n_layers = StrictIntSlider(value=32, min=1, max=MAX_LAYERS, description="layers", name="n_layers",
                                        **slide)
        self.context = StrictSelectionSlider(options=[(context_label(c), c) for c in CONTEXTS], value=4096,
                                             description="context (tokens)", name="context", **slide)
        self.batch = StrictIntSlider(value=1, min=1, max=MAX_BATCH, description="batch", name="batch", **slide)
        self.dtype = StrictDropdown(options=list(ELEMENT_BITS), value="bf16", description="dtype", style=style,
                                    name="dtype")
        self.readout = widgets.HTML()
        # flex-start: keep the picture at its own size; a VBox would otherwise stretch it to the full width
        self.image = widgets.Image(format="png", layout=widgets.Layout(align_self="flex-start"))
        self.last_update_s = float("nan")
        self._filling = Syncing()  # set while a preset writes into the sliders
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
        with self._filling:
            self.n_heads.value, self.n_layers.value = spec.n_heads, spec.n_layers
            self.head_dim.value, self.context.value = spec.head_dim, spec.context
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
        v["released_gqa"] = None  # the preset's own GQA cache, when the sliders show a GQA model as released
        v["as_built"] = None  # the preset's own cache with its local layers keeping their window, if it has any
        if v["preset"] != CUSTOM:
            spec = get_model(v["preset"])
            if spec.sliding_window is not None:
                recipe = spec.cache_recipe(v["element"])
                v["as_built"] = {"bytes": recipe.cache_bytes(v["context"], v["batch"], windowed=True),
                                 "window": recipe.window, "local_layers": recipe.local_layers(),
                                 "n_kv_heads": spec.n_kv_heads}
            if spec.n_kv_heads is not None and 1 < spec.n_kv_heads < spec.n_heads:
                shape = (v["n_layers"], spec.n_kv_heads, v["head_dim"])
                v["released_gqa"] = {
                    "n_kv_heads": spec.n_kv_heads,
                    "bytes": kv_bytes(*shape, v["context"], v["batch"], v["dtype"]),
                    "bytes_per_token": kv_bytes(*shape, 1, 1, v["dtype"]),
                    "vs_mha": reduction_vs_mha(spec.n_heads, spec.n_kv_heads)}
        return v

    def _build_figure(self) -> None:
        self.fig = Figure(figsize=(8.2, 3.0))
        self.fig.subplots_adjust(left=0.16, right=0.68, bottom=0.2, top=0.8)
        ax = self.ax = self.fig.add_subplot()
        self.bars = {k: ax.barh([ROWS_WITH_GQA[k]], [1], color=PALETTE[k], height=0.6)[0] for k in ROWS_WITH_GQA}
        ax.set_xscale("log")
        # Plain tick labels: log-scale ticks default to mathtext ("10^{-2}"), whose parsing is most of a redraw.
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("KV cache (GiB = 2^30 bytes, log scale)")
        self.bar_text = {k: ax.text(1, ROWS_WITH_GQA[k], "", va="center", ha="left", fontsize=9,
                                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1}) for k in ROWS_WITH_GQA}
        for (label, gib), ls in zip(GPU_MEMORY_GIB.items(), ("--", "-.", ":"), strict=True):
            ax.axvline(gib, color=NEUTRAL, lw=1.2, ls=ls, label=f"GPU memory {label}")
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
        ax.set_ylim(-0.6, 2.6)
        ax.grid(axis="y", visible=False)
        self.title = ax.set_title(" ", fontsize=9)
        # Axis limits and row names make the background; bars, their labels and the title are redrawn each time.
        self._blit = BlitFigure(self.fig, [*self.bars.values(), *self.bar_text.values(), self.title])

    def _draw(self, v: dict) -> bytes:
        gqa = v["released_gqa"]
        rows = ROWS_WITH_GQA if gqa else ROWS_WITHOUT
        gib = {"MHA": v["mha_bytes"] / GIB, "MQA": v["mqa_bytes"] / GIB, "GQA": gqa["bytes"] / GIB if gqa else 1.0}
        names = {"MHA": f"MHA\n{plural(v['n_heads'], 'KV head')}", "MQA": "MQA\n1 KV head",
                 "GQA": f"GQA (released)\n{plural(gqa['n_kv_heads'], 'KV head')}" if gqa else ""}
        for k, bar in self.bars.items():
            shown = k != "GQA" or gqa is not None
            bar.set_visible(shown)
            self.bar_text[k].set_visible(shown)
            bar.set_y(rows[k] - 0.3)
            bar.set_width(gib[k])
            self.bar_text[k].set_position((gib[k] * 1.15, rows[k]))
            self.bar_text[k].set_text(auto_format_bytes(gib[k] * GIB, binary=True))
        kinds = [k for k in rows if k != "GQA" or gqa]
        # Whole decades as limits: the axis (the slow part to draw) changes only when a bar crosses a decade.
        lo = min(gib["MQA"], min(GPU_MEMORY_GIB.values())) / 4
        hi = max(gib["MHA"], max(GPU_MEMORY_GIB.values())) * 12  # room for the label right of the longest bar
        limits = (10.0 ** math.floor(math.log10(lo)), 10.0 ** math.ceil(math.log10(hi)))
        ticks = ([rows[k] for k in kinds], [names[k] for k in kinds])
        self.ax.set_xlim(*limits)
        self.ax.set_yticks(*ticks)
        if v["n_heads"] == 1:
            head = "With one query head, MHA and MQA are the same shape: the same cache (1x)"
        elif gqa:
            head = (f"KV heads, MHA -> GQA as released -> MQA: {v['n_heads']} -> {gqa['n_kv_heads']} -> 1 "
                    f"({gqa['vs_mha']:g}x, then {v['reduction']:g}x smaller than MHA)")
        else:
            head = f"The MQA cache is {v['reduction']:g}x smaller than the MHA cache"
        self.title.set_text(f"{head}\n{plural(v['n_heads'], 'query head')}, {plural(v['n_layers'], 'layer')}, "
                            f"head dim {v['head_dim']}, {plural(v['context'], 'token')}, batch {v['batch']}, "
                            f"{v['dtype']}")
        return self._blit.render((limits, tuple(ticks[0]), tuple(ticks[1])))

    def update(self) -> None:
        """Recompute the readout and the bars from the controls' current values."""
        start = time.perf_counter()
        v = self.readout_values()
        unit = number_format(v)
        note = ""
        if v["preset"] != CUSTOM:
            spec = get_model(v["preset"])
            real = f"{spec.attention} with {plural(spec.n_kv_heads, 'KV head')}"
            note = f"<br><i>{spec.name} itself is {real}.</i>" + (f" <i>Note: {spec.note}.</i>" if spec.note else "")
        gqa = v["released_gqa"]
        released = ""
        if gqa:
            released = (f"GQA as released ({plural(gqa['n_kv_heads'], 'K/V head')} a layer): "
                        f"<b>{auto_format_bytes(gqa['bytes'])}</b> = {auto_format_bytes(gqa['bytes'], binary=True)}, "
                        f"{auto_format_bytes(gqa['bytes_per_token'])} per token, {gqa['vs_mha']:g}x smaller than "
                        f"MHA<br>")
        if v["n_heads"] == 1:
            reduction = ("Reduction: none (1x): with one query head, MHA and MQA are the same shape "
                         "(one K/V head either way)<br>")
        else:
            reduction = f"Reduction: <b>{v['reduction']:g}x</b> (= query heads / 1 K/V head)<br>"
        built = v["as_built"]
        as_built = ""
        if built:
            layers = "every layer" if built["local_layers"] == v["n_layers"] else \
                f"{built['local_layers']} of its {plural(v['n_layers'], 'layer')}"
            as_built = (f"<br>As built, {v['preset']} keeps only the last {plural(built['window'], 'token')} in "
                        f"{layers} (sliding window): its own cache ({plural(built['n_kv_heads'], 'K/V head')} a "
                        f"layer) is <b>{auto_format_bytes(built['bytes'])}</b> = "
                        f"{auto_format_bytes(built['bytes'], binary=True)}. The sizes above count every token in "
                        f"every layer.")
        self.readout.value = (
            f"MHA ({plural(v['n_heads'], 'K/V head')} a layer): "
            f"<b>{auto_format_bytes(v['mha_bytes'])}</b> = {auto_format_bytes(v['mha_bytes'], binary=True)}, "
            f"{auto_format_bytes(v['mha_bytes_per_token'])} per token<br>"
            + released +
            f"MQA (1 K/V head a layer): <b>{auto_format_bytes(v['mqa_bytes'])}</b> = "
            f"{auto_format_bytes(v['mqa_bytes'], binary=True)}, {auto_format_bytes(v['mqa_bytes_per_token'])} "
            f"per token<br>"
            + reduction +
            f"Assumes {v['context']:,} tokens, batch {v['batch']}, {unit}; GB = 10^9 bytes, GiB = 2^30 bytes."
            + note + as_built
        )
        self.image.value = self._draw(v)
        self.last_update_s = time.perf_counter() - start


def mqa_cache_comparison(preset: str = DEFAULT_PRESET) -> MQACacheComparison:
    """Build notebook 03's widget: MHA against MQA cache for a model shape (a preset from data/ or custom)."""
    return MQACacheComparison(preset)
