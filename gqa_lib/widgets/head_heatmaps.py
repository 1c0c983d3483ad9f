"""Notebook 02's widget: type a sentence, pick a layer and a head of SmolLM2, see where that head looks.

One forward pass of SmolLM2 per sentence (``smollm.capture_layers``) gives the attention maps of all
30 layers at once; only the maps are kept (for the last few sentences), so moving the layer or head
slider only redraws. The readout gives the layer's head diversity
(``gqa_lib.core.diversity.head_diversity``), computed once per sentence and layer.

The model only ever sees the text's first ``MAX_TOKENS`` tokens (``token_cap``): memory grows with the
square of the tokens, and those are all the picture shows. The readout says when a text was cut.
"""

from __future__ import annotations

import dataclasses
import time

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure

from gqa_lib.core.checks import check_index, check_text
from gqa_lib.core.diversity import head_diversity
from gqa_lib.models import smollm
from gqa_lib.models.catalog import get_model
from gqa_lib.pictures.heatmaps import token_labels
from gqa_lib.pictures.style import HEATMAP_CMAP
from gqa_lib.widgets.blit import BlitFigure
from gqa_lib.widgets.controls import StrictIntSlider
from gqa_lib.widgets.token_cap import MAX_TOKENS, CappedText, KeptTexts, cap_text, cut_note, sentence_and_layer

DEFAULT_TEXT = "Alice gave Bob the book, and then he thanked her for it."
MAPS_KEPT = 4  # sentences whose maps are kept: 30 x 9 x 32 x 32 float32 = 1.1 MB each at most
_SPEC = get_model("SmolLM2-135M")  # 30 layers, 9 query heads, 3 KV heads: known before the model loads


def all_layer_maps(text: str, max_tokens: int = MAX_TOKENS):
    """(tokens, weights): SmolLM2's attention maps for the first ``max_tokens`` tokens of ``text``, every layer.

    weights: (n_layers, n_heads, seq, seq), seq <= ``max_tokens``, from one forward pass of
    ``gqa_lib.models.smollm.capture_layers`` on the text cut to those tokens (``token_cap.cap_text``): with a
    causal mask, the maps of a text's first tokens do not depend on what follows, so they are exactly
    what the model computes for them inside the whole text.
    """
    tokens, weights, _ = _maps_of(cap_text(check_text(text), max_tokens))
    return tokens, weights


def _maps_of(capped: CappedText):
    captures = smollm.capture_layers(capped.text)
    n = min(len(captures[0].tokens), capped.n_kept)
    weights = torch.stack([c.weights[:, :n, :n] for c in captures])  # (n_layers, n_heads, seq, seq), a copy
    return captures[0].tokens[:n], weights, capped


@dataclasses.dataclass(eq=False)
class _Sentence:
    """What the explorer keeps of one text between updates."""

    tokens: list  # its first tokens (at most MAX_TOKENS)
    weights: torch.Tensor  # (n_layers, n_heads, seq, seq) attention maps
    capped: CappedText  # the text as cut for the model
    diversity: dict = dataclasses.field(default_factory=dict)  # layer -> head diversity, once asked for


class MapCanvas:
    """A figure of ``nrows x ncols`` attention maps that is built once and then only refilled.

    Rebuilding a matplotlib figure costs more than drawing it, so each update swaps the image data,
    the tick labels (only when the tokens change) and the titles, then redraws only the maps and titles
    over a background kept per sentence (``blit.BlitFigure``) and renders a PNG.
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
        self.titles = [ax.set_title(" ", fontsize=9) for ax in self.axes]
        self.suptitle = self.fig.suptitle(" ")
        self.ncols = ncols
        self._tokens = None
        # Token labels and colour bar make the background (drawn once per sentence); maps and titles change.
        self._blit = BlitFigure(self.fig, [*self.images, *self.titles, self.suptitle])

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
        for im, title, m, name in zip(self.images, self.titles, maps, titles, strict=True):
            im.set_data(m.detach().numpy() if hasattr(m, "detach") else m)
            im.set_extent((-0.5, n - 0.5, n - 0.5, -0.5))
            title.set_text(name)
        if suptitle is not None:
            self.suptitle.set_text(suptitle)
        return self._blit.render(tuple(self._tokens))


class HeadHeatmapExplorer(widgets.VBox):
    """Controls ``.text``, ``.layer``, ``.head``, ``.all_heads``; readout ``.readout``; picture ``.image``."""

    def __init__(self, text: str = DEFAULT_TEXT, layer: int = 0, head: int = 0, all_heads: bool = False):
        n_heads = _SPEC.n_heads
        self.text, self.layer = sentence_and_layer(text, layer, _SPEC.n_layers)
        check_index("head", head, n_heads)
        self.group_size = _SPEC.group_size
        self._sentence = KeptTexts(self._read, MAPS_KEPT)  # text -> _Sentence: no forward pass for a layer or head
        self.head = StrictIntSlider(value=head, min=0, max=n_heads - 1, description="query head", name="head",
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
        controls = widgets.HBox([self.layer, self.head, self.all_heads], layout=widgets.Layout(flex_flow="row wrap"))
        super().__init__([self.text, controls, self.readout, self.image])
        self.update()

    def _read(self, text: str) -> _Sentence:
        """One forward pass on ``text``'s first tokens (called through ``self._sentence``, which keeps the result)."""
        return _Sentence(*_maps_of(cap_text(text)))

    def _layer_maps(self, text: str):
        """(tokens, weights, capped text) for ``text``: one forward pass on its first tokens, kept for a few texts."""
        sentence = self._sentence(text)
        return sentence.tokens, sentence.weights, sentence.capped

    def diversity(self, text: str, layer: int) -> float | None:
        """Head diversity of ``layer`` for ``text`` (computed once, kept with the text's maps); None under two tokens.

        The measure skips the first query position (it can only attend to itself, in every head), so a
        one-token text has no position left to compare.
        """
        sentence = self._sentence(text)
        if layer not in sentence.diversity:
            weights = sentence.weights[layer]
            sentence.diversity[layer] = head_diversity(weights) if weights.shape[-1] >= 2 else None
        return sentence.diversity[layer]

    def readout_values(self) -> dict:
        """What the readout says, as numbers (for tests)."""
        text, layer, head = self.text.value, self.layer.value, self.head.value
        tokens, _, capped = self._layer_maps(check_text(text))
        return {"text": text, "layer": layer, "head": head, "all_heads": self.all_heads.value,
                "n_tokens": len(tokens), "n_tokens_in_text": capped.n_tokens, "kv_head": head // self.group_size,
                "diversity": self.diversity(text, layer)}

    def sharing(self, n_heads: int, head: int | None) -> str:
        """The readout's line on which query heads read which KV head: for ``head``, or for every head (None)."""
        g = self.group_size

        def group(kv: int) -> str:
            return ", ".join(map(str, range(kv * g, (kv + 1) * g)))

        if head is not None:
            return (f"SmolLM2 is GQA: query head {head} reads KV head {head // g}, shared by query heads "
                    f"{group(head // g)}.")
        groups = "; ".join(f"query heads {group(kv)} read KV head {kv}" for kv in range(n_heads // g))
        return f"SmolLM2 is GQA: {groups} (each panel's title names its KV head)."

    def kept_bytes(self) -> int:
        """Bytes of the tensors the widget keeps between updates (the maps of the last few texts)."""
        return sum(s.weights.numel() * s.weights.element_size() for s in self._sentence.values())

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
            text = check_text(self.text.value)
        except ValueError as e:
            self.readout.value = f"<b>Cannot draw:</b> {e}"
            return
        tokens, weights, capped = self._layer_maps(text)
        layer, head = self.layer.value, self.head.value
        v = self.readout_values()
        if v["diversity"] is None:
            diversity = (f"Head diversity of layer {layer}: needs at least two tokens (this text has "
                         f"{len(tokens)}): the first token can only look at itself, in every head.")
        else:
            diversity = (f"Head diversity of layer {layer}: <b>{v['diversity']:.3f}</b> (mean Jensen-Shannon "
                         f"distance over pairs of its {weights.shape[1]} heads; 0 = identical maps, 1 = no overlap)")
        shown = f"all {weights.shape[1]} query heads" if v["all_heads"] else f"query head {head}"
        self.readout.value = (
            f"Layer {layer}, {shown} &middot; {len(tokens)} token{'s' if len(tokens) != 1 else ''}"
            f"{cut_note(capped)}<br>{diversity}<br>{self.sharing(weights.shape[1], None if v['all_heads'] else head)}"
        )
        self.image.value = self._draw(tokens, weights[layer], layer, head)
        self.last_update_s = time.perf_counter() - start


def head_heatmap_explorer(text: str = DEFAULT_TEXT, layer: int = 0, head: int = 0,
                          all_heads: bool = False) -> HeadHeatmapExplorer:
    """Build notebook 02's explorer: a sentence box, layer and head sliders, the heatmap and the layer's diversity.

    Loads SmolLM2 on first use (about 20 s, once per process).
    """
    return HeadHeatmapExplorer(text, layer, head, all_heads)
