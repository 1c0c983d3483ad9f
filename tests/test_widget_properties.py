"""Random sequences of control changes on every cache widget: no exception, no invalid state, readouts = arithmetic.

Hypothesis drives each widget the way a restless reader would: pick any control, set it to any
value that control offers right now (slider positions on its step grid, the options a dropdown or
selection slider lists at that moment), again and again. After every change:

- nothing raised;
- the KV-head control offers exactly the divisors of the query heads, and its value is one of them;
- the readout shows the numbers ``gqa_lib.core.cache_math`` gives for the controls' current values,
  recomputed here from the controls (not taken from the widget), and ``readout_values()`` agrees;
- a model preset, when one is shown, matches the sliders.

Each example builds a fresh widget (so every example replays exactly, as Hypothesis needs) and a
failure message lists the changes made to it. The per-widget tests (tests/test_widget_*.py) pin single
behaviours; this file is the cross-widget random-sequence check.
"""

from __future__ import annotations

import html
import re

import ipywidgets as ipw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gqa_lib import widgets
from gqa_lib.core.cache_math import (
    ElementType,
    auto_format_bytes,
    dtype_bytes,
    kv_cache_bytes,
    reduction_vs_mha,
)
from gqa_lib.core.checks import divisors
from gqa_lib.core.layout import attention_kind

EXAMPLES = 10  # random sequences per widget (a build takes ~0.3-1.5 s, each update draws a PNG: ~0.1-0.5 s)
MAX_STEPS = 8
CONTROL_TYPES = (ipw.IntSlider, ipw.SelectionSlider, ipw.Dropdown, ipw.ToggleButtons, ipw.Checkbox)
NOT_CONTROLS = {"readout", "image", "plot", "source", "note"}


def controls_of(w) -> dict:
    """The widget's controls by attribute name (what a reader can change)."""
    return {name: c for name, c in sorted(vars(w).items())
            if isinstance(c, CONTROL_TYPES) and not name.startswith("_") and name not in NOT_CONTROLS}


def offered(control) -> list:
    """Every value the control offers right now."""
    if isinstance(control, ipw.IntSlider):
        return list(range(control.min, control.max + 1, control.step))
    if isinstance(control, ipw.Checkbox):
        return [False, True]
    return list(control._options_values)  # selection widgets: the values behind the shown labels


def text_of(readout_html: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", readout_html))


def check_kv_choices(w) -> None:
    if hasattr(w, "n_heads") and isinstance(getattr(w, "n_kv_heads", None), CONTROL_TYPES):
        options, h = list(w.n_kv_heads._options_values), w.n_heads.value
        assert options == divisors(h), f"KV-head choices {options} for {h} query heads; valid: {divisors(h)}"
        assert w.n_kv_heads.value in options


def expect_in(readout_html: str, *facts: str) -> None:
    text = text_of(readout_html)
    missing = [f for f in facts if f not in text]
    assert not missing, f"readout lacks {missing}:\n{text}"


def size(n: int) -> str:
    return f"{auto_format_bytes(n)} ({auto_format_bytes(n, binary=True)})"


# ---- the arithmetic each widget must show, from its controls ------------------------------------

def oracle_group_explorer(w) -> None:
    h, kv, d, ctx = w.n_heads.value, w.n_kv_heads.value, w.head_dim.value, w.context.value
    v = w.readout_values()
    b = dtype_bytes(v["dtype"])
    total = kv_cache_bytes(v["n_layers"], kv, d, ctx, v["batch"], b)
    mha = kv_cache_bytes(v["n_layers"], h, d, ctx, v["batch"], b)
    heads, kv_heads = (f"{n} {word}{'' if n == 1 else 's'}" for n, word in ((h, "query head"), (kv, "KV head")))
    saving = "the same size (1x" if kv == h else f"{reduction_vs_mha(h, kv):g}x smaller"
    expect_in(w.readout.value, f"{attention_kind(h, kv)}: {heads} read{'s' if h == 1 else ''} {kv_heads}",
              f"KV cache: {size(total)}", f"MHA of the same shape: {auto_format_bytes(mha)}",
              saving, f"x {kv_heads} x head dim {d} x {ctx:,} tokens")
    assert (v["n_heads"], v["n_kv_heads"], v["cache_bytes"]) == (h, kv, total), "readout_values() is stale"


def oracle_mqa(w) -> None:
    vector = ElementType(w.dtype.value).vector_bytes(w.head_dim.value)  # int8/int4: scales and minima included
    mqa = 2 * vector * w.n_layers.value * w.context.value * w.batch.value  # one KV head: K and V, every layer
    mha = w.n_heads.value * mqa
    reduction = "Reduction: none (1x)" if w.n_heads.value == 1 else f"Reduction: {w.n_heads.value}x"
    expect_in(w.readout.value, f"{auto_format_bytes(mha)} = {auto_format_bytes(mha, binary=True)}",
              f"{auto_format_bytes(mqa)} = {auto_format_bytes(mqa, binary=True)}", reduction,
              f"Assumes {w.context.value:,} tokens, batch {w.batch.value}")
    assert (w.readout_values()["mha_bytes"], w.readout_values()["mqa_bytes"]) == (mha, mqa)


def _vector_bytes(dtype: str, n: int) -> int:
    """Written out here, apart from the library: integers pack ``bits`` per number and store a 2-byte scale and a
    2-byte minimum per group of 64 numbers (a shorter vector is one group); float formats store the numbers only."""
    bits = {"fp32": 32, "fp16": 16, "bf16": 16, "fp8": 8, "int8": 8, "int4": 4}[dtype]
    scales = -(-n // 64) * 4 if dtype in ("int8", "int4") else 0
    return -(-n * bits // 8) + scales


def oracle_mla(w) -> None:
    dt = w.dtype.value
    L, d, n = w.n_layers.value, w.head_dim.value, w.seq_len.value
    kv = 2 * _vector_bytes(dt, d) * L  # K and V of one KV head, every layer
    latent = (_vector_bytes(dt, w.d_c.value) + (_vector_bytes(dt, w.d_rope.value) if w.d_rope.value else 0)) * L
    per_token = {"MHA": w.n_heads.value * kv, "GQA": w.n_kv_heads.value * kv, "MQA": kv, "MLA": latent}
    facts = [f"at {n:,} tokens"]
    for per in per_token.values():
        facts += [f"{per:,} B", f"{auto_format_bytes(per * n)} = {auto_format_bytes(per * n, binary=True)}"]
    expect_in(w.readout.value, *facts)
    assert w.readout_values()["per_token"] == per_token


# The KV-cache calculator has its own random walk over all its controls (window, sharing, int4 scales,
# MLA latent): tests/test_widget_cache_calculator_random.py.
WIDGETS = {
    "group_explorer": oracle_group_explorer,
    "mqa_cache_comparison": oracle_mqa,
    "mla_cache_comparison": oracle_mla,
}


@pytest.mark.parametrize("name", list(WIDGETS))
@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_control_changes_keep_the_widget_valid_and_right(name, data):
    w, log = getattr(widgets, name)(), []
    oracle = WIDGETS[name]
    check_kv_choices(w)  # the freshly built widget must already be right
    oracle(w)
    controls = controls_of(w)
    assert controls, f"{name} exposes no controls as attributes"
    for _ in range(data.draw(st.integers(1, MAX_STEPS), label="steps")):
        control = data.draw(st.sampled_from(sorted(controls)), label="control")
        value = data.draw(st.sampled_from(offered(controls[control])), label=f"{control} value")
        log.append(f"{control}={value!r}")
        try:
            controls[control].value = value
            check_kv_choices(w)
            oracle(w)
        except Exception as e:
            raise AssertionError(f"{name} after the changes {', '.join(log)}: {type(e).__name__}: {e}") from e
