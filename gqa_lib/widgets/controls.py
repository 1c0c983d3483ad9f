"""Controls shared by the widgets: sliders and selections that refuse a value they do not offer.

ipywidgets clamps an ``IntSlider`` set outside its range without a word, and answers a
``SelectionSlider`` or ``Dropdown`` set to a value it does not list with "Invalid selection: value
not found". A learner who types ``w.n_kv_heads.value = 5`` deserves the list of valid values instead,
so these subclasses refuse such a value with a ``NotOffered`` error (a ``ValueError`` and a traitlets
``TraitError``) that names the control, the value and what the control offers.

``CUSTOM`` is the one spelling, across the series' widgets, of the preset entry for "a shape of my own".
"""

from __future__ import annotations

import ipywidgets as widgets
from traitlets import Any, TraitError, validate

from gqa_lib.core.checks import closest_divisor, divisors
from gqa_lib.widgets.text import plural

CUSTOM = "custom"
MAX_LISTED = 24  # longer lists of valid values are shown as their first and last few


class NotOffered(TraitError, ValueError):
    """A control was asked to take a value it does not offer."""


def listed(values) -> str:
    """``'1, 2, 4, 8'`` (whole numbers with thousands separated: ``'1,048,576'``); a long list keeps its first
    and last few with '...' between."""
    values = [f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v) for v in values]
    if len(values) > MAX_LISTED:
        values = values[: MAX_LISTED // 2] + ["..."] + values[-MAX_LISTED // 4:]
    return ", ".join(values)


def _name(control) -> str:
    return getattr(control, "name", None) or control.description or type(control).__name__


class StrictIntSlider(widgets.IntSlider):
    """An ``IntSlider`` that refuses a value outside ``min..max`` or off its step (ipywidgets would clamp it).

    ``name`` is the argument name used in error messages (for example ``n_layers``).
    """

    # ipywidgets' trait casts (2.7 becomes 2) before any check could see the float: take the value as given.
    value = Any(0, help="Int value").tag(sync=True)

    def __init__(self, *args, name: str | None = None, **kwargs):
        self.name = name
        super().__init__(*args, **kwargs)

    @validate("value")
    def _validate_value(self, proposal):
        value = proposal["value"]
        lo, hi, step = self.min, self.max, self.step
        grid = f"{lo:,}..{hi:,}" if step == 1 else f"{lo:,}..{hi:,} in steps of {step:,}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise NotOffered(f"{_name(self)}={value!r} must be an integer on the slider (valid: {grid})")
        if not lo <= value <= hi or (value - lo) % step:
            raise NotOffered(f"{_name(self)}={value!r} is outside the slider (valid: {grid})")
        return value


class _StrictSelection:
    """Mixin for selection controls: an unlisted value raises ``NotOffered`` with the valid values."""

    def __init__(self, *args, name: str | None = None, why: str = "", **kwargs):
        self.name, self.why = name, why
        super().__init__(*args, **kwargs)

    @validate("value")
    def _validate_value(self, proposal):
        try:
            return super()._validate_value(proposal)
        except NotOffered:
            raise
        except TraitError:
            why = f" {self.why}" if self.why else ""
            raise NotOffered(f"{_name(self)}={proposal['value']!r} is not offered{why} "
                             f"(valid: {listed(self._options_values)})") from None


class StrictSelectionSlider(_StrictSelection, widgets.SelectionSlider):
    """A ``SelectionSlider`` whose unlisted values raise ``NotOffered`` listing the valid ones."""


class StrictDropdown(_StrictSelection, widgets.Dropdown):
    """A ``Dropdown`` whose unlisted values raise ``NotOffered`` listing the valid ones."""


class StrictToggleButtons(_StrictSelection, widgets.ToggleButtons):
    """``ToggleButtons`` whose unlisted values raise ``NotOffered`` listing the valid ones."""


def _only_divisors(n_heads: int) -> str:
    return f"for {plural(n_heads, 'query head')} (only divisors are)"


class KVHeadsSlider(StrictSelectionSlider):
    """The KV-head slider of every widget: it offers only the divisors of the query-head count, and follows it.

    ``follow(n_heads, wanted)`` offers the divisors of ``n_heads`` and selects the one closest to ``wanted``
    (default: the value shown; the smaller on a tie), options and value reaching the browser as one message.
    A value it does not offer is refused naming the query-head count: ``n_kv_heads=3 is not offered for 32
    query heads (only divisors are) (valid: 1, 2, 4, 8, 16, 32)``.
    """

    def __init__(self, n_heads: int, value: int, **kwargs):
        super().__init__(options=divisors(n_heads), value=value, name="n_kv_heads", why=_only_divisors(n_heads),
                         **kwargs)

    def follow(self, n_heads: int, wanted: int | None = None) -> int:
        """Offer the divisors of ``n_heads``; select and return the one closest to ``wanted``."""
        value = closest_divisor(n_heads, self.value if wanted is None else wanted)
        with self.hold_sync():
            if list(self.options) != divisors(n_heads):
                self.options = divisors(n_heads)  # resets the value: hence the hold, and the value set after
            self.why = _only_divisors(n_heads)
            self.value = value
        return value


class Syncing:
    """Set while a widget writes into its own controls (a preset filling sliders, KV heads following query
    heads), so that the controls' observers let those writes pass instead of reacting to each one.

    ``with self._syncing:`` sets it for the block, however the block ends; ``if self._syncing:``
    reads it. Blocks may nest: it stays set until the outermost one ends.
    """

    def __init__(self):
        self._depth = 0  # blocks now inside one another

    def __bool__(self) -> bool:
        return self._depth > 0

    def __enter__(self) -> Syncing:
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
