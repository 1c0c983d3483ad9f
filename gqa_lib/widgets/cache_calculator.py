"""The KV-cache calculator of notebook 01: pick a model or a shape, see what its cache costs, as built.

``kv_cache_calculator(preset="Llama-3 8B", **settings)`` returns a :class:`KVCacheCalculator` (an
``ipywidgets.VBox``). Pass ``preset="custom"`` (or ``None``) and any of the settings below to start
from a shape of your own, e.g. ``kv_cache_calculator("custom", n_layers=24, n_heads=16, n_kv_heads=4)``;
settings given with a model preset change that model (the dropdown then shows "custom" if the shape
changed). Its controls are attributes, so code and tests can drive it by setting ``.value``; a value
a control does not offer is refused with the valid range or values (nothing is clamped silently):

- ``.preset``: Dropdown of every model in ``data/models.json`` plus ``"custom"``. Choosing a model
  sets every shape control to the model as built: heads or MLA latent, sliding-window layers and
  released context. Moving a shape control away from the chosen model switches it to ``"custom"``.
- ``.n_layers``, ``.n_heads`` (query heads), ``.head_dim``: IntSliders.
- ``.n_kv_heads``: SelectionSlider whose options are always the divisors of ``.n_heads.value``;
  when the query heads change it keeps the nearest valid value (MHA stays MHA).
- ``.cache_kind``: Dropdown, ``"kv"`` (K and V per KV head) or ``"mla"`` (MLA's latent of ``.d_c``
  numbers plus a RoPE key of ``.d_rope`` numbers per token and layer, DeepSeek-V2/V3).
- ``.context``: SelectionSlider of tokens, powers of 2 from 128 to 1,048,576 (plus a preset's
  context if that is not a power of 2). ``.batch``: IntSlider.
- ``.dtype``: Dropdown of number formats (``gqa_lib.core.cache_math.ELEMENT_BITS``); int8 and int4 count
  what they store beside the integers (``gqa_lib.core.cache_math.ElementType``, the same model notebooks 03
  and 08 price them with): one 2-byte scale and one 2-byte minimum per ``.scale_group`` channels (default
  64; 0: one per vector, i.e. per token, per KV head, per K and per V).
- ``.window``: Dropdown, 0 (no local layers) or the tokens a local layer keeps; ``.pattern``:
  which layers are local, a string of 'L'/'G' repeated from layer 0 (Gemma 3: "LLLLLG").
- ``.share_every``: Dropdown, adjacent layers that share one layer's K/V (1: no sharing). It offers only
  groups no larger than ``.n_layers.value``; when the layers drop below the chosen group it takes the
  largest group still offered, and a larger value set from code is refused naming the layer count.

Outputs: ``.readout`` (HTML), ``.plot`` (an Image: cache against context, log-log, as built, all
layers global and MHA of the same shape, with lines for common GPU memory sizes and a marker at the
chosen context), and ``readout_values()``, a dict of the numbers shown. Every number comes from
``gqa_lib.core.cache_math.CacheRecipe``.

Why one module of about 600 lines: fifteen controls that constrain each other (a preset sets them all,
KV heads follow query heads, MLA greys out KV heads, quantized types enable their scale groups) and one
readout and plot of all of them; every number still comes from ``core.cache_math``.

Readout format (stable; tests parse it). The text of ``.readout.value`` with tags removed has these
seven lines, in this order (Llama-3 8B shown; line 6 ends ``MHA would cache 4.29 GB (4.00 GiB)``)::

    Kind: GQA (32 query heads, 8 KV heads (= 8 groups), group size 4)
    Cache: 1.07 GB (1.00 GiB) = 1,073,741,824 bytes, as built
    All layers global: the same (no local layers)
    Layers: 32 global, 0 local; all 32 layers store K/V (no sharing)
    Per token: 131,072 bytes (128.00 KiB) over all 32 layers, one sequence
    Reduction against MHA of the same shape: 4.00x, all from KV heads (32 query heads / 8 KV heads); MHA ...
    Assumptions: batch 1, 8,192 tokens, bf16 = 2 bytes per number; GB = 10^9 bytes, GiB = 2^30 bytes

With local layers line 3 reads ``All layers global: <size> = <n> bytes, an upper bound (<r>x the
cache as built)`` and line 4 ``Layers: 4 global, 22 local keeping the last 512 tokens; ...``. With
sharing, line 4 ends ``13 of 26 layers store K/V (2 adjacent layers share one)`` (MLA: ``store a
latent``). "Per token" is what one more token adds before any window fills, over the storing layers.
MHA of the same shape has every query head's own K and V in every layer, all global, no sharing, in
the same number format. Line 6 splits the reduction into its two causes, each computed from bytes:
the KV heads (MHA's cache over the same model with all layers global and unshared: n_heads /
n_kv_heads) and, where there are any, the local layers and K/V sharing (that over the cache as
built), e.g. for Gemma 3 1B ``23.94x = 4.00x from KV heads (4 query heads / 1 KV head) × 5.99x from
local layers; MHA would cache ...``; for MLA the first factor is ``from the latent instead of per-head
K and V``. For int8/int4 the assumptions read ``int8 = 1 byte per number + one 2-byte
scale and one 2-byte minimum per 64 channels`` (or ``per vector (...)``). For MLA line 1 reads
``Kind: MLA (128 query heads; a latent of 512 + a RoPE key of 64 numbers per token and layer)``.
Counts agree with their nouns at 1 ("1 of 2 layers stores K/V", "over the one storing layer").

Sizes: the first on a "Cache:" line is in the largest decimal unit (B, KB, MB, GB, TB; powers of
1000) that keeps the number at or above 1, the second in the binary unit (B, KiB, MiB, GiB, TiB;
powers of 1024), both with two decimals and comma thousands separators; then the exact byte count.
"""

from __future__ import annotations

import contextlib
import html
import math
import time

import ipywidgets as widgets

from gqa_lib.core.cache_math import (
    ELEMENT_BITS,
    GIB,
    QUANT_GROUP,
    QUANTIZED,
    CacheRecipe,
    ElementType,
    auto_format_bytes,
)
from gqa_lib.core.checks import closest_divisor
from gqa_lib.core.layout import attention_kind
from gqa_lib.models.catalog import ModelSpec, get_model, load_models
from gqa_lib.pictures.style import GPU_MEMORY_GIB, NEUTRAL, PALETTE
from gqa_lib.widgets.blit import BlitFigure
from gqa_lib.widgets.controls import CUSTOM, KVHeadsSlider, StrictDropdown, StrictIntSlider, StrictSelectionSlider
from gqa_lib.widgets.text import plural

CONTEXT_POWERS = [2**k for k in range(7, 21)]  # 128 .. 1,048,576 tokens
MAX_LAYERS, MAX_HEADS, MAX_HEAD_DIM, MAX_BATCH = 128, 128, 256, 256
MAX_LATENT, MAX_ROPE = 2048, 256
WINDOWS = [2**k for k in range(7, 18)]  # 128 .. 131,072 tokens
PATTERNS = {"L": "every layer local", "LLLLLG": "5 local : 1 global", "LLLG": "3 local : 1 global",
            "LG": "1 local : 1 global"}
SHARING = {1: "none (each layer)", 2: "pairs of layers", 3: "3 adjacent layers", 4: "4 adjacent layers"}
# Channels that share one scale and one minimum (0: the whole vector); QUANT_GROUP (64) is ElementType's default.
# One 2-byte scale and one 2-byte minimum per group: the control names both, as the readout does.
SCALE_GROUPS = {0: "per vector", 128: "per 128 channels", 64: "per 64 channels", 32: "per 32 channels"}
SETTINGS = ("n_layers", "n_heads", "n_kv_heads", "head_dim", "cache_kind", "d_c", "d_rope", "context", "batch",
            "dtype", "scale_group", "window", "pattern", "share_every")


def cache_presets() -> dict[str, ModelSpec]:
    """Models the calculator offers: every model in ``data/`` (MLA models with their latent)."""
    return load_models()


def nearest_valid_kv_heads(n_heads: int, wanted: int, keep_mha: bool = False) -> int:
    """The divisor of ``n_heads`` closest to ``wanted`` (ties go to the smaller); ``keep_mha`` returns ``n_heads``."""
    return n_heads if keep_mha else closest_divisor(n_heads, wanted)


def share_options(n_layers: int) -> list[tuple[str, int]]:
    """(label, layers) pairs for the sharing dropdown: only groups a model of ``n_layers`` layers can have."""
    return [(t, k) for k, t in SHARING.items() if k <= n_layers]


def _share_why(n_layers: int) -> str:
    return f"for {plural(n_layers, 'layer')} (a group of layers sharing K/V is at most the number of layers)"


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
    """Controls for a model's cache as built (heads or latent, local layers, sharing, number format); readouts."""

    def __init__(self, preset: str | None = "Llama-3 8B", **settings):
        self._presets = cache_presets()
        spec = self._check_preset(preset)
        unknown = [k for k in settings if k not in SETTINGS]
        if unknown:
            raise ValueError(f"setting(s) {', '.join(map(repr, unknown))} not known (valid: {', '.join(SETTINGS)})")
        self._holding = 0  # > 0 while several controls are set at once: update once at the end
        self.last_update_seconds = 0.0
        self._build_controls()
        self._build_figure()
        column = widgets.Layout(width="400px")
        super().__init__(children=[
            widgets.HBox([self.preset, self.source]),
            widgets.HBox([
                widgets.VBox([self.n_layers, self.n_heads, self.n_kv_heads, self.head_dim, self.cache_kind,
                              self.d_c, self.d_rope], layout=column),
                widgets.VBox([self.context, self.batch, self.dtype, self.scale_group, self.window, self.pattern,
                              self.share_every], layout=column)]),
            self.readout, self.plot,
        ])
        if spec is not None:
            self.apply_preset(spec.name)
        if settings:
            self.set(**settings)
        elif spec is None:
            self.update()

    # ---- building -----------------------------------------------------------------------
    def _check_preset(self, preset) -> ModelSpec | None:
        if preset is None or preset == CUSTOM:
            return None
        if preset == "(custom)":
            raise ValueError(f"preset={preset!r}: ask for a shape of your own with preset={CUSTOM!r} and the "
                             f"settings you want, e.g. kv_cache_calculator({CUSTOM!r}, n_layers=24, n_heads=16, "
                             f"n_kv_heads=4) (settings: {', '.join(SETTINGS)})")
        return get_model(preset)  # unknown names raise UnknownModelError naming the closest ones

    def _build_controls(self):
        style = {"description_width": "130px"}
        wide = widgets.Layout(width="390px")
        dd = dict(style=style, layout=wide)
        self.preset = StrictDropdown(name="preset", options=[*self._presets, CUSTOM], value=CUSTOM,
                                     description="model", **dd)
        self.source = widgets.HTML(layout=widgets.Layout(width="600px"))
        self.n_layers = StrictIntSlider(name="n_layers", value=32, min=1, max=MAX_LAYERS, description="layers", **dd)
        self.n_heads = StrictIntSlider(name="n_heads", value=32, min=1, max=MAX_HEADS, description="query heads", **dd)
        # continuous_update=False on the sliders whose options change: otherwise the browser pushes its old
        # slider position back to the kernel after the options are rebuilt (seen in the browser tests).
        self.n_kv_heads = KVHeadsSlider(32, 8, description="KV heads (groups)", continuous_update=False, **dd)
        self.head_dim = StrictIntSlider(name="head_dim", value=128, min=8, max=MAX_HEAD_DIM, step=8,
                                        description="head dim", **dd)
        self.cache_kind = StrictDropdown(name="cache_kind", options=[("K and V per KV head", "kv"),
                                                                     ("MLA latent + RoPE key", "mla")],
                                         value="kv", description="cache stores", **dd)
        self.d_c = StrictIntSlider(name="d_c", value=512, min=64, max=MAX_LATENT, step=64, description="MLA latent",
                                   **dd)
        self.d_rope = StrictIntSlider(name="d_rope", value=64, min=0, max=MAX_ROPE, step=16,
                                      description="MLA RoPE key", **dd)
        self.context = StrictSelectionSlider(name="context", options=context_options(), value=8192,
                                             description="context (tokens)", continuous_update=False, **dd)
        self.batch = StrictIntSlider(name="batch", value=1, min=1, max=MAX_BATCH, description="batch", **dd)
        self.dtype = StrictDropdown(name="dtype", options=[(_dtype_label(n), n) for n in ELEMENT_BITS], value="bf16",
                                    description="dtype", **dd)
        self.scale_group = StrictDropdown(name="scale_group", options=[(t, g) for g, t in SCALE_GROUPS.items()],
                                          value=QUANT_GROUP, description="scale + min", **dd)
        self.window = StrictDropdown(name="window", options=window_options(), value=0,
                                     description="sliding window", **dd)
        self.pattern = StrictDropdown(name="pattern", options=[(t, p) for p, t in PATTERNS.items()], value="L",
                                      description="local layers", **dd)
        self.share_every = StrictDropdown(name="share_every", options=share_options(32), value=1,
                                          why=_share_why(32), description="K/V shared by", **dd)
        self.readout = widgets.HTML()
        self.plot = widgets.Image(format="png", layout=widgets.Layout(align_self="flex-start"))  # natural size
        self.preset.observe(self._on_preset, "value")
        self.n_heads.observe(self._on_n_heads, "value")
        self.n_layers.observe(self._on_n_layers, "value")
        for control in self._shape_controls() + (self.context, self.batch, self.dtype, self.scale_group):
            if control not in (self.n_heads, self.n_layers):
                control.observe(self._on_change, "value")

    def _shape_controls(self):
        return (self.n_layers, self.n_heads, self.n_kv_heads, self.head_dim, self.cache_kind, self.d_c, self.d_rope,
                self.window, self.pattern, self.share_every)

    def _build_figure(self):
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

        # Fixed margins and few ticks: a layout engine and minor log ticks would triple the draw time.
        self._fig = Figure(figsize=(7.6, 3.9), dpi=90)
        self._fig.subplots_adjust(left=0.125, right=0.98, bottom=0.14, top=0.91)
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
        (self._global_line,) = ax.plot([], [], color="black", ls=(0, (1, 1.5)), lw=1.4, label="all layers global")
        (self._line,) = ax.plot([], [], lw=2.2, label="this cache, as built")
        (self._marker,) = ax.plot([], [], "o", ms=8, mec="black", label="chosen context")
        self._legend = ax.legend(loc="lower right", fontsize=8)  # made once; only its colours and texts change
        # A fixed title: the shape is in the readout above, and every text drawn per update costs time.
        self._fig.text(0.5, 0.985, "KV cache against context, for the shape, batch and number format chosen above",
                       ha="center", va="top", fontsize=10)
        # Axes, ticks and GPU lines (the slow part: text) are drawn once per y range and kept; an update draws
        # only the curves, marker and legend over them.
        self._blit = BlitFigure(self._fig, [self._mha_line, self._global_line, self._line, self._marker, self._legend])

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

    def _on_n_layers(self, change):
        if self._holding:
            return
        self._set_share_options(change["new"])
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
            self.n_kv_heads.follow(n_heads, nearest_valid_kv_heads(n_heads, wanted, keep_mha))

    def _set_share_options(self, n_layers: int):
        """Offer only sharing groups of at most ``n_layers``; keep the value, or take the largest group offered."""
        options = share_options(n_layers)
        values = [k for _, k in options]
        keep = self.share_every.value if self.share_every.value in values else values[-1]
        with self._hold(), self.share_every.hold_sync():
            if list(self.share_every._options_values) != values:
                self.share_every.options = options  # resets the value: hence the hold, and the value set after
            self.share_every.why = _share_why(n_layers)
            self.share_every.value = keep

    def _shape(self) -> tuple:
        mla = self.cache_kind.value == "mla"
        return (self.n_layers.value, self.n_heads.value, None if mla else self.n_kv_heads.value, self.head_dim.value,
                (self.d_c.value, self.d_rope.value) if mla else None,
                (self.window.value, self.pattern.value) if self.window.value else None, self.share_every.value)

    @staticmethod
    def _spec_shape(spec: ModelSpec) -> tuple:
        sw = spec.sliding_window
        return (spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.head_dim,
                (spec.mla.d_c, spec.mla.d_rope) if spec.mla else None, (sw.window, sw.pattern) if sw else None, 1)

    def _sync_preset(self):
        """Show "custom" once the shape no longer is the chosen model's (context, batch, number format may vary)."""
        name = self.preset.value
        if name != CUSTOM and self._shape() != self._spec_shape(self._presets[name]):
            with self._hold():
                self.preset.value = CUSTOM
        self._enable()

    def _enable(self):
        mla, quantized = self.cache_kind.value == "mla", self.dtype.value in QUANTIZED
        self.n_kv_heads.disabled = mla
        self.d_c.disabled = self.d_rope.disabled = not mla
        self.scale_group.disabled = not quantized
        self.pattern.disabled = not self.window.value

    def apply_preset(self, name: str):
        """Set every shape control to model ``name`` as built and its released context, then update once."""
        spec = self._check_preset(name)
        if spec is None:
            return
        with self._hold():
            self.preset.value = spec.name
            self.n_layers.value = spec.n_layers
            self._set_share_options(spec.n_layers)
            self.n_heads.value = spec.n_heads
            self.head_dim.value = spec.head_dim
            self.cache_kind.value = "mla" if spec.mla else "kv"
            if spec.mla:
                self.d_c.value, self.d_rope.value = spec.mla.d_c, spec.mla.d_rope
            # MLA has no KV heads: the (disabled) slider still offers the divisors, at MHA's value
            self._set_kv_options(spec.n_heads, spec.n_kv_heads or spec.n_heads)
            sw = spec.sliding_window
            if sw is not None and sw.window not in self.window._options_values:
                self.window.options = window_options(sw.window)
            if sw is not None and sw.pattern not in self.pattern._options_values:
                self.pattern.options = [*self.pattern.options, (f"pattern {sw.pattern}", sw.pattern)]
            self.window.value = sw.window if sw else 0
            if sw is not None:
                self.pattern.value = sw.pattern
            self.share_every.value = 1
            if spec.context not in self.context._options_values:
                self.context.options = context_options(spec.context)
            self.context.value = spec.context
        self._enable()
        self.update()

    def set(self, **settings):
        """Set several controls at once (names as in the module docstring), checked, then update once."""
        unknown = [k for k in settings if k not in SETTINGS]
        if unknown:
            raise ValueError(f"setting(s) {', '.join(map(repr, unknown))} not known (valid: {', '.join(SETTINGS)})")
        with self._hold():
            if "n_layers" in settings:
                self.n_layers.value = settings["n_layers"]
                self._set_share_options(self.n_layers.value)  # a given share_every is checked against it next
            if "n_heads" in settings:
                self.n_heads.value = settings["n_heads"]
                self._set_kv_options(self.n_heads.value, self.n_kv_heads.value)  # a given n_kv_heads is checked next
            for name in SETTINGS:
                if name in settings and name not in ("n_layers", "n_heads"):
                    getattr(self, name).value = settings[name]
            self._sync_preset()
        self.update()

    # ---- numbers ------------------------------------------------------------------------
    def recipe(self) -> CacheRecipe:
        """The cache the controls describe, as a pure :class:`~gqa_lib.core.cache_math.CacheRecipe`."""
        n_layers = self.n_layers.value
        window = self.window.value or None
        pattern = self.pattern.value[:n_layers] if window else "G"  # a pattern repeats from layer 0
        if window and "L" not in pattern:
            pattern = "L" + pattern[1:]
        group = self.scale_group.value or None
        quantized = self.dtype.value in QUANTIZED
        element = ElementType(self.dtype.value, group) if quantized else ElementType(self.dtype.value)
        share = self.share_every.value  # offered only up to n_layers: nothing to clamp
        if self.cache_kind.value == "mla":
            return CacheRecipe(n_layers, element=element, pattern=pattern, window=window, share_every=share,
                               d_c=self.d_c.value, d_rope=self.d_rope.value)
        return CacheRecipe(n_layers, self.n_kv_heads.value, self.head_dim.value, element, pattern, window, share)

    def readout_values(self) -> dict:
        """The numbers the readout shows, computed with ``gqa_lib.core.cache_math.CacheRecipe``."""
        r = self.recipe()
        n_heads, tokens, batch = self.n_heads.value, self.context.value, self.batch.value
        mha = CacheRecipe(r.n_layers, n_heads, self.head_dim.value, r.element)
        kind = "MLA" if r.is_mla else attention_kind(n_heads, r.n_kv_heads)
        n_bytes = r.cache_bytes(tokens, batch)
        # the same heads or latent with every layer global and none shared: splits the reduction into its causes
        plain = CacheRecipe(r.n_layers, element=r.element, d_c=r.d_c, d_rope=r.d_rope) if r.is_mla else \
            CacheRecipe(r.n_layers, r.n_kv_heads, self.head_dim.value, r.element)
        plain_bytes = plain.cache_bytes(tokens, batch)
        storing = sum(1 for t in r.tokens_per_layer(1) if t)
        return {
            "n_layers": r.n_layers, "n_heads": n_heads, "n_kv_heads": r.n_kv_heads, "head_dim": self.head_dim.value,
            "d_c": r.d_c, "d_rope": r.d_rope, "context": tokens, "batch": batch, "dtype": r.element.name,
            "element": r.element, "window": r.window, "pattern": r.pattern, "local_layers": r.local_layers(),
            "storing_layers": storing, "share_every": r.share_every, "kind": kind,
            "group_size": None if r.is_mla else n_heads // r.n_kv_heads,
            "bytes": n_bytes, "all_global_bytes": r.cache_bytes(tokens, batch, windowed=False),
            "bytes_per_token": r.cache_bytes(1), "mha_bytes": mha.cache_bytes(tokens, batch),
            "reduction": mha.cache_bytes(tokens, batch) / n_bytes, "plain_bytes": plain_bytes,
            "heads_reduction": mha.cache_bytes(tokens, batch) / plain_bytes,  # n_heads / n_kv_heads for K and V
            "layers_reduction": plain_bytes / n_bytes,  # local layers and sharing; 1 without them
        }

    def readout_lines(self, v: dict | None = None) -> list[str]:
        """The seven readout lines as plain text (the format is in the module docstring)."""
        v = self.readout_values() if v is None else v
        mla = v["kind"] == "MLA"
        if mla:
            rope = f" + a RoPE key of {v['d_rope']:,}" if v["d_rope"] else ""
            kind = (f"Kind: MLA ({plural(v['n_heads'], 'query head')}; a latent of {v['d_c']:,}{rope} numbers per "
                    f"token and layer{'' if v['d_rope'] else ', no RoPE key'})")
        else:
            kind = (f"Kind: {v['kind']} ({plural(v['n_heads'], 'query head')}, "
                    f"{plural(v['n_kv_heads'], 'KV head')} (= {plural(v['n_kv_heads'], 'group')}), "
                    f"group size {v['group_size']})")
        L, local, storing = v["n_layers"], v["local_layers"], v["storing_layers"]
        if local:
            ratio = v["all_global_bytes"] / v["bytes"]
            all_global = (f"All layers global: {_size(v['all_global_bytes'])} = {plural(v['all_global_bytes'], 'byte')}"
                          f", an upper bound ({ratio:.2f}x the cache as built)")
            if ratio == 1:
                all_global = f"All layers global: the same ({plural(v['context'], 'token')} fit in the window)"
            layers = f"Layers: {L - local:,} global, {local:,} local keeping the last {plural(v['window'], 'token')}"
        else:
            all_global = "All layers global: the same (no local layers)"
            layers = f"Layers: {L:,} global, 0 local"
        what = "a latent" if mla else "K/V"
        if v["share_every"] > 1:
            layers += (f"; {storing:,} of {L:,} layers {'stores' if storing == 1 else 'store'} {what} "
                       f"({v['share_every']} adjacent layers share one)")
        else:
            layers += f"; all {L:,} layers store {what} (no sharing)" if L > 1 else f"; the layer stores {what}"
        over = f"all {L:,} layers" if storing == L else f"the {storing:,} storing layers"
        if storing == 1:
            over = "the one layer" if L == 1 else "the one storing layer"
        e = v["element"]
        if v["dtype"] in QUANTIZED:
            per_number = "1 byte" if e.bits == 8 else f"{e.bits / 8:g} bytes"
            number = f"{v['dtype']} = {per_number} per number + {_stored(e, v)}"
        else:
            number = f"{v['dtype']} = {plural(e.bits // 8, 'byte')} per number"
        return [
            kind,
            f"Cache: {_size(v['bytes'])} = {plural(v['bytes'], 'byte')}, as built",
            all_global,
            layers,
            f"Per token: {plural(v['bytes_per_token'], 'byte')} "
            f"({auto_format_bytes(v['bytes_per_token'], binary=True)}) over {over}, one sequence",
            _reduction_line(v),
            f"Assumptions: batch {v['batch']:,}, {plural(v['context'], 'token')}, {number}; GB = 10^9 bytes, "
            "GiB = 2^30 bytes",
        ]

    # ---- drawing ------------------------------------------------------------------------
    def update(self):
        """Recompute the readout and redraw the plot from the current control values."""
        start = time.perf_counter()
        v = self.readout_values()
        lines = [html.escape(line) for line in self.readout_lines(v)]
        lines[1] = f"<b>{lines[1]}</b>"
        self.readout.value = "<div style='line-height:1.5'>" + "<br>".join(lines) + "</div>"
        name = self.preset.value
        if name == CUSTOM:
            self.source.value = "<small>custom shape</small>"
        else:
            spec = self._presets[name]
            sw = spec.sliding_window
            window = f"; sliding window: {html.escape(sw.source)}" if sw else ""
            self.source.value = (f"<small>{html.escape(spec.attention)}, released context {spec.context:,} tokens; "
                                 f"source: {html.escape(spec.source)}{window}</small>")
        self._draw(v)
        self.last_update_seconds = time.perf_counter() - start

    def _draw(self, v: dict):
        r = self.recipe()
        xs = CONTEXT_POWERS
        scale = v["batch"] / GIB
        ys = [r.cache_bytes(x) * scale for x in xs]
        global_ys = [r.cache_bytes(x, windowed=False) * scale for x in xs]
        mha_ys = [v["mha_bytes"] / v["context"] * x / v["batch"] * scale for x in xs]
        colour = PALETTE[v["kind"]]
        self._line.set_data(xs, ys)
        self._line.set_color(colour)
        handles, texts = self._legend.legend_handles, self._legend.texts
        handles[2].set_color(colour)
        handles[3].set_color(colour)
        handles[3].set_markeredgecolor("black")
        texts[2].set_text(f"this cache, as built ({v['kind']})")
        texts[0].set_text("MHA of the same shape" + (" (= this shape)" if v["kind"] == "MHA" else ""))
        texts[1].set_text("all layers global" + ("" if v["local_layers"] else " (= as built)"))
        self._mha_line.set_data(xs, mha_ys)
        self._mha_line.set_visible(not (v["kind"] == "MHA" and v["share_every"] == 1 and not v["local_layers"]))
        self._global_line.set_data(xs, global_ys)
        self._global_line.set_visible(bool(v["local_layers"]))
        self._marker.set_data([v["context"]], [v["bytes"] / GIB])
        self._marker.set_color(colour)
        self._marker.set_markeredgecolor("black")
        # y range in whole decades, so that most control moves keep it and can reuse the drawn background
        low = 10.0 ** math.floor(math.log10(min(ys[0], 1.0) / 3))
        high = 10.0 ** math.ceil(math.log10(max(mha_ys[-1], global_ys[-1], max(GPU_MEMORY_GIB.values())) * 3))
        self._render((low, high))

    def _render(self, ylim: tuple[float, float]):
        """Draw the figure into ``.plot`` as PNG, over the background kept for the y range ``ylim`` (in whole
        decades, so that most control moves reuse it)."""
        if self._ax.get_ylim() != ylim:
            self._ax.set_ylim(*ylim)
        self.plot.value = self._blit.render(ylim)


def _size(n: int) -> str:
    return f"{auto_format_bytes(n)} ({auto_format_bytes(n, binary=True)})"


def _stored(e: ElementType, v: dict) -> str:
    """What an integer format stores beside its integers; an MLA cache has no KV heads, K or V to name."""
    if v["kind"] != "MLA" or e.scale_group is not None:
        return e.stored()
    minimum = f" and one {e.scale_bytes}-byte minimum" if e.minimum else ""
    vectors = "the latent and the RoPE key" if v["d_rope"] else "the latent"
    return f"one {e.scale_bytes}-byte scale{minimum} per vector (per token and layer: {vectors})"


def _reduction_line(v: dict) -> str:
    """Line 6: the reduction against MHA of the same shape, and the factor each cause gives (each from bytes)."""
    total = v["reduction"]
    if v["kind"] == "MLA":
        causes = [(v["heads_reduction"], "the latent instead of per-head K and V")]
    else:
        causes = [(v["heads_reduction"], f"KV heads ({plural(v['n_heads'], 'query head')} / "
                                         f"{plural(v['n_kv_heads'], 'KV head')})")]
    levers = [name for name, used in (("local layers", v["local_layers"]), ("K/V sharing", v["share_every"] > 1))
              if used]
    if levers:
        causes.append((v["layers_reduction"], " and ".join(levers)))
    larger = "" if total >= 1 else f" (the cache is {1 / total:.2f}x larger)"
    if len(causes) == 1:
        how = f", all from {causes[0][1]}"
    else:
        how = " = " + " × ".join(f"{factor:.2f}x from {cause}" for factor, cause in causes)
    mha = _size(v["mha_bytes"])
    return f"Reduction against MHA of the same shape: {total:.2f}x{larger}{how}; MHA would cache {mha}"


def _dtype_label(name: str) -> str:
    bits = ELEMENT_BITS[name]
    size = f"{bits // 8} byte{'s' if bits > 8 else ''}" if bits >= 8 else f"{bits / 8:g} byte"
    return f"{name} ({size}{' + scales' if name in QUANTIZED else ''})"


def window_options(extra: int | None = None) -> list[tuple[str, int]]:
    """(label, tokens) pairs for the window dropdown: 0 = no local layers, then powers of 2, plus ``extra``."""
    values = sorted(set(WINDOWS) | ({extra} if extra else set()))
    return [("none (all global)", 0)] + [(f"{w:,} tokens", w) for w in values]


def kv_cache_calculator(preset: str | None = "Llama-3 8B", **settings) -> KVCacheCalculator:
    """The KV-cache calculator, starting at model ``preset`` (a name in ``data/models.json``, or "custom").

    For a shape of your own pass ``preset="custom"`` and the settings, e.g.
    ``kv_cache_calculator("custom", n_layers=24, n_heads=16, n_kv_heads=4, window=4096, pattern="LG")``;
    the setting names are in the module docstring (``SETTINGS``). Unknown names raise
    ``UnknownModelError`` suggesting the closest; a value a control does not offer raises
    ``ValueError`` giving the valid range or values.
    """
    return KVCacheCalculator(preset, **settings)
