"""The cells tagged ``nbval-check-output``, compared the way nbval compares them, for a notebook run elsewhere.

`make notebook-tests` runs nbval with the kernels narrowed to a plain AVX2 machine's; the browser tests run
every notebook at this machine's full width (Run All in JupyterLab, as a reader does) and then compare the
same cells with this module, so each checked output is held to both machines' arithmetic. The comparison
is nbval's own (``nbval.plugin.IPyNbCell.compare_outputs``, pinned in requirements.txt): the same keys
skipped, streams coalesced, so "holds at full width" means exactly what nbval's check means. We reuse it
rather than write a second comparison that could drift from the first.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import nbformat
from nbval.plugin import IPyNbCell, coalesce_streams, nocolors

TAG = "nbval-check-output"
# nbval's IPyNbFile.skip_compare with --nbval-lax and without nbdime (nbval 0.11): images are not compared.
SKIP_COMPARE = ("metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
                "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg")


class _NoSanitizing:
    skip_compare = SKIP_COMPARE
    sanitize_patterns: dict = {}


class _Comparator:
    """Just enough of an ``IPyNbCell`` for nbval's comparison to run outside a pytest item."""

    colors = nocolors
    parent = _NoSanitizing
    compare_outputs = IPyNbCell.compare_outputs
    sanitize = IPyNbCell.sanitize

    def format_output_compare(self, key, left, right):  # nbval's own needs pytest's hooks; a plain diff here
        diff = difflib.unified_diff(str(left).splitlines(), str(right).splitlines(), "stored", "this run",
                                    lineterm="", n=0)
        self.comparison_traceback.append(f"mismatch {key!r}:\n" + "\n".join(diff))


def differences(stored: Path, ran: Path) -> list[str]:
    """One message per checked cell whose outputs in ``ran`` differ from those stored in ``stored``."""
    ref, test = nbformat.read(stored, as_version=4), nbformat.read(ran, as_version=4)
    if [c.source for c in ref.cells] != [c.source for c in test.cells]:
        return [f"{ran.name}: its cells are not the stored notebook's cells"]
    found, comparator = [], _Comparator()
    code_index = -1
    for ref_cell, test_cell in zip(ref.cells, test.cells, strict=True):
        if ref_cell.cell_type != "code":
            continue
        code_index += 1  # nbval's "Cell N" counts code cells
        if TAG not in ref_cell.metadata.get("tags", []):
            continue
        if not comparator.compare_outputs(coalesce_streams(test_cell.outputs), coalesce_streams(ref_cell.outputs)):
            found.append(f"{stored.name} Cell {code_index}: " + "\n".join(comparator.comparison_traceback))
    return found
