"""Notebook 04's group explorer in the browser: keyboard moves, KV-head choices, readout against the arithmetic.

Each check reads the sliders the reader sees, computes the cache with ``gqa_lib.core.cache_math`` here,
and looks for those numbers, next to their names, in the widget's text.
"""

from __future__ import annotations

import re

import pytest
from series import notebook_showing

from gqa_lib.core.cache_math import auto_format_bytes, dtype_bytes, kv_cache_bytes, reduction_vs_mha
from gqa_lib.core.checks import closest_divisor, divisors  # the rule the widget's KV slider follows
from gqa_lib.core.layout import attention_kind

NOTEBOOK = notebook_showing("group_explorer")
HEADS, KV, HEAD_DIM, CONTEXT = "query heads", "KV heads (= groups)", "head dim", "context (tokens)"
FORMULA = re.compile(r"= 2 \(K and V\) x (?P<n_layers>\d+) layers? x (?P<kv>\d+) KV heads? x head dim (?P<d>\d+) x "
                     r"(?P<ctx>[\d,]+) tokens x batch (?P<batch>\d+) x (?P<b>\d+) bytes? \((?P<dtype>\w+)\)")

pytestmark = pytest.mark.skipif(NOTEBOOK is None, reason="no notebook shows widgets.group_explorer() yet")


def _tokens(label: str) -> int:
    """'8k' -> 8192, '256' -> 256 (the context slider's labels)."""
    return int(label[:-1]) * 1024 if label.endswith("k") else int(label.replace(",", ""))


def shown(nb, root) -> dict:
    c = nb.controls(root)
    s = c["sliders"]
    texts = [t for t in c["html"] if "KV cache:" in t]
    assert len(texts) == 1, f"expected one readout with 'KV cache:', got {c['html']}"
    lines = [line.strip() for line in texts[0].splitlines() if line.strip()]
    return {"n_heads": int(s[HEADS]["readout"]), "n_kv_heads": int(s[KV]["readout"]),
            "kv_choices": int(s[KV]["max"]) + 1, "head_dim": int(s[HEAD_DIM]["readout"]),
            "context": _tokens(s[CONTEXT]["readout"]), "lines": lines}


def check(nb, root, what: str) -> dict:
    v = shown(nb, root)
    h, kv, d, ctx = v["n_heads"], v["n_kv_heads"], v["head_dim"], v["context"]
    assert h % kv == 0 and v["kv_choices"] == len(divisors(h)), f"after {what}: KV slider offers {v['kv_choices']} " \
        f"positions at {kv}; divisors of {h}: {divisors(h)}"
    m = FORMULA.search(v["lines"][2])
    assert m, f"after {what}: formula line not found in {v['lines']}"
    n_layers, batch, b, dtype = int(m["n_layers"]), int(m["batch"]), int(m["b"]), m["dtype"]
    assert b == dtype_bytes(dtype)
    assert (int(m["kv"]), int(m["d"]), int(m["ctx"].replace(",", ""))) == (kv, d, ctx), \
        f"after {what}: the formula {m.group(0)!r} does not show the sliders' values {kv}, {d}, {ctx}"
    cache = kv_cache_bytes(n_layers, kv, d, ctx, batch, b)
    mha = kv_cache_bytes(n_layers, h, d, ctx, batch, b)
    text = "\n".join(v["lines"])
    # The wording may change; the numbers, and what they are next to, must not.
    heads = f"{h} query head{'s read' if h > 1 else ' reads'} {kv} KV head{'s' if kv > 1 else ''} (= groups)"
    saving = "the same size (1x" if kv == h else f"{reduction_vs_mha(h, kv):g}x smaller"
    for fact in (f"{attention_kind(h, kv)}: {heads}",
                 f"KV cache: {auto_format_bytes(cache)} ({auto_format_bytes(cache, binary=True)})",
                 f"MHA of the same shape: {auto_format_bytes(mha)}", saving, f"{h // kv} query head"):
        assert fact in text, f"after {what}: {fact!r} is not in the readout:\n{text}"
    return v


def kv_choices_by_keyboard(nb, root) -> list[int]:
    """Every KV-head value the reader can reach with the keyboard, as the readout reports it."""
    return [v["n_kv_heads"] for v in nb.values_reachable_by_keyboard(root, KV, shown, "kv_choices")]


@pytest.fixture(scope="module")
def explorer(executed):
    nb = executed(NOTEBOOK)
    assert not nb.errors(), nb.errors()
    return nb, nb.widget_with_slider(KV)


def test_initial_readout_is_the_arithmetic(explorer):
    check(*explorer, "Run All")


def test_keyboard_moves_keep_readout_and_kv_choices_right(explorer, screenshots_dir):
    nb, root = explorer
    for key, times in (("ArrowLeft", 1), ("ArrowRight", 1), ("ArrowRight", 4), ("ArrowLeft", 4)):
        before = shown(nb, root)
        nb.press(root, HEADS, key, times)
        v = check(nb, root, f"query heads {key} x{times}")
        want = before["n_kv_heads"]
        for h in range(before["n_heads"], v["n_heads"], 1 if v["n_heads"] > before["n_heads"] else -1):
            want = closest_divisor(h + (1 if v["n_heads"] > before["n_heads"] else -1), want)
        assert v["n_kv_heads"] == want, f"KV heads {before['n_kv_heads']} -> {v['n_kv_heads']} after query heads " \
            f"{before['n_heads']} -> {v['n_heads']}; keeping the closest divisor at each step gives {want}"
        assert kv_choices_by_keyboard(nb, root) == divisors(v["n_heads"])
    nb.press(root, KV, "ArrowLeft")
    check(nb, root, "KV heads -1 position")
    nb.press(root, HEAD_DIM, "ArrowLeft")
    check(nb, root, "head dim -1 position")
    nb.press(root, CONTEXT, "ArrowRight", times=2)
    check(nb, root, "context +2 positions")
    nb.press(root, HEADS, "End")
    v = check(nb, root, "query heads End")
    assert v["n_heads"] == int(nb.controls(root)["sliders"][HEADS]["max"])
    nb.screenshot(screenshots_dir / "04-group-explorer-after-keyboard.png", root)


def test_llama3_70b_preset_gives_its_80_layers(explorer, screenshots_dir):
    nb, root = explorer
    nb.choose(root, "model preset", "Llama-3 70B")
    v = check(nb, root, "choosing Llama-3 70B")
    assert (v["n_heads"], v["n_kv_heads"], v["head_dim"]) == (64, 8, 128)
    assert int(nb.controls(root)["sliders"]["layers"]["readout"]) == 80


def test_order_toggle_redraws_in_the_repeat_order(explorer, screenshots_dir):
    nb, root = explorer
    from playwright.sync_api import expect

    nb.choose(root, "model preset", "Llama-3 8B")
    picture = root.locator("img").first
    before = picture.get_attribute("src")
    nb.click_and_wait(root, root.locator(".widget-toggle-buttons button", has_text="repeat"))
    # On a busy machine the redraw can arrive after the probe settles: wait for it (a new picture) explicitly.
    expect(picture).not_to_have_attribute("src", before, timeout=30_000)
    expect(root.locator(".widget-html-content").first).to_contain_text("i % n_kv_heads", timeout=30_000)
    nb.screenshot(screenshots_dir / "04-group-explorer-repeat-order.png", root)
    nb.click_and_wait(root, root.locator(".widget-toggle-buttons button", has_text="contiguous"))
