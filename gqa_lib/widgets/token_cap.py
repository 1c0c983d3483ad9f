"""The cap on the text the SmolLM2 explorers analyse: its first ``MAX_TOKENS`` tokens, never more.

A forward pass that keeps every layer's attention maps needs memory that grows with the square of
the token count (30 layers x 9 heads x tokens^2 weights, plus the model's own work: measured about
0.5 GB at 600 tokens and 1.9 GB at 1,200), so a pasted page could end the kernel. The explorers show
only the first ``MAX_TOKENS`` tokens anyway, and with a causal mask the attention of a text's first
tokens does not depend on what follows: running the model on the first ``MAX_TOKENS`` tokens alone
gives exactly the maps shown. So the text is cut before the model sees it.

The explorers' other shared parts: the sentence box and layer slider they start with
(``sentence_and_layer``), and ``KeptTexts``, what an explorer computed for its last few texts, so
that moving a slider needs no forward pass.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass

import ipywidgets as widgets

from gqa_lib.core.checks import check_index, check_text
from gqa_lib.widgets.controls import StrictIntSlider

MAX_TOKENS = 32  # tokens analysed and shown; more labels than this do not fit on the axes


@dataclass(frozen=True)
class CappedText:
    text: str  # what the model is run on: the first ``n_kept`` tokens of the reader's text
    n_tokens: int  # tokens in the reader's whole text
    n_kept: int  # tokens analysed (at most MAX_TOKENS)

    @property
    def cut(self) -> bool:
        return self.n_kept < self.n_tokens


def cap_text(text: str, max_tokens: int = MAX_TOKENS) -> CappedText:
    """``text`` cut after its first ``max_tokens`` SmolLM2 tokens (the whole text if it is shorter).

    The cut is made at the character where token ``max_tokens`` ends, so the kept text tokenizes to
    the same first tokens (checked; shortened further in the rare case a merge crosses the cut).
    """
    from gqa_lib.models import smollm

    _, tok = smollm.load_smollm()
    enc = tok(text, return_offsets_mapping=True, add_special_tokens=False)
    n = len(enc["input_ids"])
    if n <= max_tokens:
        return CappedText(text, n, n)
    keep = max_tokens
    while keep > 0:
        prefix = text[: enc["offset_mapping"][keep - 1][1]]
        if len(tok(prefix, add_special_tokens=False)["input_ids"]) <= max_tokens:
            return CappedText(prefix, n, len(tok(prefix, add_special_tokens=False)["input_ids"]))
        keep -= 1
    raise ValueError(f"text cannot be cut to {max_tokens} tokens")  # not reached for real tokenizers


def cut_note(capped: CappedText) -> str:
    """The readout's sentence about the cap ('' when nothing was cut)."""
    if not capped.cut:
        return ""
    return (f" (the text has {capped.n_tokens:,} tokens; only its first {capped.n_kept} are analysed and shown, "
            f"the most this explorer takes)")


def sentence_and_layer(text: str, layer: int, n_layers: int) -> tuple[widgets.Text, StrictIntSlider]:
    """The sentence box and the layer slider (``0..n_layers - 1``) of a SmolLM2 explorer, after checking
    ``text`` and ``layer``."""
    check_text(text)
    check_index("layer", layer, n_layers)
    box = widgets.Text(value=text, description="sentence", continuous_update=False, layout=widgets.Layout(width="95%"))
    slider = StrictIntSlider(value=layer, min=0, max=n_layers - 1, description="layer", name="layer",
                             continuous_update=False)
    return box, slider


class KeptTexts:
    """``read(text)``'s result for the last ``maxsize`` texts an explorer showed: calling it with a text
    reads the text only when it is not kept (then the least recently shown one is dropped).

    A well-kept standard-library cache instead of our own LRU: ``functools.lru_cache``, made per widget
    so that it goes with the widget. It does not show what it holds, and a widget's ``kept_bytes`` counts
    that: ``read`` returns a new object that only the cache holds, so a ``weakref.WeakSet`` of those
    objects holds exactly the kept ones (one leaves it as soon as the cache drops it).
    """

    def __init__(self, read, maxsize: int):
        kept = self._kept = weakref.WeakSet()

        def read_and_list(text: str):
            value = read(text)
            kept.add(value)
            return value

        self._cached = functools.lru_cache(maxsize=maxsize)(read_and_list)

    def __call__(self, text: str):
        return self._cached(text)

    def values(self) -> list:
        """What is kept now: ``read``'s results for the last ``maxsize`` texts, in no particular order."""
        return list(self._kept)
