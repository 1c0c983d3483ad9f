"""Every widget of the series can be read: no text of it is cut short or covered, whatever its controls show.

For each widget a notebook shows: at its state after Run All, then after moving each slider to its
minimum and its maximum (Home, End), choosing the first and last option of each dropdown and pressing
each toggle button, every piece of widget text (labels, slider readouts, buttons, the chosen option of
a dropdown, HTML readouts) must fit its box and be on top (``NotebookPage.text_problems``) in a
laptop's window (``WIDTHS[1]``: where a squeezed row of controls covered its slider values), and, after
Run All and at the end of the walk, in a wide one too (``WIDTHS[0]``).
The controls are left where the walk ends: this file runs after the other tests of the notebook, and the
latency tests, which run last, time key presses from there (conftest.py).

A screenshot of each widget at the end of its walk lands in build/screenshots/.
"""

from __future__ import annotations

import pytest
from series import NOTEBOOKS, WIDGET_NOTEBOOKS, widget_calls

WIDTHS = (1400, 1024)  # browser window widths in CSS pixels: the tests' own, and a laptop's with JupyterLab's chrome
CASES = [(name, i, builder) for name in WIDGET_NOTEBOOKS for i, builder in enumerate(widget_calls(NOTEBOOKS / name))]


def _labels(root, css: str) -> list[str]:
    return [t.strip() for t in root.locator(f"{css} > .widget-label").all_inner_texts() if t.strip()]


def states(nb, root):
    """Move every control of the widget to its extremes, one after the other; yield what was done each time."""
    yield "after Run All"
    for label in _labels(root, ".widget-slider"):
        if nb.slider(root, label).disabled:  # greyed out (its keys move nothing): no new state to check
            continue
        for key, where in (("Home", "minimum"), ("End", "maximum")):
            s = nb.slider(root, label)
            if s.value != (s.min if key == "Home" else s.max):  # a key that moves nothing changes nothing to check
                nb.press(root, label, key)
            yield f"slider {label!r} at its {where}"
    for label in _labels(root, ".widget-dropdown"):
        box = nb._labelled(root, ".widget-dropdown", label)
        options = [o.strip() for o in box.locator("option").all_inner_texts()]
        for option in (options[0], options[-1]):
            chosen = box.locator("select").evaluate("s => s.options[s.selectedIndex].text").strip()
            if chosen != option:  # choosing the option already shown changes nothing
                nb.choose(root, label, option.replace("\u00a0", " "))
            yield f"dropdown {label!r} at {option!r}"
    buttons = root.locator(".widget-toggle-buttons button")
    for k in range(buttons.count()):
        nb.click_and_wait(root, buttons.nth(k))
        yield f"toggle button {buttons.nth(k).inner_text()!r} pressed"


@pytest.mark.parametrize("name,index,builder", CASES, ids=[f"{n[:2]}-{b}-{i}" for n, i, b in CASES])
def test_no_widget_text_is_cut_or_covered(name, index, builder, executed, screenshots_dir):
    nb = executed(name)
    roots = nb.widget_roots()
    assert roots.count() > index, f"{name}: widget {index} ({builder}) was not drawn"
    root = roots.nth(index)
    found = []
    size = nb.page.viewport_size
    wide, narrow = WIDTHS

    def check(state: str, width: int) -> None:
        nb.page.set_viewport_size({"width": width, "height": size["height"]})
        nb.page.wait_for_timeout(150)  # JupyterLab lays its panels out again
        found.extend(f"{state}, window {width} px wide: {p}" for p in nb.text_problems(root))

    try:
        # Every state in the laptop's window, where space is tightest (a squeezed row of controls covered
        # its slider values there); the wide window after Run All and again at the end of the walk.
        check("after Run All", wide)
        nb.page.set_viewport_size({"width": narrow, "height": size["height"]})
        nb.page.wait_for_timeout(150)
        state = "after Run All"
        for state in states(nb, root):  # a generator: each state is reached (keys pressed) as it is asked for
            found.extend(f"{state}, window {narrow} px wide: {p}" for p in nb.text_problems(root))
        check(f"{state} (the end of the walk)", wide)
        nb.page.set_viewport_size({"width": narrow, "height": size["height"]})
        nb.screenshot(screenshots_dir / f"{name[:2]}-{builder}-after-extremes-{WIDTHS[-1]}px.png", root)
    finally:
        nb.page.set_viewport_size(size)
    nb.screenshot(screenshots_dir / f"{name[:2]}-{builder}-after-extremes.png", root)
    assert not found, f"{builder} ({name}): text a reader cannot read in full:\n" + "\n".join(found)


_CUT_AND_COVERED = """<div id="root" style="font: 13px sans-serif">
  <div class="widget-label" style="width: 40px; overflow: hidden; white-space: nowrap">KV heads (= groups)</div>
  <div style="position: relative; width: 300px">
    <div class="widget-readout" style="width: 80px">131,072</div>
    <div style="position: absolute; left: 20px; top: 0; width: 200px; height: 20px; background: white">readout</div>
  </div>
  <div class="widget-dropdown"><select style="width: 60px"><option>Llama-3.1 405B (GQA)</option></select></div>
  <div class="widget-label" style="width: 200px">query heads</div>
</div>"""


def test_the_check_finds_cut_and_covered_text(browser):
    """The check itself, on a page made to fail it: a cut label, a covered readout, a cut dropdown; one fine label."""
    from lab_page import _TEXT_FITS_SCRIPT

    page = browser.new_page()
    try:
        page.set_content(_CUT_AND_COVERED)
        problems = page.locator("#root").evaluate(_TEXT_FITS_SCRIPT)
    finally:
        page.close()
    assert len(problems) == 3, problems
    assert '"KV heads (= groups)": cut short' in problems[0]
    assert '"131,072": covered at' in problems[1]
    assert "the chosen option needs" in problems[2]
    assert not any("query heads" in p for p in problems)
