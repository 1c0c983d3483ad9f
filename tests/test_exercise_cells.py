"""The Exercises section at the end of each notebook, once it is there: every skeleton cell defines the
function its checker tests, calls that checker once, and its stored output says "not yet" (the answers
live in solutions/, not in the notebooks). Skips for notebooks without the section."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import gqa_lib.exercises as ex

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("0[1-8]_*.ipynb"))


def _exercise_cells(path: Path) -> list[dict] | None:
    cells = json.loads(path.read_text())["cells"]
    start = next((i for i, c in enumerate(cells)
                  if c["cell_type"] == "markdown" and "".join(c["source"]).lstrip().startswith("## Exercises")), None)
    return None if start is None else [c for c in cells[start + 1:] if c["cell_type"] == "code"]


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
