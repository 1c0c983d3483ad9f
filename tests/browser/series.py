"""Which notebooks of the series show which gqa_lib widgets (read from the notebook files, not run).

Set GQA_BROWSER_NOTEBOOKS to test another folder of notebooks (handy while developing the tests).
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = Path(os.environ.get("GQA_BROWSER_NOTEBOOKS", ROOT / "notebooks"))


def _shown_builder(source: str) -> str | None:
    """The widget builder whose result a cell shows: its last statement is ``widgets.NAME(...)`` or
    ``display(widgets.NAME(...))``. A cell that only assigns a widget (to drive it in code) shows none."""
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("%", "!")))
    try:
        body = ast.parse(code).body
    except SyntaxError:
        return None
    if not body or not isinstance(body[-1], ast.Expr) or not isinstance(body[-1].value, ast.Call):
        return None
    call = body[-1].value
    if isinstance(call.func, ast.Name) and call.func.id == "display" and call.args:
        call = call.args[0]
    if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
            and isinstance(call.func.value, ast.Name) and call.func.value.id == "widgets"):
        return call.func.attr
    return None


def widget_calls(path) -> list[str]:
    """Names of the gqa_lib widget builders whose widgets a notebook shows, in order."""
    nb = json.loads(path.read_text())
    shown = (_shown_builder("".join(c["source"])) for c in nb["cells"] if c["cell_type"] == "code")
    return [name for name in shown if name]


ALL_NOTEBOOKS = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
WIDGET_NOTEBOOKS = [name for name in ALL_NOTEBOOKS if widget_calls(NOTEBOOKS / name)]


def notebook_showing(builder: str) -> str | None:
    """The first notebook (by name) that shows the widget ``builder``, or None if none does yet."""
    for name in WIDGET_NOTEBOOKS:
        if builder in widget_calls(NOTEBOOKS / name):
            return name
    return None
