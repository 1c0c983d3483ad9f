"""Notebook 08's widget: give the cache a memory and a context, and see which ways of shrinking it fit.

The budget per token of context is ``memory / (context x batch)`` (GB = 10^9 bytes). Every method the widget
offers (those of ``data/results/cache_pareto.csv`` measured at every context the file holds; eviction rows are not
offered, their bytes were measured rather than computed) either fits (its bytes per token, recomputed at the chosen
context by ``gqa_lib.experiments.cache_pareto.bytes_per_token_at``, are within the budget) or does not; the readout
names the best that fits and lists the others with their change in loss. The losses are those measured at the
context nearest the chosen one (:func:`measured_near`), and the readout says which; where the chosen context lies
outside every measured range, it says that nothing was measured there.
Controls refuse values they do not offer, listing the valid ones (``controls.NotOffered``).
"""

from __future__ import annotations

import html
import math
import time

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, NullLocator

from gqa_lib.experiments.cache_pareto import bytes_per_token_at
from gqa_lib.pictures.cache_pareto import family_style
from gqa_lib.pictures.style import NEUTRAL
from gqa_lib.widgets.blit import BlitFigure
from gqa_lib.widgets.controls import StrictIntSlider, StrictSelectionSlider
from gqa_lib.widgets.text import context_label

MEMORY_GB = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10]
CONTEXTS = [2**k for k in range(9, 14)]  # 512 .. 8192 tokens: SmolLM2 was trained up to 8,192, no further
MAX_BATCH = 64
LISTED = 8  # rows of the table of methods that fit


def _signed(nats) -> str:
    """A change in loss to 3 decimals with its sign; one that rounds to zero is "0.000", not "-0.000" or "+0.000"."""
    text = f"{float(nats):+.3f}"
    return "0.000" if text in ("-0.000", "+0.000") else text


def _memory_label(gb: float) -> str:
    return f"{gb * 1000:g} MB" if gb < 1 else f"{gb:g} GB"


# What the explorer reads from each row of cache_pareto.csv (bytes_per_token_at reads the cache's parameters).
NEEDED = ("method", "family", "source", "val_nll", "delta_nll", "numbers_per_token_layer", "caching_layers",
          "bits", "axis", "window", "sinks", "block")


def _score_from(r) -> int:
    value = r.get("score_from")
    return int(value) if value is not None and value == value else int(r["context"]) // 2  # old files: half


def measured_near(rows: list[dict], context: int) -> dict:
    """The measured context nearest ``context``: {'context': text length, 'first': first scored context,
    'texts': texts, 'inside': whether ``context`` lies in first .. context (measured there), 'rows': its rows}.

    Nearest on a log scale (4,096 is as far from 2,048 as 1,024); a tie goes to the longer.
    """
    lengths = sorted({int(r["context"]) for r in rows})
    length = min(lengths, key=lambda n: (abs(math.log(context / n)), -n))
    chosen = [r for r in rows if int(r["context"]) == length]
    first = _score_from(chosen[0]) + 1
    texts = chosen[0].get("texts")
    return {"context": length, "first": first, "texts": int(texts) if texts is not None and texts == texts else None,
            "inside": first <= context <= length, "rows": chosen}


def offered(rows: list[dict]) -> list[dict]:
    """The rows of the methods the widget offers: measured at every context of the file, bytes computable."""
    lengths = {int(r["context"]) for r in rows}
    at = {}
    for r in rows:
        at.setdefault(r["method"], set()).add(int(r["context"]))
    return [r for r in rows if at[r["method"]] == lengths and str(r.get("evicts", False)) != "True"]


def check_table(rows: list[dict]) -> None:
    """Raise ValueError naming what is missing unless ``rows`` can be read as ``cache_pareto.csv``'s: the columns
    of :data:`NEEDED`, exactly one row of the original model (family and source 'original', which every method
    is compared with), and a finite loss in every row (a nan loss would be listed as a method that fits)."""
    if not rows:
        raise ValueError("table has no rows: pass data/results/cache_pareto.csv (results.load('cache_pareto').rows)")
    missing = [c for c in NEEDED if c not in rows[0]]
    if missing:
        raise ValueError(f"table lacks the column(s) {', '.join(missing)} of cache_pareto.csv")
    lengths = sorted({int(r["context"]) for r in rows}) if "context" in rows[0] else [None]
    for length in lengths:
        originals = [r for r in rows if r["family"] == "original" and r["source"] == "original"
                     and (length is None or int(r["context"]) == length)]
        if len(originals) != 1:
            at = "" if length is None or len(lengths) == 1 else f" at context {length}"
            raise ValueError(f"table has {len(originals)} rows with family='original' and source='original'{at}; it "
                             "needs exactly one: the original model's cache, which every method is compared with")
    bad = [str(r["method"]) for r in rows if not all(math.isfinite(float(r[c])) for c in ("val_nll", "delta_nll"))]
    if bad:
        raise ValueError(f"table has rows whose loss is not a finite number: {', '.join(bad[:5])}")


def budget_choice(rows: list[dict], memory_gb: float, context: int, batch: int) -> dict:
    """The budget per token, and every method with its bytes at ``context`` and whether it fits, best first.

    ``rows``: the rows of ``cache_pareto.csv`` (dicts; the uptraining's control row is left out). Losses are those
    measured nearest ``context`` (:func:`measured_near`). Returns {'budget', 'fits': [...], 'too_big': [...],
    'best': row or None, 'original': row, 'measured': measured_near's dict without its rows}; each listed row gains
    'bytes_at_context'.
    """
    check_table(rows)
    budget = memory_gb * 1e9 / (context * batch)
    near = measured_near(offered(rows), context)
    listed = []
    for r in near.pop("rows"):
        if r["source"] == "control":  # a check on the uptraining, not a way to shrink the cache
            continue
        r = dict(r)
        r["bytes_at_context"] = bytes_per_token_at(r, context)
        listed.append(r)
    fits = sorted((r for r in listed if r["bytes_at_context"] <= budget), key=lambda r: float(r["val_nll"]))
    too_big = sorted((r for r in listed if r["bytes_at_context"] > budget), key=lambda r: r["bytes_at_context"])
    original = next(r for r in listed if r["family"] == "original" and r["source"] == "original")
    return {"budget": budget, "fits": fits, "too_big": too_big, "best": fits[0] if fits else None,
            "original": original, "measured": near}


def measured_sentence(context: int, m: dict) -> str:
    """Which measurement the losses come from, in words, and whether the chosen context was measured."""
    texts = f"{m['texts']} texts" if m["texts"] else "texts"
    where = (f"losses measured on {texts} of {m['context']:,} tokens (predictions with {m['first']:,} to "
             f"{m['context'] - 1:,} tokens of context)")
    if m["inside"]:
        return f"{where[0].upper()}{where[1:]}: this context was measured."
    return (f"Nothing was measured at {context:,} tokens of context; the losses shown are {where}, the measured "
            f"context nearest to it, and may differ at {context:,}.")


class CacheBudgetExplorer(widgets.VBox):
    """Controls ``.memory``, ``.context``, ``.batch``; readout ``.readout``; chart ``.image``;
    numbers ``readout_values()``."""

    def __init__(self, table, memory_gb: float = 0.02, context: int = 1024, batch: int = 1):
        self.rows = [dict(r) for r in table.to_dict("records")]
        check_table(self.rows)
        self.rows = offered(self.rows)
        style = {"description_width": "120px"}
        slide = {"style": style, "continuous_update": False}
        self.memory = StrictSelectionSlider(options=[(_memory_label(m), m) for m in MEMORY_GB], value=memory_gb,
                                            description="cache memory", name="memory", **slide)
        self.context = StrictSelectionSlider(options=[(context_label(c), c) for c in CONTEXTS], value=context,
                                             description="context (tokens)", name="context", **slide)
        self.batch = StrictIntSlider(value=batch, min=1, max=MAX_BATCH, description="batch", name="batch", **slide)
        self.readout = widgets.HTML()
        self.image = widgets.Image(format="png", layout=widgets.Layout(align_self="flex-start"))
        self.last_update_s = float("nan")
        self._build_figure()
        for c in (self.memory, self.context, self.batch):
            c.observe(lambda _: self.update(), names="value")
        controls = widgets.HBox([self.memory, self.context, self.batch], layout=widgets.Layout(flex_flow="row wrap"))
        super().__init__([controls, self.readout, self.image])
        self.update()

    def readout_values(self) -> dict:
        return budget_choice(self.rows, self.memory.value, self.context.value, self.batch.value)

    def _build_figure(self) -> None:
        self.fig = Figure(figsize=(8.4, 3.6))
        self.fig.subplots_adjust(left=0.1, right=0.74, bottom=0.16, top=0.86)
        ax = self.ax = self.fig.add_subplot()
        every = [bytes_per_token_at(r, c) for r in self.rows for c in CONTEXTS if r["source"] != "control"]
        budgets = [m * 1e9 / (c * b) for m in MEMORY_GB for c in CONTEXTS for b in (1, MAX_BATCH)]
        lo, hi = min(every) / 2, max(every) * 2
        self.limits = (lo, hi)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_yscale("symlog", linthresh=0.01)  # changes from a thousandth to ten nats all show
        deltas = [float(r["delta_nll"]) for r in self.rows]
        ax.set_ylim(min(min(deltas), 0) - 0.005, max(deltas) * 1.5)
        ax.axhline(0, color=NEUTRAL, lw=0.8)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("KV cache bytes per token of context")
        ax.set_ylabel("change in loss (nats)")
        self._budget_range = (min(budgets), max(budgets))
        # What does not fit is shaded: a rectangle from the budget to the right edge, in data x and axes y.
        self.shade = Rectangle((1, 0), 1, 1, transform=ax.get_xaxis_transform(), color=NEUTRAL, alpha=0.15, lw=0)
        ax.add_patch(self.shade)
        self.line = ax.axvline(1, color="black", lw=1.4, ls=":")
        self.points = {}
        for family in dict.fromkeys(r["family"] for r in self.rows):
            marker, colour = family_style(family)
            self.points[family] = ax.scatter([1], [1], marker=marker, color=colour, s=40, label=family, zorder=3)
        self.best = ax.scatter([1], [1], s=220, facecolors="none", edgecolors="black", lw=1.6, zorder=4,
                               label="best that fits")
        ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
        self.title = ax.set_title(" ", fontsize=9)
        self._blit = BlitFigure(self.fig, [self.shade, self.line, *self.points.values(), self.best, self.title])

    def _draw(self, v: dict) -> bytes:
        budget = v["budget"]
        x = min(max(budget, self.limits[0]), self.limits[1])
        self.line.set_xdata([x, x])
        self.shade.set_x(x)
        self.shade.set_width(self.limits[1] * 10 - x)
        listed = v["fits"] + v["too_big"]
        for family, artist in self.points.items():
            mine = [(r["bytes_at_context"], float(r["delta_nll"])) for r in listed if r["family"] == family]
            artist.set_offsets(np.array(mine))
        best = v["best"]
        self.best.set_visible(best is not None)
        if best is not None:
            self.best.set_offsets([[best["bytes_at_context"], float(best["delta_nll"])]])
        m = v["measured"]
        self.title.set_text(f"budget {budget:,.0f} bytes per token: {len(v['fits'])} of {len(listed)} methods fit "
                            f"(shaded: too big)\nlosses measured at {m['context']:,} tokens"
                            + ("" if m["inside"] else f", not at {self.context.value:,}"))
        return self._blit.render(None)

    def _readout_html(self, v: dict) -> str:
        m, c, b = self.memory.value, self.context.value, self.batch.value
        orig = v["original"]
        head = (f"<b>Budget</b>: {_memory_label(m)} / ({c:,} tokens x batch {b}) = "
                f"<b>{v['budget']:,.0f} bytes per token</b>; the original cache needs "
                f"{orig['bytes_at_context']:,.0f} (bf16).<br>{html.escape(measured_sentence(c, v['measured']))}")
        if v["best"] is None:
            smallest = v["too_big"][0]
            return (head + f"<br>No method fits: the smallest, {html.escape(smallest['method'])}, needs "
                    f"{smallest['bytes_at_context']:,.0f} bytes per token.")
        best = v["best"]
        at = f" at {v['measured']['context']:,} tokens"
        lines = [head, f"<b>Best that fits</b>: {html.escape(best['method'])}, loss {float(best['val_nll']):.3f} "
                       f"({_signed(best['delta_nll'])} nats against the original{at}).",
                 "<table><tr><th align=left>fits</th><th>bytes / token</th><th>change in loss (95% CI)</th></tr>"]
        for r in v["fits"][:LISTED]:
            lines.append(f"<tr><td>{html.escape(r['method'])}</td><td align=right>{r['bytes_at_context']:,.0f}</td>"
                         f"<td align=right>{_signed(r['delta_nll'])} [{_signed(r['delta_ci_low'])}, "
                         f"{_signed(r['delta_ci_high'])}]</td></tr>")
        lines.append("</table>")
        more = len(v["fits"]) - LISTED
        if more > 0:
            lines.append(f"and {more} more that fit, with higher loss.")
        return "\n".join(lines)

    def update(self) -> None:
        """Recompute the readout and the chart from the controls' current values."""
        start = time.perf_counter()
        v = self.readout_values()
        self.readout.value = self._readout_html(v)
        self.image.value = self._draw(v)
        self.last_update_s = time.perf_counter() - start


def cache_budget_explorer(table=None, memory_gb: float = 0.02, context: int = 1024, batch: int = 1):
    """The widget of notebook 08, on ``table`` (default: the shipped ``data/results/cache_pareto.csv``)."""
    if table is None:
        from gqa_lib.experiments.results import RESULTS_DIR, read_results

        table = read_results(RESULTS_DIR / "cache_pareto.csv")
    return CacheBudgetExplorer(table, memory_gb, context, batch)
