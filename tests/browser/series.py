"""Which notebooks of the series show which gqa_lib widgets (read from the notebook files, not run), and
which share of them this test process runs.

Set GQA_BROWSER_NOTEBOOKS to test another folder of notebooks (handy while developing the tests).
`make browser-tests` runs two test processes side by side, GQA_BROWSER_SHARD=0/2 and 1/2, each with its
own JupyterLab and Chromium and its own share of the notebooks: a notebook's interactions and text-fits
walk mostly wait for the browser, so two of them at once take little more time than one.
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


def stored_run_seconds(path) -> float:
    """Seconds the notebook's cells took when ``make notebooks`` last ran it (their execution timestamps),
    0.0 where none are stored: which notebooks a Run All finishes first."""
    from datetime import datetime

    total = 0.0
    for cell in json.loads(path.read_text())["cells"]:
        run = cell.get("metadata", {}).get("execution", {})
        start, end = run.get("iopub.execute_input"), run.get("shell.execute_reply")
        if start and end:
            total += (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    return total


ALL_NOTEBOOKS = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
WIDGET_NOTEBOOKS = [name for name in ALL_NOTEBOOKS if widget_calls(NOTEBOOKS / name)]


def notebook_showing(builder: str) -> str | None:
    """The first notebook (by name) that shows the widget ``builder``, or None if none does yet."""
    for name in WIDGET_NOTEBOOKS:
        if builder in widget_calls(NOTEBOOKS / name):
            return name
    return None


# The shares for two processes, from the measured times (Run All's CPU time, and the interactions and
# text-fits walks, which mostly wait): 01, 05, 07 against the rest. A notebook not named goes by its index.
_TWO_SHARES = {"01": 0, "05": 0, "07": 0, "02": 1, "03": 1, "04": 1, "06": 1, "08": 1}


def _shard() -> tuple[int, int]:
    value = os.environ.get("GQA_BROWSER_SHARD", "").strip()
    if not value:
        return 0, 1
    index, _, count = value.partition("/")
    if not (index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise ValueError(f"GQA_BROWSER_SHARD={value!r} must be 'i/n' with 0 <= i < n, e.g. 0/2")
    return int(index), int(count)


SHARD, SHARDS = _shard()


def in_shard(name: str | None, shard: int, shards: int) -> bool:
    """Whether the ``shard``-th of ``shards`` processes tests notebook ``name`` (``None``: the tests of no
    notebook, which the first process runs). Every notebook falls in exactly one share."""
    if shards == 1:
        return True
    if name is None:
        return shard == 0
    if shards == 2 and name[:2] in _TWO_SHARES:
        return _TWO_SHARES[name[:2]] == shard
    return ALL_NOTEBOOKS.index(name) % shards == shard if name in ALL_NOTEBOOKS else shard == 0


def in_this_shard(name: str | None) -> bool:
    return in_shard(name, SHARD, SHARDS)
