"""Checks that several widget test files make, written once: each file keeps its own numbers and texts."""

from __future__ import annotations

import re
import resource

import pytest

from gqa_lib.models import smollm


def module_widget(build):
    """A fixture named ``widget``: one widget from ``build()`` for the whole test module (building one is slow)."""
    return pytest.fixture(scope="module", name="widget")(lambda: build())


def not_offered(sliders: dict | None = None, choices: dict | None = None) -> list[tuple]:
    """(control, value, message) cases for values a widget's controls do not offer.

    sliders: name -> (min, max): the slider set one below and one above its range. choices: name -> (a value
    not offered, the valid values as a regular expression). Each message is the one the series' controls give.
    """
    cases = []
    for name, (low, high) in (sliders or {}).items():
        for v in (low - 1, high + 1):
            cases.append((name, v, rf"{name}={v} is outside the slider \(valid: {low}\.\.{high}\)"))
    for name, (value, valid) in (choices or {}).items():
        cases.append((name, value, rf"{name}={re.escape(repr(value))} is not offered \(valid: {valid}\)"))
    return cases


def refused_not_clamped(widget, control: str, value, message: str) -> None:
    """Setting ``widget.<control>`` to ``value`` raises a ValueError matching ``message``; the control keeps its
    value (refused, not clamped)."""
    before = getattr(widget, control).value
    with pytest.raises(ValueError, match=message):
        getattr(widget, control).value = value
    assert getattr(widget, control).value == before


def paste_long_pages(widget, monkeypatch, max_tokens: int, max_growth_mb: float = 200, pages: int = 6) -> None:
    """Paste ``pages`` texts of about 1,500 tokens into ``widget.text``: SmolLM2 must see at most ``max_tokens``,
    and the process's peak resident memory must grow by less than ``max_growth_mb`` (ru_maxrss counts KiB on Linux).
    """
    seen = []
    real = smollm.capture_layers

    def spy(text, *args, **kwargs):
        seen.append(len(smollm.load_smollm()[1](text)["input_ids"]))
        return real(text, *args, **kwargs)

    monkeypatch.setattr(smollm, "capture_layers", spy)
    peak_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for k in range(pages):
        widget.text.value = f"Page {k}: " + "the cat sat on the mat and looked at the door. " * 125  # ~1,500 tokens
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kib) / 1024
    assert seen and max(seen) <= max_tokens, f"the model was run on texts of {seen} tokens"
    assert widget.readout_values()["n_tokens_in_text"] > 1000
    assert growth_mb < max_growth_mb, f"peak resident memory grew by {growth_mb:.0f} MB"


def one_token_is_explained(widget, says: str, value: str) -> None:
    """A one-token text: the readout ``says`` why two tokens are needed and shows no nan; ``readout_values()[value]``
    is None."""
    widget.text.value = "Hello"
    text = widget.readout.value
    assert says in text and "1 token" in text
    assert "nan" not in text.lower() and "1 tokens" not in text
    assert widget.readout_values()[value] is None
