"""An exercise in JupyterLab, as a learner does it: run the skeleton, type a solution, type a known bug.

Notebook 04's exercise cell ``kv_head_of`` (query head -> KV head) is edited through the page's
editor (select all, type new code) and run with Ctrl+Enter; the test reads what the cell prints:
"not yet" for the untouched skeleton, "correct" for a right answer, and the museum's name and
explanation for the tiled `.repeat` order. Skips while notebook 04 has no exercise cells.
"""

from __future__ import annotations

import json

import pytest
from lab_page import NotebookPage
from series import NOTEBOOKS

CHECK_CALL = "check_kv_head_of(kv_head_of)"
IMPORT = "from gqa_lib.exercises.ex04_gqa import check_kv_head_of"
RUN_TIMEOUT_MS = 120_000  # the first run imports torch and gqa_lib in a fresh kernel on a busy machine

SOLUTION = f'''{IMPORT}


def kv_head_of(query_head, n_heads, n_kv_heads):
    group_size = n_heads // n_kv_heads
    return query_head // group_size


{CHECK_CALL}'''

TILED_REPEAT = f'''{IMPORT}


def kv_head_of(query_head, n_heads, n_kv_heads):
    return query_head % n_kv_heads


{CHECK_CALL}'''


def _exercise_notebook() -> str | None:
    """Notebook 04's file name if it has the exercise cell that calls ``check_kv_head_of``."""
    for path in sorted(NOTEBOOKS.glob("04_*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        if any(c["cell_type"] == "code" and CHECK_CALL in "".join(c["source"]) for c in cells):
            return path.name
    return None


NOTEBOOK = _exercise_notebook()
pytestmark = pytest.mark.skipif(
    NOTEBOOK is None, reason=f"notebook 04 in {NOTEBOOKS} has no exercise cells yet (no cell calls {CHECK_CALL}); "
                             "they appear once the Exercises section is appended to the notebooks")

# The cell has run when its prompt shows a number other than the one it had before (not [*], not blank).
_RAN = """([cell, before]) => {
  const prompt = cell.querySelector('.jp-InputPrompt').textContent;
  return /\\[\\d+\\]/.test(prompt) && prompt !== before;
}"""


@pytest.fixture(scope="module")
def notebook(lab, browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
    ctx.set_default_timeout(60_000)
    nb = NotebookPage(ctx.new_page(), lab, NOTEBOOK).open()
    yield nb
    ctx.close()


def exercise_cell(nb):
    cells = nb.notebook.locator(".jp-CodeCell").filter(has_text=CHECK_CALL)
    assert cells.count() == 1, f"{NOTEBOOK}: expected one cell calling {CHECK_CALL}, found {cells.count()}"
    return cells.first


def run(nb, code: str | None = None) -> str:
    """Replace the cell's code with ``code`` (typed into its editor) if given, run it, return what it printed."""
    cell = exercise_cell(nb)
    cell.scroll_into_view_if_needed()
    editor = cell.locator(".cm-content")
    if code is not None:
        editor.click()
        nb.page.keyboard.press("Control+a")
        nb.page.keyboard.press("Delete")
        nb.page.keyboard.insert_text(code)  # as typed, without the editor's auto-indent and auto-closed brackets
        shown = [line for line in editor.inner_text().splitlines() if line.strip()]  # the DOM doubles blank lines
        assert shown == [line for line in code.splitlines() if line.strip()], f"the editor holds {shown}"
    else:
        editor.click()
    before = cell.locator(".jp-InputPrompt").inner_text()
    nb.page.keyboard.press("Control+Enter")  # run this cell, stay on it
    nb.page.wait_for_function(_RAN, arg=[cell.element_handle(), before], timeout=RUN_TIMEOUT_MS, polling=200)
    return cell.locator(".jp-OutputArea-output").inner_text()


def test_the_skeleton_says_not_yet(notebook):
    out = run(notebook)
    assert out.startswith("not yet: kv_head_of(query_head, n_heads, n_kv_heads): it raised NotImplementedError"), out


def test_a_typed_solution_is_correct(notebook):
    out = run(notebook, SOLUTION)
    assert out.startswith("correct: kv_head_of(query_head, n_heads, n_kv_heads)"), out
    assert "agree with gqa_lib.AttentionLayout.kv_head_of" in out


def test_a_typed_museum_bug_is_named(notebook, screenshots_dir):
    out = run(notebook, TILED_REPEAT)
    notebook.page.screenshot(path=str(screenshots_dir / "exercise-04-kv-head-of-tiled-repeat.png"))
    assert out.startswith("wrong: kv_head_of(query_head, n_heads, n_kv_heads)"), out
    assert "smallest failing input: query_head=1, n_heads=6, n_kv_heads=2" in out
    words = " ".join(out.split())  # long explanations are wrapped
    assert "known mistake, tiled `.repeat` order: query head 1 reads KV head 1: this is the tiled order of `.repeat`" \
        in words
