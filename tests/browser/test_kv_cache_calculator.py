"""Notebook 01's KV-cache calculator in the browser: keyboard, model presets, readout against the arithmetic.

Every check reads the values the reader sees in the DOM (slider readouts, the chosen dropdown
option), computes the cache with ``gqa_lib.cache_math`` here in the test, and compares with the
text the widget shows. The readout format is the one documented in gqa_lib/widgets/cache_calculator.py.
"""

from __future__ import annotations

import importlib

import pytest
from series import notebook_showing

from gqa_lib import widgets
from gqa_lib.cache_math import auto_format_bytes, dtype_bytes, kv_cache_bytes, reduction_vs_mha
from gqa_lib.layout import attention_kind, divisors
from gqa_lib.models import get_model

NOTEBOOK = notebook_showing("kv_cache_calculator")
nearest_valid_kv_heads = importlib.import_module(widgets.kv_cache_calculator.__module__).nearest_valid_kv_heads
LAYERS, HEADS, KV, HEAD_DIM, CONTEXT, BATCH = "layers", "query heads", "KV heads (groups)", "head dim", \
    "context (tokens)", "batch"
MODEL, DTYPE = "model", "dtype"

pytestmark = pytest.mark.skipif(NOTEBOOK is None, reason="no notebook shows widgets.kv_cache_calculator() yet")


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def shown(nb, root) -> dict:
    """What the reader sees: the control values and the readout lines."""
    c = nb.controls(root)
    s = c["sliders"]
    readout = [t for t in c["html"] if t.startswith("Kind:")]
    assert len(readout) == 1, f"expected one readout starting 'Kind:', got {c['html']}"
    return {
        "n_layers": _int(s[LAYERS]["readout"]), "n_heads": _int(s[HEADS]["readout"]),
        "n_kv_heads": _int(s[KV]["readout"]), "kv_choices": int(s[KV]["max"]) + 1,
        "head_dim": _int(s[HEAD_DIM]["readout"]), "context": _int(s[CONTEXT]["readout"]),
        "batch": _int(s[BATCH]["readout"]), "dtype": c["dropdowns"][DTYPE]["selected"].split()[0],
        "model": c["dropdowns"][MODEL]["selected"],
        "lines": [line.strip() for line in readout[0].splitlines() if line.strip()],
    }


def expected_lines(v: dict) -> list[str]:
    """The five readout lines for these values, from gqa_lib's arithmetic."""
    b = dtype_bytes(v["dtype"])
    h, kv = v["n_heads"], v["n_kv_heads"]
    total = kv_cache_bytes(v["n_layers"], kv, v["head_dim"], v["context"], v["batch"], b)
    per_token = kv_cache_bytes(v["n_layers"], kv, v["head_dim"], 1, 1, b)
    mha = kv_cache_bytes(v["n_layers"], h, v["head_dim"], v["context"], v["batch"], b)

    def size(n):
        return f"{auto_format_bytes(n)} ({auto_format_bytes(n, binary=True)})"

    return [
        f"Kind: {attention_kind(h, kv)} ({h} query heads, {kv} KV heads (= groups), group size {h // kv})",
        f"Cache: {size(total)} = {total:,} bytes",
        f"Per token: {per_token:,} bytes ({auto_format_bytes(per_token, binary=True)}) over all {v['n_layers']} "
        "layers, one sequence",
        f"Reduction against MHA of the same shape: {reduction_vs_mha(h, kv):.2f}x (MHA would cache {size(mha)})",
        f"Assumptions: batch {v['batch']:,}, {v['context']:,} tokens, {v['dtype']} = {b} byte{'s' if b > 1 else ''} "
        "per number; GB = 10^9 bytes, GiB = 2^30 bytes",
    ]


def check(nb, root, what: str) -> dict:
    v = shown(nb, root)
    assert v["n_heads"] % v["n_kv_heads"] == 0, f"after {what}: KV heads {v['n_kv_heads']} do not divide {v}"
    assert v["kv_choices"] == len(divisors(v["n_heads"])), \
        f"after {what}: the KV slider offers {v['kv_choices']} positions, divisors of {v['n_heads']} are " \
        f"{divisors(v['n_heads'])}"
    assert v["lines"] == expected_lines(v), f"after {what}: readout differs from the arithmetic"
    return v


def kv_choices_by_keyboard(nb, root) -> list[int]:
    """Every KV-head value the reader can reach with the keyboard, as the readout reports it."""
    return [v["n_kv_heads"] for v in nb.values_reachable_by_keyboard(root, KV, shown, "kv_choices")]


@pytest.fixture(scope="module")
def calculator(executed):
    nb = executed(NOTEBOOK)
    assert not nb.errors(), nb.errors()
    return nb, nb.widget_with_slider(KV)


def test_initial_readout_is_the_arithmetic(calculator):
    check(*calculator, "Run All")


def test_keyboard_moves_keep_readout_and_kv_choices_right(calculator):
    nb, root = calculator
    start = check(nb, root, "Run All")
    nb.press(root, LAYERS, "ArrowRight", times=2)
    v = check(nb, root, "layers +2")
    assert v["n_layers"] == start["n_layers"] + 2
    assert v["model"] == "(custom)", "moving a shape slider away from a model must switch the dropdown to (custom)"
    nb.press(root, HEADS, "ArrowLeft")  # e.g. 32 -> 31, a prime: only 1 and 31 divide it
    v = check(nb, root, "query heads -1")
    rule = nearest_valid_kv_heads(v["n_heads"], start["n_kv_heads"], keep_mha=start["n_kv_heads"] == start["n_heads"])
    assert v["n_kv_heads"] == rule, f"KV heads went {start['n_kv_heads']} -> {v['n_kv_heads']}, the widget's rule " \
        f"(nearest divisor; MHA stays MHA) gives {rule}"
    assert kv_choices_by_keyboard(nb, root) == divisors(v["n_heads"])
    nb.press(root, HEADS, "ArrowRight")
    v = check(nb, root, "query heads +1")
    assert kv_choices_by_keyboard(nb, root) == divisors(v["n_heads"])
    nb.press(root, KV, "ArrowLeft")
    check(nb, root, "KV heads -1 position")
    nb.press(root, HEAD_DIM, "ArrowLeft")
    check(nb, root, "head dim -1 step")
    nb.press(root, CONTEXT, "ArrowRight")
    check(nb, root, "context +1 position")
    nb.press(root, BATCH, "ArrowRight", times=3)
    check(nb, root, "batch +3")
    nb.choose(root, DTYPE, "fp32 (4 bytes)")
    v = check(nb, root, "dtype fp32")
    assert v["dtype"] == "fp32"


# From 32 query heads to 71 (Falcon-7B, MQA), 28 (Qwen2.5-7B), 12 (GPT-2, MHA) and 4 with 1 KV head (Gemma 3 1B):
# the KV slider's list of choices changes length each time.
@pytest.mark.parametrize("model", ["Mistral 7B", "Falcon-7B", "Qwen2.5-7B", "GPT-2 small", "Gemma 3 1B"])
def test_model_preset_sets_the_shape(calculator, model, screenshots_dir):
    nb, root = calculator
    nb.choose(root, MODEL, model)
    if model == "Falcon-7B":  # before the checks, so the picture is there when they fail
        nb.screenshot(screenshots_dir / "01-kv-cache-calculator-after-keyboard-and-presets.png", root)
    v = check(nb, root, f"choosing {model}")
    spec = get_model(model)
    assert (v["n_layers"], v["n_heads"], v["n_kv_heads"], v["head_dim"], v["context"]) == \
        (spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.head_dim, spec.context), f"{model}: sliders {v}"
    assert v["model"] == model
    if model == "Falcon-7B":  # MQA with 71 query heads: the only valid KV-head counts are 1 and 71
        assert kv_choices_by_keyboard(nb, root) == divisors(71) == [1, 71]
        nb.press(root, KV, "Home")
        check(nb, root, "Falcon-7B, KV Home")
