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


ALL_NOTEBOOKS = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
WIDGET_NOTEBOOKS = [name for name in ALL_NOTEBOOKS if widget_calls(NOTEBOOKS / name)]


def notebook_showing(builder: str) -> str | None:
    """The first notebook (by name) that shows the widget ``builder``, or None if none does yet."""
    for name in WIDGET_NOTEBOOKS:
        if builder in widget_calls(NOTEBOOKS / name):
            return name
    return None


# The shares for two processes, from the measured times: Run All's CPU time (stored run times 01 15 s, 05 24,
# 07 33 against 02 17, 03 15, 04 12, 08 22) and the interactions and text walks, which mostly wait for the browser
# (01 and 04 about a minute each, the others under 20 s). 06 shows no widget: `make notebook-tests` runs it at full
# width, not the browser. A notebook not named goes by its index.
_TWO_SHARES = {"01": 0, "05": 0, "07": 0, "02": 1, "03": 1, "04": 1, "08": 1, "06": 1}

# The order Run Alls start in (conftest.py runs a few at a time): the notebooks whose tests after Run All take
# longest first, so they are done early and their walks overlap the runs still going; the last one to finish
# has the shortest tests. Notebooks not named come after, by name.
RUN_ORDER = ["04", "01", "05", "03", "02", "07", "08", "06"]


def run_order(names: list[str]) -> list[str]:
    """``names`` in the order their Run Alls start (RUN_ORDER, then the rest by name)."""
    rank = {prefix: i for i, prefix in enumerate(RUN_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n[:2], len(RUN_ORDER)), n))


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


if __name__ == "__main__":
    # `make notebook-tests` runs the notebooks that show no widget at full width too (the browser tests run the
    # others there): their stems, as a pytest -k expression ("" when every notebook shows a widget).
    import sys

    if sys.argv[1:] != ["--without-widgets"]:
        raise SystemExit("usage: python tests/browser/series.py --without-widgets  (GQA_BROWSER_NOTEBOOKS=folder)")
    print(" or ".join(name.removesuffix(".ipynb") for name in ALL_NOTEBOOKS if name not in WIDGET_NOTEBOOKS))
