"""Notebook 02's widget: type a sentence, pick a layer and a head of SmolLM2, see where that head looks.

One forward pass of SmolLM2 per sentence (``smollm.capture_layers``) gives the attention maps of all
30 layers at once; they are kept, so moving the layer or head slider only redraws. The readout gives
the layer's head diversity (``gqa_lib.diversity.head_diversity``), computed once per sentence and layer.
"""

from __future__ import annotations

import io
import time
import warnings
from collections import OrderedDict

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure

from .. import smollm
from ..diversity import head_diversity
from ..heatmaps import token_labels
from ..models import get_model
from ..plots import HEATMAP_CMAP

DEFAULT_TEXT = "Alice gave Bob the book, and then he thanked her for it."
MAX_TOKENS = 32  # more labels than this do not fit on the axes
_SPEC = get_model("SmolLM2-135M")  # 30 layers, 9 query heads, 3 KV heads: known before the model loads


def _check_index(name: str, value, n: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
        raise ValueError(f"{name}={value!r} must be an integer in 0..{n - 1}")
    return value


def _check_text(text) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text={text!r} must be a non-empty string")
    return text


def all_layer_maps(text: str, max_tokens: int = MAX_TOKENS):
    """(tokens, weights): SmolLM2's attention maps for ``text`` in every layer, from one forward pass.

    weights: (n_layers, n_heads, seq, seq), from ``gqa_lib.smollm.capture_layers``. Only the first
    ``max_tokens`` tokens are kept: with a causal mask, the maps of a text's first tokens do not depend
    on what follows, so the corner shown is exactly what the model computes for them.
    """
    captures = smollm.capture_layers(_check_text(text))
    n = min(len(captures[0].tokens), max_tokens)
    weights = torch.stack([c.weights[:, :n, :n] for c in captures])  # (n_layers, n_heads, seq, seq)
    return captures[0].tokens[:n], weights


class MapCanvas:
    """A figure of ``nrows x ncols`` attention maps that is built once and then only refilled.

    Rebuilding a matplotlib figure costs more than drawing it, so each update swaps the image data,
    the tick labels (only when the tokens change) and the titles, then renders a PNG.
    """

    def __init__(self, nrows: int, ncols: int, panel_inches: float):
        left, bottom, cbar = 1.0, 1.0, 0.9  # inches kept for token labels and the colour bar
        top = 0.5 if nrows == 1 else 0.8
        width, height = left + ncols * panel_inches + cbar, bottom + nrows * panel_inches + top
        self.fig = Figure(figsize=(width, height))
        self.fig.subplots_adjust(left=left / width, right=1 - cbar / width, bottom=bottom / height,
                                 top=1 - top / height, wspace=0.12, hspace=0.18)
        self.axes = list(self.fig.subplots(nrows, ncols, squeeze=False).ravel())
        self.images = [ax.imshow([[0.0]], cmap=HEATMAP_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
                       for ax in self.axes]
        cax = self.fig.add_axes([1 - 0.75 * cbar / width, bottom / height, 0.12 / width,
                                 nrows * panel_inches / height * 0.9])
        self.fig.colorbar(self.images[0], cax=cax, label="attention weight")
        self.ncols = ncols
        self._tokens = None

    def _set_tokens(self, tokens) -> None:
        labels = token_labels(tokens)
        n = len(labels)
        fs = 8 if n <= 16 else 6
        for k, ax in enumerate(self.axes):
            row, col = divmod(k, self.ncols)
            bottom_row = k + self.ncols >= len(self.axes)
            # Panels inside the grid get no ticks at all: tick layout is most of the drawing time.
            ax.set_xticks(range(n) if bottom_row else [], labels if bottom_row else [], rotation=90, fontsize=fs)
            ax.set_yticks(range(n) if col == 0 else [], labels if col == 0 else [], fontsize=fs)
            ax.tick_params(length=0)
            ax.grid(False)
            ax.set_xlabel("key token" if bottom_row else "")
            ax.set_ylabel("query token" if col == 0 else "")
        self._tokens = list(tokens)

    def draw(self, maps, tokens, titles, suptitle: str | None = None) -> bytes:
        """Show ``maps`` (n_panels, seq, seq) with ``tokens`` on the axes; return the PNG bytes."""
        if list(tokens) != self._tokens:
            self._set_tokens(tokens)
        n = len(tokens)
        for ax, im, m, title in zip(self.axes, self.images, maps, titles, strict=True):
            im.set_data(m.detach().numpy() if hasattr(m, "detach") else m)
            im.set_extent((-0.5, n - 0.5, n - 0.5, -0.5))
            ax.set_title(title, fontsize=9)
        if suptitle is not None:
            self.fig.suptitle(suptitle)
        buf = io.BytesIO()
        with warnings.catch_warnings():  # a typed emoji has no glyph in the default font; drawing goes on
            warnings.simplefilter("ignore", UserWarning)
            self.fig.savefig(buf, format="png", pil_kwargs={"compress_level": 1})  # fast to write, still small
        return buf.getvalue()


class HeadHeatmapExplorer(widgets.VBox):
    """Controls ``.text``, ``.layer``, ``.head``, ``.all_heads``; readout ``.readout``; picture ``.image``."""

    def __init__(self, text: str = DEFAULT_TEXT, layer: int = 0, head: int = 0, all_heads: bool = False):
        n_layers, n_heads = _SPEC.n_layers, _SPEC.n_heads
        _check_text(text)
        _check_index("layer", layer, n_layers)
        _check_index("head", head, n_heads)
        self.group_size = _SPEC.group_size
        self._maps: OrderedDict[str, tuple] = OrderedDict()  # text -> (tokens, weights), a few kept
        self._diversity: dict[tuple[str, int], float] = {}
        self.text = widgets.Text(value=text, description="sentence", continuous_update=False,
                                 layout=widgets.Layout(width="95%"))
        self.layer = widgets.IntSlider(value=layer, min=0, max=n_layers - 1, description="layer",
                                       continuous_update=False)
        self.head = widgets.IntSlider(value=head, min=0, max=n_heads - 1, description="query head",
                                      continuous_update=False)
        self.all_heads = widgets.Checkbox(value=all_heads, description=f"show all {n_heads} heads")
        self.readout = widgets.HTML()
        # flex-start: keep the picture at its own size; a VBox would otherwise stretch it to the full width
        self.image = widgets.Image(format="png", layout=widgets.Layout(align_self="flex-start"))
        self.last_update_s = float("nan")
        self._canvas_one = MapCanvas(1, 1, panel_inches=3.6)
        self._canvas_all = MapCanvas(n_heads // 3, 3, panel_inches=2.4)
        for control in (self.text, self.layer, self.head, self.all_heads):
            control.observe(lambda change: self.update(), names="value")
        controls = widgets.HBox([self.layer, self.head, self.all_heads])
        super().__init__([self.text, controls, self.readout, self.image])
        self.update()

    def _layer_maps(self, text: str):
        if text not in self._maps:
            self._maps[text] = all_layer_maps(text)
            while len(self._maps) > 4:
                self._maps.popitem(last=False)
        self._maps.move_to_end(text)
        return self._maps[text]

    def diversity(self, text: str, layer: int) -> float:
        """Head diversity of ``layer`` for ``text`` (computed once, then remembered)."""
        key = (text, layer)
        if key not in self._diversity:
            self._diversity[key] = head_diversity(self._layer_maps(text)[1][layer])
        return self._diversity[key]

    def readout_values(self) -> dict:
        """What the readout says, as numbers (for tests)."""
        text, layer, head = self.text.value, self.layer.value, self.head.value
        tokens, _ = self._layer_maps(_check_text(text))
        return {"text": text, "layer": layer, "head": head, "all_heads": self.all_heads.value,
                "n_tokens": len(tokens), "kv_head": head // self.group_size,
                "diversity": self.diversity(text, layer)}

    def _draw(self, tokens, maps, layer: int, head: int) -> bytes:
        if self.all_heads.value:
            heads = list(range(maps.shape[0]))
            titles = [f"head {h} · KV {h // self.group_size}" for h in heads]
            return self._canvas_all.draw(maps[heads], tokens, titles,
                                         f"SmolLM2 layer {layer}: all {len(heads)} query heads (same colour scale)")
        return self._canvas_one.draw(maps[head:head + 1], tokens, [f"SmolLM2 layer {layer}, query head {head}"])

    def update(self) -> None:
        """Recompute the readout and redraw the picture from the controls' current values."""
        start = time.perf_counter()
        self.head.disabled = self.all_heads.value
        try:
            text = _check_text(self.text.value)
        except ValueError as e:
            self.readout.value = f"<b>Cannot draw:</b> {e}"
            return
        tokens, weights = self._layer_maps(text)
        layer, head = self.layer.value, self.head.value
        v = self.readout_values()
        g = self.group_size
        shared = ", ".join(map(str, range(v["kv_head"] * g, (v["kv_head"] + 1) * g)))
        cut = " (cut to the first tokens)" if len(tokens) == MAX_TOKENS else ""
        self.readout.value = (
            f"Layer {layer}, query head {head} &middot; {len(tokens)} tokens{cut}<br>"
            f"Head diversity of layer {layer}: <b>{v['diversity']:.3f}</b> "
            f"(mean Jensen-Shannon distance over pairs of its {weights.shape[1]} heads; 0 = identical maps, "
            f"1 = no overlap)<br>"
            f"SmolLM2 is GQA: query head {head} reads KV head {v['kv_head']}, shared by query heads {shared}."
        )
        self.image.value = self._draw(tokens, weights[layer], layer, head)
        self.last_update_s = time.perf_counter() - start


def head_heatmap_explorer(text: str = DEFAULT_TEXT, layer: int = 0, head: int = 0,
                          all_heads: bool = False) -> HeadHeatmapExplorer:
    """Build notebook 02's explorer: a sentence box, layer and head sliders, the heatmap and the layer's diversity.

    Loads SmolLM2 on first use (about 20 s, once per process).
    """
    return HeadHeatmapExplorer(text, layer, head, all_heads)
