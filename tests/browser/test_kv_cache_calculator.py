"""Notebook 01's KV-cache calculator in the browser: keyboard, model presets, readout against the arithmetic.

Every check reads the values the reader sees in the DOM (slider readouts, the chosen dropdown
option), computes the cache with ``gqa_lib.core.cache_math`` here in the test, and compares with the
text the widget shows. The readout format is the one documented in gqa_lib/widgets/cache_calculator.py.
"""

from __future__ import annotations

import importlib

import pytest
from series import notebook_showing

from gqa_lib import widgets
from gqa_lib.core.cache_math import QUANTIZED, CacheRecipe, ElementType, auto_format_bytes
from gqa_lib.core.checks import divisors
from gqa_lib.core.layout import attention_kind
from gqa_lib.models.catalog import get_model

NOTEBOOK = notebook_showing("kv_cache_calculator")
nearest_valid_kv_heads = importlib.import_module(widgets.kv_cache_calculator.__module__).nearest_valid_kv_heads
LAYERS, HEADS, KV, HEAD_DIM, CONTEXT, BATCH = "layers", "query heads", "KV heads (groups)", "head dim", \
    "context (tokens)", "batch"
MODEL, DTYPE, SCALES, WINDOW, LOCAL, SHARED, STORES = "model", "dtype", "scale + min", "sliding window", \
    "local layers", "K/V shared by", "cache stores"
LATENT, ROPE = "MLA latent", "MLA RoPE key"
_module = importlib.import_module(widgets.kv_cache_calculator.__module__)
PATTERN_OF = {t: p for p, t in _module.PATTERNS.items()}  # the label shown -> the value behind it
SCALE_GROUP_OF = {t: g for g, t in _module.SCALE_GROUPS.items()}
SHARE_OF = {t: k for k, t in _module.SHARING.items()}

pytestmark = pytest.mark.skipif(NOTEBOOK is None, reason="no notebook shows widgets.kv_cache_calculator() yet")


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def shown(nb, root) -> dict:
    """What the reader sees: the control values and the readout lines."""
    c = nb.controls(root)
    s, d = c["sliders"], c["dropdowns"]
    readout = [t for t in c["html"] if t.startswith("Kind:")]
    assert len(readout) == 1, f"expected one readout starting 'Kind:', got {c['html']}"
    window = d[WINDOW]["selected"]
    pattern = d[LOCAL]["selected"]
    return {
        "n_layers": _int(s[LAYERS]["readout"]), "n_heads": _int(s[HEADS]["readout"]),
        "n_kv_heads": _int(s[KV]["readout"]), "kv_choices": int(s[KV]["max"]) + 1,
        "head_dim": _int(s[HEAD_DIM]["readout"]), "context": _int(s[CONTEXT]["readout"]),
        "batch": _int(s[BATCH]["readout"]), "dtype": d[DTYPE]["selected"].split()[0],
        "mla": d[STORES]["selected"].startswith("MLA"), "d_c": _int(s[LATENT]["readout"]),
        "d_rope": _int(s[ROPE]["readout"]), "scale_group": SCALE_GROUP_OF[d[SCALES]["selected"]],
        "window": 0 if window.startswith("none") else _int(window.split()[0]),
        "pattern": PATTERN_OF.get(pattern, pattern.removeprefix("pattern ")),
        "share_every": SHARE_OF[d[SHARED]["selected"]],
        "model": d[MODEL]["selected"],
        "lines": [line.strip() for line in readout[0].splitlines() if line.strip()],
    }


def recipe(v: dict) -> CacheRecipe:
    """The cache the shown controls describe."""
    element = ElementType(v["dtype"], v["scale_group"] or None) if v["dtype"] in QUANTIZED else ElementType(v["dtype"])
    local = dict(pattern=v["pattern"][:v["n_layers"]], window=v["window"]) if v["window"] else {}
    share = min(v["share_every"], v["n_layers"])
    if v["mla"]:
        return CacheRecipe(v["n_layers"], element=element, share_every=share, d_c=v["d_c"], d_rope=v["d_rope"], **local)
    return CacheRecipe(v["n_layers"], v["n_kv_heads"], v["head_dim"], element, share_every=share, **local)


def expected_lines(v: dict) -> dict[int, str]:
    """Readout lines (by position) for these values, from gqa_lib's arithmetic."""
    r = recipe(v)
    total, all_global = r.cache_bytes(v["context"], v["batch"]), r.cache_bytes(v["context"], v["batch"], False)
    mha = CacheRecipe(v["n_layers"], v["n_heads"], v["head_dim"], r.element).cache_bytes(v["context"], v["batch"])

    def size(n):
        return f"{auto_format_bytes(n)} ({auto_format_bytes(n, binary=True)})"

    h, kv = v["n_heads"], v["n_kv_heads"]
    lines = {1: f"Cache: {size(total)} = {total:,} bytes, as built", 5: reduction_line(v, r, mha, total)}
    if not v["mla"]:
        plural = "s" if kv > 1 else ""
        lines[0] = (f"Kind: {attention_kind(h, kv)} ({h} query head{'s' if h > 1 else ''}, {kv} KV head{plural} "
                    f"(= {kv} group{plural}), group size {h // kv})")
    if all_global != total:
        lines[2] = (f"All layers global: {size(all_global)} = {all_global:,} bytes, an upper bound "
                    f"({all_global / total:.2f}x the cache as built)")
    if v["dtype"] not in QUANTIZED:
        b = r.element.bits // 8
        lines[6] = (f"Assumptions: batch {v['batch']:,}, {v['context']:,} tokens, {v['dtype']} = {b} "
                    f"byte{'s' if b > 1 else ''} per number; GB = 10^9 bytes, GiB = 2^30 bytes")
    return lines


def reduction_line(v: dict, r: CacheRecipe, mha: int, total: int) -> str:
    """Line 6: the reduction against MHA, split into the KV heads' (or latent's) factor and the layers' factor."""
    plain = CacheRecipe(v["n_layers"], element=r.element, d_c=v["d_c"], d_rope=v["d_rope"]) if v["mla"] else \
        CacheRecipe(v["n_layers"], v["n_kv_heads"], v["head_dim"], r.element)  # all layers global, none shared
    first = plain.cache_bytes(v["context"], v["batch"])
    h, kv = v["n_heads"], v["n_kv_heads"]
    heads = "the latent instead of per-head K and V" if v["mla"] else \
        f"KV heads ({h} query head{'s' if h > 1 else ''} / {kv} KV head{'s' if kv > 1 else ''})"
    levers = " and ".join(n for n, on in (("local layers", r.local_layers()), ("K/V sharing", v["share_every"] > 1))
                          if on)
    larger = "" if mha >= total else f" (the cache is {total / mha:.2f}x larger)"
    how = f" = {mha / first:.2f}x from {heads} × {first / total:.2f}x from {levers}" if levers else \
        f", all from {heads}"
    return f"Reduction against MHA of the same shape: {mha / total:.2f}x{larger}{how}; MHA would cache {size_of(mha)}"


def size_of(n: int) -> str:
    return f"{auto_format_bytes(n)} ({auto_format_bytes(n, binary=True)})"


def check(nb, root, what: str) -> dict:
    v = shown(nb, root)
    assert v["n_heads"] % v["n_kv_heads"] == 0, f"after {what}: KV heads {v['n_kv_heads']} do not divide {v}"
    assert v["kv_choices"] == len(divisors(v["n_heads"])), \
        f"after {what}: the KV slider offers {v['kv_choices']} positions, divisors of {v['n_heads']} are " \
        f"{divisors(v['n_heads'])}"
    assert len(v["lines"]) == 7, f"after {what}: the readout has {len(v['lines'])} lines, not 7: {v['lines']}"
    wrong = {i: (v["lines"][i], line) for i, line in expected_lines(v).items() if v["lines"][i] != line}
    assert not wrong, f"after {what}: readout differs from the arithmetic (shown, expected): {wrong}"
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
    assert v["model"] == "custom", "moving a shape slider away from a model must switch the dropdown to custom"
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
    for label, option in [(WINDOW, "1,024 tokens"), (LOCAL, "5 local : 1 global"), (SHARED, "pairs of layers"),
                          (DTYPE, "int4 (0.5 byte + scales)"), (SCALES, "per 32 channels"), (STORES,
                          "MLA latent + RoPE key"), (WINDOW, "none (all global)"), (SHARED, "none (each layer)"),
                          (STORES, "K and V per KV head"), (DTYPE, "fp32 (4 bytes)")]:
        nb.choose(root, label, option)
        check(nb, root, f"{label}: {option}")


# From 32 query heads to 71 (Falcon-7B, MQA), 28 (Qwen2.5-7B), 12 (GPT-2, MHA) and 4 with 1 KV head (Gemma 3 1B):
# the KV slider's list of choices changes length each time. Mistral and Gemma have sliding-window layers,
# DeepSeek-V3 caches MLA's latent.
@pytest.mark.parametrize("model", ["Mistral 7B", "Falcon-7B", "Qwen2.5-7B", "GPT-2 small", "Gemma 3 1B",
                                   "DeepSeek-V3 671B"])
def test_model_preset_sets_the_shape(calculator, model, screenshots_dir):
    nb, root = calculator
    nb.choose(root, MODEL, model)
    if model == "Falcon-7B":  # before the checks, so the picture is there when they fail
        nb.screenshot(screenshots_dir / "01-kv-cache-calculator-after-keyboard-and-presets.png", root)
    v = check(nb, root, f"choosing {model}")
    spec = get_model(model)
    assert (v["n_layers"], v["n_heads"], v["head_dim"], v["context"]) == \
        (spec.n_layers, spec.n_heads, spec.head_dim, spec.context), f"{model}: sliders {v}"
    assert v["mla"] == (spec.mla is not None) and (spec.mla is not None or v["n_kv_heads"] == spec.n_kv_heads)
    assert v["window"] == (spec.sliding_window.window if spec.sliding_window else 0)
    assert v["model"] == model
    if model == "Gemma 3 1B":  # the windowed cache, with the all-global figure beside it, at batch 1 in bf16
        nb.press(root, BATCH, "Home")
        nb.choose(root, DTYPE, "bf16 (2 bytes)")
        v = check(nb, root, "Gemma 3 1B, batch 1, bf16")
        nb.screenshot(screenshots_dir / "01-kv-cache-calculator-gemma-3-1b.png", root)
        assert v["lines"][1] == "Cache: 145.75 MB (139.00 MiB) = 145,752,064 bytes, as built"
        assert v["lines"][2].startswith("All layers global: 872.42 MB (832.00 MiB) = 872,415,232 bytes, an upper")
    if model == "Falcon-7B":  # MQA with 71 query heads: the only valid KV-head counts are 1 and 71
        assert kv_choices_by_keyboard(nb, root) == divisors(71) == [1, 71]
        nb.press(root, KV, "Home")
        check(nb, root, "Falcon-7B, KV Home")
