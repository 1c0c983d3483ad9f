"""The Exercises section of each notebook, once it is there: every skeleton cell defines the function its checker
tests, calls that checker once, and its stored output says "not yet" (the answers live in solutions/, not in the
notebooks). The section comes last in the lecture proper, before "Check yourself" and the Summary (which ends with
the link to the next notebook), as a textbook chapter ends. Skips for notebooks without the section."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import gqa_lib.exercises as ex

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("0[1-8]_*.ipynb"))


def _heading_cells(cells: list[dict], heading: str) -> list[int]:
    return [i for i, c in enumerate(cells)
            if c["cell_type"] == "markdown" and any(line.strip() == heading or line.startswith(heading + " ")
                                                    for line in "".join(c["source"]).splitlines())]


def _exercise_cells(path: Path) -> list[dict] | None:
    """The code cells of the Exercises section: from its heading to the next markdown cell with a "## " heading."""
    cells = json.loads(path.read_text())["cells"]
    starts = _heading_cells(cells, "## Exercises")
    if not starts:
        return None
    section = []
    for c in cells[starts[0] + 1:]:
        if c["cell_type"] == "markdown" and "".join(c["source"]).lstrip().startswith("## "):
            break
        if c["cell_type"] == "code":
            section.append(c)
    return section


def exercises_placed(cells: list[dict]) -> bool:
    """Whether the Exercises heading comes before the first "Check yourself" or "Summary" heading."""
    exercises = _heading_cells(cells, "## Exercises")
    after = [i for h in ("## Check yourself", "## Summary") for i in _heading_cells(cells, h)]
    return bool(exercises) and bool(after) and exercises[0] < min(after)


def test_the_placement_check_catches_exercises_after_the_summary():
    def md(text):
        return {"cell_type": "markdown", "source": [text]}

    before = [md("## 3. Try it"), md("## Exercises\n\n1. ..."), md("## Check yourself\n\n## Summary\n\n**Next:** 02")]
    assert exercises_placed(before)
    assert not exercises_placed([before[0], before[2], before[1]])  # after the "Next" link: the old layout


# Notebooks whose exercises still follow their Summary, being rewritten elsewhere; to be emptied.
EXERCISES_AFTER_SUMMARY_PENDING: set[str] = set()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_exercises_come_before_check_yourself_and_the_summary(path):
    cells = json.loads(path.read_text())["cells"]
    exercises = _heading_cells(cells, "## Exercises")
    if not exercises:
        pytest.skip(f"{path.name} has no Exercises section yet")
    placed = exercises_placed(cells)
    after = [i for h in ("## Check yourself", "## Summary") for i in _heading_cells(cells, h)]
    if path.name[:2] in EXERCISES_AFTER_SUMMARY_PENDING:
        assert not placed, f"{path.name}: its exercises are in place now; take it out of the pending set"
        pytest.skip(f"{path.name}: exercises after the summary, pending")
    assert placed, (f"{path.name}: the Exercises section (cell {exercises[0]}) must come before Check yourself and "
                    f"the Summary (cells {after})")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_exercise_cells_hold_skeletons_and_call_their_checker(path):
    cells = _exercise_cells(path)
    if cells is None:
        pytest.skip(f"{path.name} has no Exercises section yet")
    expected = [e.name for e in ex.BY_NOTEBOOK[path.name[:2]]]
    defined = []
    for cell in cells:
        source = "".join(cell["source"])
        tree = ast.parse(source)
        funcs = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
        calls = [n.value.func.id for n in tree.body if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)
                 and isinstance(n.value.func, ast.Name)]
        assert len(funcs) == 1 and calls == [f"check_{funcs[0]}"], f"{path.name}: cell {source[:80]!r}"
        defined.append(funcs[0])
        assert "NotImplementedError" in source, f"{path.name}: the {funcs[0]} cell holds an answer, not a skeleton"
        text = "".join("".join(o.get("text", "")) for o in cell.get("outputs", []))  # stored as a list of lines
        assert text.startswith(f"not yet: {ex.EXERCISES[funcs[0]].title}"), f"{path.name}: {funcs[0]} printed {text!r}"
    assert defined == expected
