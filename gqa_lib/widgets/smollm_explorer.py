"""Notebook 05's widget: one KV head (= group) of SmolLM2 at a time, with the query heads that share it.

Type a sentence, pick a layer and a group. The picture shows the attention maps of the group's three
query heads (one colour scale) next to the keys and values of the one KV head they all read. The
readout gives the layer's head diversity for pairs inside a group and pairs across groups
(``gqa_lib.core.diversity.within_across_diversity``). One forward pass per sentence gives all 30 layers
(``smollm.capture_layers``); they are kept for the last few texts, so moving the layer or group only
recomputes and redraws.

The model only ever sees the text's first ``MAX_TOKENS`` tokens (``token_cap``): memory grows with the
square of the tokens, and those are all the picture shows. Of each layer only what the picture and
the readout use is kept (queries, keys, values, attention weights); the readout says when a text was cut.
"""

from __future__ import annotations

import dataclasses
import time

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure

from gqa_lib.core.checks import check_index, check_text
from gqa_lib.core.diversity import pairwise_head_distance
from gqa_lib.models import smollm
from gqa_lib.models.catalog import get_model
from gqa_lib.pictures.style import DIVERGING_CMAP, HEATMAP_CMAP
from gqa_lib.widgets.blit import BlitFigure
from gqa_lib.widgets.controls import StrictToggleButtons
from gqa_lib.widgets.text import plural
from gqa_lib.widgets.token_cap import MAX_TOKENS, CappedText, KeptTexts, cap_text, cut_note, sentence_and_layer

DEFAULT_TEXT = smollm.PROMPTS["sentences"]["fox"]
CAPTURES_KEPT = 4  # texts whose captures are kept: about 5 MB each at the token cap
_SPEC = get_model("SmolLM2-135M")  # 30 layers, 9 query heads, 3 KV heads: known before the model loads


def _labels(tokens) -> list[str]:
    """Token tick labels: surrounding spaces dropped, long ones cut, '$' escaped for matplotlib."""
    out = []
    for t in tokens:
        s = t.strip() or repr(t)
        out.append((s[:9] + "…" if len(s) > 10 else s).replace("$", r"\$"))
    return out


@dataclasses.dataclass(eq=False)
class _Sentence:
    """What the explorer keeps of one text between updates."""

    capped: CappedText  # the text as cut for the model
    captures: list  # every layer's smollm capture, without the layer's input and output (not shown)
    distances: dict = dataclasses.field(default_factory=dict)  # layer -> (9, 9) head distances, once asked for


class GroupCanvas:
    """Three attention maps and the group's K and V, in a figure built once and then only refilled.

    Drawing text (tick labels, colour bars) is most of matplotlib's work, and it changes only with the
    sentence. So the figure is drawn in full once per sentence and kept as a background; a change of
    layer or group pastes that background and draws only the five images and the titles on it
    (matplotlib's "blitting", ``blit.BlitFigure``; the last sentence's background is kept). K and V
    are each divided by their largest absolute value, so their colour bars, too, stay the same
    (-1 to 1) for every layer.
    """

    def __init__(self, group_size: int):
        self.group_size = group_size
        side, kv_side, left, gap, bottom, top = 2.4, 1.6, 0.85, 0.2, 1.3, 0.75  # inches
        kv_left = left + group_size * (side + gap) + 0.55
        width, height = kv_left + 2 * kv_side + gap + 0.2, bottom + side + top
        self.fig = Figure(figsize=(width, height), dpi=80)

        def box(x, w, y=bottom, h=side):
            return (x / width, y / height, w / width, h / height)

        self.map_axes = [self.fig.add_axes(box(left + i * (side + gap), side)) for i in range(group_size)]
        self.kv_axes = [self.fig.add_axes(box(kv_left + i * (kv_side + gap), kv_side)) for i in range(2)]
        self.maps = [ax.imshow([[0.0]], cmap=HEATMAP_CMAP, vmin=0, vmax=1, interpolation="nearest")
                     for ax in self.map_axes]
        self.kv = [ax.imshow([[0.0]], cmap=DIVERGING_CMAP, vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
                   for ax in self.kv_axes]
        bars = [(self.maps[0], box(left + side + gap, side, 0.55, 0.1), "attention weight (shared scale)"),
                (self.kv[0], box(kv_left, kv_side, 0.55, 0.1), "K / largest |K|"),
                (self.kv[1], box(kv_left + kv_side + gap, kv_side, 0.55, 0.1), "V / largest |V|")]
        for image, where, label in bars:
            bar = self.fig.colorbar(image, cax=self.fig.add_axes(where), orientation="horizontal", label=label)
            bar.set_ticks([0, 0.5, 1] if image in self.maps else [-1, 0, 1])
        for ax in self.kv_axes:
            ax.set_xlabel("head dimension", labelpad=0)
            ax.set_xticks([0, 63])
        self.titles = [ax.set_title(" ", fontsize=10) for ax in self.map_axes + self.kv_axes]
        self.suptitle = self.fig.suptitle(" ", y=1 - 0.12 / height)
        self._tokens = None
        self._blit = BlitFigure(self.fig, [*self.maps, *self.kv, *self.titles, self.suptitle], kept=1)

    def _set_tokens(self, tokens) -> None:
        labels, n = _labels(tokens), len(tokens)
        fs = 8 if n <= 16 else 6
        for k, ax in enumerate(self.map_axes + self.kv_axes):
            if k < len(self.map_axes):
                ax.set_xticks(range(n), labels if k == 0 else [], rotation=90, fontsize=fs)
                ax.set_xlim(-0.5, n - 0.5)
            ax.set_yticks(range(n), labels if k in (0, len(self.map_axes)) else [], fontsize=fs)
            ax.set_ylim(n - 0.5, -0.5)
            ax.tick_params(length=0)
            ax.grid(False)
        for ax in self.kv_axes:
            ax.set_xlim(-0.5, 63.5)
        self.map_axes[0].set_ylabel("query token")
        self.map_axes[0].set_xlabel("key token")
        self._tokens = list(tokens)

    def draw(self, cap, group: int, n: int) -> bytes:
        """Draw group ``group`` of capture ``cap`` (first ``n`` tokens); return the PNG bytes."""
        tokens = cap.tokens[:n]
        if tokens != self._tokens:
            self._set_tokens(tokens)
        heads = list(range(group * self.group_size, (group + 1) * self.group_size))
        for im, h in zip(self.maps, heads, strict=True):
            im.set_data(cap.weights[h, :n, :n].numpy())
            im.set_extent((-0.5, n - 0.5, n - 0.5, -0.5))
        for im, x in zip(self.kv, (cap.k, cap.v), strict=True):
            data = x[group, :n]  # (seq, head_dim)
            im.set_data((data / data.abs().max().clamp_min(1e-12)).numpy())
            im.set_extent((-0.5, data.shape[1] - 0.5, n - 0.5, -0.5))
        names = [f"query head {h}" for h in heads] + [f"K of KV head {group}", f"V of KV head {group}"]
        for title, name in zip(self.titles, names, strict=True):
            title.set_text(name)
        self.suptitle.set_text(f"SmolLM2 layer {cap.layer}: query heads {heads[0]}-{heads[-1]} all read "
                               f"KV head {group}")
        return self._blit.render(tuple(self._tokens))  # the token labels: what the background shows


class SmollmGroupExplorer(widgets.VBox):
    """Controls ``.text``, ``.layer``, ``.group``; readout ``.readout``; picture ``.image``; ``update()``."""

    def __init__(self, text: str = DEFAULT_TEXT, layer: int = 3, group: int = 0):
        n_kv = _SPEC.n_kv_heads
        self.text, self.layer = sentence_and_layer(text, layer, _SPEC.n_layers)
        check_index("group", group, n_kv)
        self.group_size = _SPEC.group_size
        self._sentence = KeptTexts(self._read, CAPTURES_KEPT)  # text -> _Sentence: no forward pass for a layer or group
        options = [(f"KV head {j} (query heads {j * self.group_size}-{(j + 1) * self.group_size - 1})", j)
                   for j in range(n_kv)]
        # Buttons as wide as their labels ("KV head 0 (query heads 0-2)"): a fixed width cut them short.
        self.group = StrictToggleButtons(options=options, value=group, description="group", name="group",
                                         style={"button_width": "auto"})
        self.readout = widgets.HTML()
        self.image = widgets.Image(format="png", layout=widgets.Layout(align_self="flex-start"))  # natural size
        self.last_update_s = float("nan")
        self._canvas = GroupCanvas(self.group_size)
        for control in (self.text, self.layer, self.group):
            control.observe(lambda change: self.update(), names="value")
        super().__init__([self.text, widgets.HBox([self.layer]), self.group, self.readout, self.image])
        self.update()

    def _read(self, text: str) -> _Sentence:
        """One forward pass on ``text``'s first tokens (called through ``self._sentence``, which keeps the result)."""
        capped = cap_text(text)
        # Keep what the picture and readout use; the layer's input and output are not shown.
        slim = [dataclasses.replace(c, hidden=torch.empty(0), output=torch.empty(0))
                for c in smollm.capture_layers(capped.text)]
        return _Sentence(capped, slim)

    def captures(self, text: str) -> list:
        """All 30 layers' captures of ``text``'s first tokens (one forward pass, remembered for the last few texts)."""
        return self._sentence(text).captures

    def kept_bytes(self) -> int:
        """Bytes of the tensors the widget keeps between updates (captures and distance matrices)."""
        kept = self._sentence.values()
        tensors = [t for s in kept for c in s.captures for t in (c.hidden, c.q, c.k, c.v, c.weights, c.output)]
        tensors += [d for s in kept for d in s.distances.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def distances(self, text: str, layer: int) -> torch.Tensor:
        """(9, 9) Jensen-Shannon distances between the query heads' maps, first ``MAX_TOKENS`` tokens (computed
        once per layer, kept with the text's captures)."""
        sentence = self._sentence(text)
        if layer not in sentence.distances:
            w = sentence.captures[layer].weights[:, :MAX_TOKENS, :MAX_TOKENS]
            with smollm.one_cpu_thread():
                sentence.distances[layer] = pairwise_head_distance(w)
        return sentence.distances[layer]

    def readout_values(self) -> dict:
        """What the readout says, as numbers (for tests)."""
        text, layer, group, group_size = self.text.value, self.layer.value, self.group.value, self.group_size
        cap = self.captures(check_text(text))[layer]
        d = self.distances(text, layer)
        kv_of = torch.arange(d.shape[0]) // group_size
        same = (kv_of[:, None] == kv_of[None, :]) & ~torch.eye(d.shape[0], dtype=torch.bool)
        heads = list(range(group * group_size, (group + 1) * group_size))
        in_group = [float(d[i, j]) for i in heads for j in heads if i < j]
        k_seen, v_seen = smollm.kv_seen_by_query_heads(cap)
        n_tokens = min(len(cap.tokens), MAX_TOKENS)
        enough = n_tokens >= 2  # the distance skips the first query position, which can only look at itself

        def mean(x):
            return float(x.mean()) if enough else None

        return {"text": text, "layer": layer, "group": group, "query_heads": heads, "n_tokens": n_tokens,
                "n_tokens_in_text": self._sentence(text).capped.n_tokens,
                "within": mean(d[same]), "across": mean(d[kv_of[:, None] != kv_of[None, :]]),
                "group_within": sum(in_group) / len(in_group) if enough else None,
                "kv_identical_in_group": all(torch.equal(x[h], x[heads[0]]) for x in (k_seen, v_seen) for h in heads)}

    def update(self) -> None:
        """Recompute the readout and redraw the picture from the controls' current values."""
        start = time.perf_counter()
        try:
            text = check_text(self.text.value)
        except ValueError as e:
            self.readout.value = f"<b>Cannot draw:</b> {e}"
            return
        v = self.readout_values()
        heads = ", ".join(map(str, v["query_heads"]))
        same = "identical" if v["kv_identical_in_group"] else "NOT identical"
        if v["within"] is None:
            diversity = (f"Head diversity needs at least two tokens (this text has {plural(v['n_tokens'], 'token')}): "
                         "the first token can only look at itself, in every head.")
        else:
            # Every head attending alike (distance 0 across groups too) leaves no ratio to give.
            ratio = (f" (within / across = {v['within'] / v['across']:.2f})" if v["across"] > 0
                     else " (every pair attends alike: no ratio)")
            diversity = (
                f"Head diversity (mean Jensen-Shannon distance between two heads' attention rows; 0 = same maps, "
                f"1 = no overlap): pairs inside group {v['group']}: <b>{v['group_within']:.3f}</b>; "
                f"all pairs sharing a KV head: <b>{v['within']:.3f}</b>; pairs in different groups: "
                f"<b>{v['across']:.3f}</b>{ratio}.")
        self.readout.value = (
            f"Layer {v['layer']}, {plural(v['n_tokens'], 'token')}"
            f"{cut_note(self._sentence(text).capped)}. Query heads {heads} read the same K and V "
            f"(checked: {same}).<br>{diversity}"
        )
        cap = self.captures(text)[v["layer"]]
        self.image.value = self._canvas.draw(cap, v["group"], v["n_tokens"])
        self.last_update_s = time.perf_counter() - start


def smollm_group_explorer(text: str = DEFAULT_TEXT, layer: int = 3, group: int = 0) -> SmollmGroupExplorer:
    """Build notebook 05's explorer: sentence box, layer slider, group buttons, heatmaps and diversity readout.

    Needs the SmolLM2 model file (``gqa_lib.models.smollm.check_gguf``); loads the model on first use.
    """
    return SmollmGroupExplorer(text, layer, group)
