"""Every notebook, run in JupyterLab in Chromium as a reader runs it.

Every notebook that shows a widget: after Run All, no error output, and every cell tagged ``nbval-check-output``
shows what the file stores (nbval's comparison, at this CPU's full kernel width; see checked_outputs.py). A
notebook without a widget (06) has nothing for a browser to check that nbval does not: `make notebook-tests` runs
it at full width as well as narrowed, beside the narrowed run, which costs the suite less than a JupyterLab tab.

Every notebook that shows a widget: Run > Run All Cells, then no error output, no "Error displaying
widget", every widget the notebook builds is drawn with its controls; a slider moved with the keyboard
updates the widget (latency recorded for the report); a screenshot lands in build/screenshots/.
"""

from __future__ import annotations

import pytest
from checked_outputs import differences
from series import NOTEBOOKS, WIDGET_NOTEBOOKS, widget_calls

LATENCY_PRESSES = 6  # key presses timed per widget (alternating right/left so values stay in range)


def test_some_notebook_has_a_widget():
    assert WIDGET_NOTEBOOKS, f"no notebook in {NOTEBOOKS} calls a gqa_lib widget builder"


@pytest.mark.parametrize("name", WIDGET_NOTEBOOKS)
def test_runs_without_errors_and_draws_widgets(name, executed, screenshots_dir, stderr_report):
    nb = executed(name)
    dialogs = nb.page.locator(".jp-Dialog")
    assert dialogs.count() == 0, f"{name}: a dialog is open: {dialogs.first.inner_text()[:300]}"
    toasts = nb.page.locator(".Toastify__toast")
    assert toasts.count() == 0, f"{name}: a notification pops up: {toasts.first.inner_text()[:300]}"
    errors = nb.errors()
    assert not errors, f"{name} shows errors after Run All:\n" + "\n".join(errors)
    for text in nb.stderr_outputs():  # warnings a reader would see: reported, not failed
        stderr_report(name, text)
    assert nb.unexecuted_code_cells() == 0, f"{name}: Run All left code cells unexecuted"
    expected = widget_calls(NOTEBOOKS / name)
    roots = nb.widget_roots()
    assert roots.count() >= len(expected), f"{name} builds {expected} but {roots.count()} widget(s) were drawn"
    for i in range(roots.count()):
        controls = roots.nth(i).locator(".widget-slider, .widget-dropdown, .widget-toggle-buttons, .widget-radio, "
                                        ".widget-text, .widget-checkbox, .widget-button")
        assert controls.count() > 0, f"{name}: widget {i} has no controls"
    nb.screenshot(screenshots_dir / f"{name.removesuffix('.ipynb')}-run-all.png", roots.first)


@pytest.mark.parametrize("name", WIDGET_NOTEBOOKS)
def test_checked_outputs_hold_at_full_width(name, executed):
    """nbval's check at this CPU's full width: Run All in JupyterLab, saved (Ctrl+S), compared with the stored
    outputs cell by cell as nbval compares them. `make notebook-tests` holds them to narrowed kernels."""
    nb = executed(name)
    errors = nb.errors()
    assert not errors, f"{name} shows errors after Run All:\n" + "\n".join(errors)
    found = differences(NOTEBOOKS / name, nb.save())
    assert not found, f"{name}: checked outputs that differ at full width:\n" + "\n\n".join(found)


@pytest.mark.parametrize("name", WIDGET_NOTEBOOKS)
def test_keyboard_latency(name, executed, latency_report, quiet_machine):
    """Time key presses on the first slider of each widget (its label must be unique in that widget)."""
    nb = executed(name)
    builders = widget_calls(NOTEBOOKS / name)
    roots = nb.widget_roots()
    measured = 0
    for i in range(roots.count()):
        root = roots.nth(i)
        sliders = nb.sliders(root)
        if not sliders:
            continue
        s = sliders[0]
        first_key = "ArrowLeft" if s.value >= s.max else "ArrowRight"
        other_key = "ArrowRight" if first_key == "ArrowLeft" else "ArrowLeft"
        widget = builders[i] if i < len(builders) else f"{name}#{i}"
        for k in range(LATENCY_PRESSES):
            ms = nb.press_and_time(root, s.label, first_key if k % 2 == 0 else other_key)
            latency_report(widget, ms)
            measured += 1
    if not measured:
        pytest.skip(f"{name}: no widget with a slider")
