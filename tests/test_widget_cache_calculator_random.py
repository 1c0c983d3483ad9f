"""Random sequences of changes to every control of notebook 01's calculator: the readout stays the arithmetic.

The expected bytes are recomputed here from the controls with the plain formula (not with the
widget's CacheRecipe): per storing layer and token, 2 * n_kv_heads vectors of head_dim numbers (or the
MLA latent and RoPE key), each at its number format's bytes plus, for int8/int4, a 2-byte scale and a
2-byte minimum per group of channels; local layers keep at most the window. ``oracle`` is also the check
tests/test_widget_properties.py can use.
"""

from __future__ import annotations

import html
import math
import re

import ipywidgets as ipw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gqa_lib import widgets
from gqa_lib.core.cache_math import auto_format_bytes
from gqa_lib.core.checks import divisors
from gqa_lib.models.catalog import get_model
from gqa_lib.widgets.cache_calculator import CUSTOM

BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "fp8": 8, "int8": 8, "int4": 4}


def vector_bytes(n: int, dtype: str, scale_group: int) -> int:
    data = math.ceil(n * BITS[dtype] / 8)
    if dtype not in ("int8", "int4"):
        return data
    group = min(scale_group or n, n)
    return data + math.ceil(n / group) * (2 + 2)  # a scale and a minimum per group


def expected_bytes(w) -> int:
    d, g = w.dtype.value, w.scale_group.value
    if w.cache_kind.value == "mla":
        per_layer = vector_bytes(w.d_c.value, d, g) + (vector_bytes(w.d_rope.value, d, g) if w.d_rope.value else 0)
    else:
        per_layer = 2 * w.n_kv_heads.value * vector_bytes(w.head_dim.value, d, g)
    ctx, n_layers, window = w.context.value, w.n_layers.value, w.window.value
    pattern = w.pattern.value[:n_layers] if window else "G"
    if window and "L" not in pattern:
        pattern = "L" + pattern[1:]
    k = w.share_every.value  # a group of k adjacent layers stores one cache, what its most demanding layer reads:
    kept = sum(ctx if any(pattern[j % len(pattern)] == "G" for j in range(i, min(i + k, n_layers)))
               else min(ctx, window) for i in range(0, n_layers, k))  # the whole context if any of them is global
    return per_layer * kept * w.batch.value


def oracle(w) -> None:
    text = html.unescape(re.sub(r"<[^>]+>", "", w.readout.value.replace("<br>", "\n")))
    n = expected_bytes(w)
    assert w.readout_values()["bytes"] == n
    line = f"Cache: {auto_format_bytes(n)} ({auto_format_bytes(n, binary=True)}) = {n:,} bytes, as built"
    assert line in text.splitlines(), f"readout lacks {line!r}:\n{text}"
    assert list(w.n_kv_heads.options) == divisors(w.n_heads.value) and w.n_kv_heads.value in w.n_kv_heads.options
    offered_shares = [k for _, k in w.share_every.options]  # no group larger than the model: nothing to clamp
    assert offered_shares == [k for k in (1, 2, 3, 4) if k <= w.n_layers.value]
    assert w.share_every.value in offered_shares
    v = w.readout_values()  # the reduction against MHA is the KV heads' factor times the layers' factor
    if w.cache_kind.value == "kv":
        assert v["heads_reduction"] == w.n_heads.value / w.n_kv_heads.value
    assert v["heads_reduction"] * v["layers_reduction"] == pytest.approx(v["reduction"], rel=1e-12)
    if w.preset.value != CUSTOM:
        spec = get_model(w.preset.value)
        assert (w.n_layers.value, w.n_heads.value, w.head_dim.value) == (spec.n_layers, spec.n_heads, spec.head_dim)
        assert w.window.value == (spec.sliding_window.window if spec.sliding_window else 0)


def offered(control) -> list:
    if isinstance(control, ipw.IntSlider):
        return list(range(control.min, control.max + 1, control.step))
    return list(control._options_values)


CONTROLS = ("preset", "n_layers", "n_heads", "n_kv_heads", "head_dim", "cache_kind", "d_c", "d_rope", "context",
            "batch", "dtype", "scale_group", "window", "pattern", "share_every")


@settings(max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_changes_to_every_control_keep_the_readout_right(data):
    w, log = widgets.kv_cache_calculator(), []
    oracle(w)
    for _ in range(data.draw(st.integers(1, 8), label="steps")):
        name = data.draw(st.sampled_from(CONTROLS), label="control")
        value = data.draw(st.sampled_from(offered(getattr(w, name))), label=f"{name} value")
        log.append(f"{name}={value!r}")
        try:
            getattr(w, name).value = value
            oracle(w)
        except Exception as e:
            raise AssertionError(f"after {', '.join(log)}: {type(e).__name__}: {e}") from e
