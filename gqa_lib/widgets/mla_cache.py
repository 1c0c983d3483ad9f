"""Notebook 07's widget: the cache one token adds under MHA, GQA, MQA and MLA, side by side.

Sliders set the shape (layers, query heads, KV heads, head dim) and MLA's two sizes (latent ``d_c``
and RoPE key ``d_rope``). Every figure in the readout and the bar chart comes from
``gqa_lib.core.cache_math``; the KV-head slider offers only divisors of the query heads.
"""

from __future__ import annotations

import math
import time

import ipywidgets as widgets
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from gqa_lib.core.cache_math import ELEMENT_BITS, CacheRecipe, auto_format_bytes
from gqa_lib.core.checks import check_kv_heads, check_positive_int
from gqa_lib.pictures.style import PALETTE
from gqa_lib.widgets.blit import BlitFigure
from gqa_lib.widgets.controls import KVHeadsSlider, StrictDropdown, StrictIntSlider, Syncing
from gqa_lib.widgets.mqa_cache import element_of
from gqa_lib.widgets.text import plural

KINDS = ("MHA", "GQA", "MQA", "MLA")
TOKEN_CHOICES = (4_096, 32_768, 100_000, 131_072)
# DeepSeek-V3's shape (data/models.json): 61 layers, 128 heads of 128, d_c 512, d_rope 64.
DEFAULTS = {"n_layers": 61, "n_heads": 128, "n_kv_heads": 8, "head_dim": 128, "d_c": 512, "d_rope": 64,
            "dtype": "bf16", "seq_len": 100_000}
# (min, max, step) of each integer slider: a starting value must be one the slider can show.
SLIDER_RANGES = {"n_layers": (1, 128, 1), "n_heads": (1, 128, 1), "head_dim": (16, 256, 16), "d_c": (32, 2048, 32),
                 "d_rope": (0, 256, 16)}


def check_slider_value(name: str, value: int) -> None:
    """Refuse a starting value outside a slider's range or off its step, rather than let the slider move it."""
    lo, hi, step = SLIDER_RANGES[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} must be an integer (got {type(value).__name__})")
    if not lo <= value <= hi or (value - lo) % step:
        grid = f"{lo}..{hi}" if step == 1 else f"{lo}..{hi} in steps of {step}"
        raise ValueError(f"{name}={value} is not on the slider (valid: {grid})")


def cache_per_token(n_layers: int, n_heads: int, n_kv_heads: int, head_dim: int, d_c: int, d_rope: int,
                    dtype: str = "bf16") -> dict[str, int]:
    """Bytes one token adds to the cache, all layers, batch 1, for each attention kind of this shape.

    Priced by ``core.cache_math.CacheRecipe`` in ``dtype``'s format, as notebooks 01, 03 and 08 price it: int8
    and int4 include one 2-byte scale and one 2-byte minimum per group of 64 numbers (a latent of 512 and a
    RoPE key of 64 are vectors of their own).
    """
    check_kv_heads(n_heads, n_kv_heads)
    element = element_of(dtype)
    return {
        "MHA": CacheRecipe(n_layers, n_heads, head_dim, element).cache_bytes(1),
        "GQA": CacheRecipe(n_layers, n_kv_heads, head_dim, element).cache_bytes(1),
        "MQA": CacheRecipe(n_layers, 1, head_dim, element).cache_bytes(1),
        "MLA": CacheRecipe(n_layers, element=element, d_c=d_c, d_rope=d_rope).cache_bytes(1),
    }


def versus_mha(ratio: float) -> str:
    """A readout cell for MHA's bytes / a kind's bytes: '16.0x smaller', 'the same' or '72.0x larger'.

    A ratio below 1 (an MLA latent wider than MHA's keys and values, possible with one small head) is said
    as 'larger', not as '0.0x smaller'.
    """
    if ratio == 1:
        return "the same"
    return f"{ratio:.1f}x smaller" if ratio > 1 else f"{1 / ratio:.1f}x larger"


def as_gqa_kv_heads(n: float) -> str:
    """MLA's cache as a number of GQA KV heads: '1 KV head', '3 KV heads', '2.25 KV heads'."""
    return plural(int(n), "KV head") if n == int(n) else f"{n:.2f} KV heads"


class MLACacheComparison(widgets.VBox):
    """Controls ``.n_layers .n_heads .n_kv_heads .head_dim .d_c .d_rope .dtype .seq_len``; ``.readout``; ``.image``."""

    def __init__(self, **values):
        unknown = set(values) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(sorted(unknown))} (valid: {', '.join(DEFAULTS)})")
        v = DEFAULTS | values
        for name in ("n_layers", "n_heads", "head_dim", "d_c"):
            check_positive_int(name, v[name])
        for name in SLIDER_RANGES:
            check_slider_value(name, v[name])
        check_kv_heads(v["n_heads"], v["n_kv_heads"])
        element_of(v["dtype"])
        if v["seq_len"] not in TOKEN_CHOICES:
            raise ValueError(f"seq_len={v['seq_len']!r} is not offered (valid: {', '.join(map(str, TOKEN_CHOICES))})")
        self._syncing = Syncing()  # set while the KV heads follow the query heads
        slider = dict(continuous_update=False, style={"description_width": "185px"},  # labels in full
                      layout=widgets.Layout(width="455px"))
        r = SLIDER_RANGES

        def int_slider(name: str, description: str):
            return StrictIntSlider(v[name], *r[name], description=description, name=name, **slider)

        self.n_layers = int_slider("n_layers", "layers")
        self.n_heads = int_slider("n_heads", "query heads")
        self.n_kv_heads = KVHeadsSlider(v["n_heads"], v["n_kv_heads"], description="GQA KV heads (= groups)",
                                        **slider)
        self.head_dim = int_slider("head_dim", "head dim")
        self.d_c = int_slider("d_c", "MLA latent d_c")
        self.d_rope = int_slider("d_rope", "MLA RoPE key d_h^R")
        self.dtype = StrictDropdown(options=list(ELEMENT_BITS), value=v["dtype"], description="dtype", name="dtype",
                                    style=slider["style"])
        self.seq_len = StrictDropdown(options=[(f"{n:,}", n) for n in TOKEN_CHOICES], value=v["seq_len"],
                                      description="tokens (totals)", name="seq_len", style=slider["style"])
        self.readout = widgets.HTML()
        self.image = widgets.Image(format="png", layout=widgets.Layout(align_self="flex-start"))  # natural size
        self.last_update_s = float("nan")
        self._fig = Figure(figsize=(7.0, 3.8))
        self._build_chart()
        self.n_heads.observe(self._on_heads, names="value")
        for control in (self.n_layers, self.n_kv_heads, self.head_dim, self.d_c, self.d_rope, self.dtype,
                        self.seq_len):
            control.observe(lambda change: self._changed(), names="value")
        shape = widgets.VBox([self.n_layers, self.n_heads, self.n_kv_heads, self.head_dim])
        mla = widgets.VBox([self.d_c, self.d_rope, self.dtype, self.seq_len])
        # Two columns of sliders in a wide window, one under the other in a narrow one (rather than cut off).
        super().__init__([widgets.HBox([shape, mla], layout=widgets.Layout(flex_flow="row wrap")), self.readout,
                          self.image])
        self.update()

    def _on_heads(self, change) -> None:
        """Offer only divisors of the new head count; keep the KV-head count as close as possible."""
        with self._syncing:
            self.n_kv_heads.follow(change["new"])
        self.update()

    def _changed(self) -> None:
        if not self._syncing:
            self.update()

    def readout_values(self) -> dict:
        """What the readout and the chart show, as numbers (for tests)."""
        n_layers, n_heads, n_kv = self.n_layers.value, self.n_heads.value, self.n_kv_heads.value
        head_dim, d_c, d_rope = self.head_dim.value, self.d_c.value, self.d_rope.value
        per_token = cache_per_token(n_layers, n_heads, n_kv, head_dim, d_c, d_rope, self.dtype.value)
        return {
            "per_token": per_token,
            "totals": {k: b * self.seq_len.value for k, b in per_token.items()},
            "vs_mha": {k: per_token["MHA"] / b for k, b in per_token.items()},
            # MLA stores d_c + d_rope numbers a layer; GQA stores 2 * head_dim per KV head.
            "mla_as_gqa_kv_heads": (d_c + d_rope) / (2 * head_dim),
            "kv_choices": list(self.n_kv_heads.options),
        }

    def _labels(self) -> list[str]:
        h, kv = self.n_heads.value, self.n_kv_heads.value
        return [f"MHA\n{plural(h, 'KV head')}", f"GQA\n{plural(kv, 'KV head')}", "MQA\n1 KV head",
                f"MLA\nd_c {self.d_c.value} + d_h^R {self.d_rope.value}"]

    def _build_chart(self) -> None:
        """Make the axes, bars and labels once; updates only move them (a full relayout is slow)."""
        fig = self._fig
        ax = fig.add_axes((0.13, 0.2, 0.84, 0.68))
        self._bars = ax.bar(range(len(KINDS)), [1] * len(KINDS), color=[PALETTE[k] for k in KINDS])
        self._values = [ax.annotate("", (i, 1), ha="center", va="bottom", xytext=(0, 2),
                                    textcoords="offset points", fontsize=9) for i in range(len(KINDS))]
        # Bar names as plain texts under the axis (drawn at every update) rather than tick labels, whose change
        # would make the whole axis be laid out again.
        self._names = [ax.text(i, -0.03, "", transform=ax.get_xaxis_transform(), ha="center", va="top",
                               fontsize=10) for i in range(len(KINDS))]
        ax.set_xticks(range(len(KINDS)), [""] * len(KINDS))
        ax.set_xlim(-0.6, len(KINDS) - 0.4)
        ax.set_yscale("log")
        # Plain "10 KB" tick labels: readable, and much faster to draw than mathtext powers of ten.
        ax.yaxis.set_major_locator(LogLocator(base=10))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: auto_format_bytes(y, digits=0)))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("cache per token (log scale; KB = 10^3 B)")
        ax.grid(axis="x", visible=False)
        self._title = ax.set_title(" ", fontsize=10)
        self._ax = ax
        self._blit = BlitFigure(fig, [*self._bars, *self._values, *self._names, self._title])

    def _draw(self, per_token: dict[str, int]) -> bytes:
        ax = self._ax
        values = [per_token[k] for k in KINDS]
        for bar, text, value in zip(self._bars, self._values, values, strict=True):
            bar.set_height(value)
            text.xy = (bar.get_x() + bar.get_width() / 2, value)
            text.set_text(auto_format_bytes(value))
        for text, label in zip(self._names, self._labels(), strict=True):
            text.set_text(label)
        # Whole decades as limits: the axis (the slow part to draw) changes only when a bar crosses a decade.
        limits = (10.0 ** math.floor(math.log10(min(values) / 3)), 10.0 ** math.ceil(math.log10(max(values) * 4)))
        ax.set_ylim(*limits)
        self._title.set_text(f"Cache one token adds: {plural(self.n_layers.value, 'layer')}, "
                             f"{plural(self.n_heads.value, 'query head')}, head dim {self.head_dim.value}, "
                             f"{self.dtype.value}, batch 1")
        return self._blit.render(limits)

    def update(self) -> None:
        """Recompute the readout and redraw the chart from the controls' current values."""
        start = time.perf_counter()
        v = self.readout_values()
        per, tot, n = v["per_token"], v["totals"], self.seq_len.value
        rows = "".join(
            f"<tr><td style='color:{PALETTE[k]}'><b>{k}</b></td><td>{per[k]:,} B</td>"
            f"<td>{auto_format_bytes(tot[k])} = {auto_format_bytes(tot[k], binary=True)}</td>"
            f"<td>{versus_mha(v['vs_mha'][k])}</td></tr>" for k in KINDS)
        rope = (f"the latent ({self.d_c.value:,}) and the RoPE key ({self.d_rope.value:,})" if self.d_rope.value
                else f"the latent ({self.d_c.value:,}) and no RoPE key")
        self.readout.value = (
            "<table><tr><th>kind</th><th>per token</th>"
            f"<th>at {n:,} tokens (GB = 10^9 B, GiB = 2^30 B)</th><th>against MHA</th></tr>"
            f"{rows}</table>"
            f"MLA caches {plural(self.d_c.value + self.d_rope.value, 'number')} per layer, {rope}: as many as "
            f"GQA with <b>{as_gqa_kv_heads(v['mla_as_gqa_kv_heads'])}</b> of dim {self.head_dim.value}. "
            f"KV heads offered: divisors of {self.n_heads.value}. "
            f"Number format: {element_of(self.dtype.value).describe('numbers of each cached vector')}.")
        self.image.value = self._draw(per)
        self.last_update_s = time.perf_counter() - start


def mla_cache_comparison(**values) -> MLACacheComparison:
    """Build notebook 07's comparison; start it from any of ``DEFAULTS`` (DeepSeek-V3's shape by default)."""
    return MLACacheComparison(**values)
