"""Running a notebook twice gives the same checked outputs (the cells tagged ``nbval-check-output``).

`make test` runs every notebook twice, in fresh kernels with different Python hash seeds (so set and dict
orders of strings differ between them), and compares both runs with the stored outputs, so the two runs
also equal each other: nbval (``make notebook-tests``: PYTHONHASHSEED=1, kernels narrowed to an AVX2
machine's) and, at full width with PYTHONHASHSEED=2, the browser tests' Run All in JupyterLab for a notebook
that shows a widget, a second nbval run in ``make notebook-tests`` for one that does not. The first test here
checks that set-up. The exact two-run comparison of this file (two runs on this machine, compared with each
other and with the stored outputs) runs only when asked: set GQA_DETERMINISM_NOTEBOOKS to a comma-separated
list of name prefixes (e.g. ``01,07``) or to ``all``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TAG = "nbval-check-output"  # the cell tag nbval reads with --nbval-lax
def chosen() -> list[Path]:
    wanted = os.environ.get("GQA_DETERMINISM_NOTEBOOKS", "").strip()
    if wanted == "all":
        return NOTEBOOKS
    prefixes = [w.strip() for w in wanted.split(",") if w.strip()]
    return [p for p in NOTEBOOKS if any(p.name.startswith(x) for x in prefixes)]


def test_make_test_runs_every_notebook_twice_with_two_hash_seeds():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("\nnotebook-tests:"):].split("\n\n")[0]
    assert "PYTHONHASHSEED=1" in recipe and "--nbval-lax" in recipe, recipe
    assert "PYTHONHASHSEED=2" in recipe and "series.py --without-widgets" in recipe, recipe
    conftest = (ROOT / "tests" / "browser" / "conftest.py").read_text()
    assert 'env["PYTHONHASHSEED"] = "2"' in conftest
    browser = (ROOT / "tests" / "browser" / "test_notebooks_in_browser.py").read_text()
    assert '@pytest.mark.parametrize("name", WIDGET_NOTEBOOKS)\ndef test_checked_outputs_hold_at_full_width' in browser
    # every notebook gets its second run: in the browser if it shows a widget, in nbval's second run if not
    series = ROOT / "tests" / "browser" / "series.py"
    plain = subprocess.run([sys.executable, str(series), "--without-widgets"], capture_output=True, text=True,
                           check=True, env={**os.environ, "GQA_BROWSER_NOTEBOOKS": str(ROOT / "notebooks")})
    without = set(filter(None, plain.stdout.strip().split(" or ")))
    sys.path.insert(0, str(series.parent))
    try:
        from series import WIDGET_NOTEBOOKS
    finally:
        sys.path.remove(str(series.parent))
    assert without | {n.removesuffix(".ipynb") for n in WIDGET_NOTEBOOKS} == {p.stem for p in NOTEBOOKS}
    assert "06_tradeoff_measured" in without  # the one notebook of the series without a widget
    # ... and the browser test processes share every notebook between them: tests/browser/test_shards.py


def checked_outputs(nb) -> list[tuple[int, list[str]]]:
    """(cell index, outputs) of every checked cell: stream text, text/plain results, error names, picture kinds.

    Consecutive pieces of one stream are joined, as Jupyter shows them: how the kernel splits a cell's
    prints into messages depends on timing (a slow step between two prints), not on what was printed.
    """
    out = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or TAG not in cell.get("metadata", {}).get("tags", []):
            continue
        shown, previous = [], None
        for o in cell.get("outputs", []):
            if o["output_type"] == "stream":
                if previous is not None and previous["output_type"] == "stream" and previous["name"] == o["name"]:
                    shown[-1] += o["text"]  # the same stream continued
                else:
                    shown.append(f"{o['name']}: {o['text']}")
            elif o["output_type"] in ("execute_result", "display_data"):
                data = o.get("data", {})
                shown.append(data["text/plain"] if "text/plain" in data and len(data) == 1 else
                             "display: " + ", ".join(sorted(k for k in data if k != "text/plain")))
            elif o["output_type"] == "error":
                shown.append(f"error: {o['ename']}")
            previous = o
        out.append((i, shown))
    return out


def execute_copy(path: Path, hash_seed: int, tmp: Path):
    """Execute ``path`` in a fresh kernel (its own process, this hash seed); return the executed notebook."""
    target = tmp / f"seed{hash_seed}-{path.name}"
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    code = ("import nbformat, sys\nfrom nbclient import NotebookClient\n"
            "nb = nbformat.read(sys.argv[1], as_version=4)\n"
            "NotebookClient(nb, timeout=600, kernel_name='python3', "
            "resources={'metadata': {'path': sys.argv[3]}}).execute()\n"
            "nbformat.write(nb, sys.argv[2])\n")
    result = subprocess.run([sys.executable, "-c", code, str(path), str(target), str(path.parent)], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{path.name} failed with PYTHONHASHSEED={hash_seed}:\n{result.stderr[-3000:]}"
    return nbformat.read(target, as_version=4)


@pytest.mark.parametrize("path", chosen(), ids=lambda p: p.stem)
def test_two_runs_give_the_same_checked_outputs(path, tmp_path):
    stored = checked_outputs(nbformat.read(path, as_version=4))
    assert stored, f"{path.name} has no cell tagged {TAG}: nothing would be compared"
    first = checked_outputs(execute_copy(path, 1, tmp_path))
    second = checked_outputs(execute_copy(path, 2, tmp_path))
    for (i, a), (_, b) in zip(first, second, strict=True):
        assert a == b, f"{path.name} cell {i} differs between two runs:\n{a}\n---\n{b}"
    for (i, a), (_, s) in zip(first, stored, strict=True):
        assert a == s, f"{path.name} cell {i} differs from the stored output (re-run make notebooks?):\n{a}\n---\n{s}"


def test_one_stream_split_into_messages_reads_as_one_output():
    cell = nbformat.v4.new_code_cell("print(1); slow(); print(2)", metadata={"tags": [TAG]})
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n"),
                    nbformat.v4.new_output("stream", name="stdout", text="2\n"),
                    nbformat.v4.new_output("stream", name="stderr", text="warning\n")]
    joined = nbformat.v4.new_code_cell(cell.source, metadata={"tags": [TAG]})
    joined.outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n2\n"),
                      nbformat.v4.new_output("stream", name="stderr", text="warning\n")]
    nb, nb_joined = nbformat.v4.new_notebook(cells=[cell]), nbformat.v4.new_notebook(cells=[joined])
    assert checked_outputs(nb) == checked_outputs(nb_joined) == [(0, ["stdout: 1\n2\n", "stderr: warning\n"])]
