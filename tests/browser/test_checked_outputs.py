"""The full-width comparison of the browser tests finds what nbval would find, and nothing else."""

from __future__ import annotations

import copy

import nbformat
from checked_outputs import TAG, differences
from series import NOTEBOOKS


def _first_checked_stream(nb):
    for code_index, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        if TAG in cell.metadata.get("tags", []) and any(o.output_type == "stream" for o in cell.outputs):
            return code_index, cell
    raise AssertionError("no checked cell prints anything")


def test_a_changed_digit_in_a_checked_output_is_found(tmp_path):
    stored = NOTEBOOKS / "01_kv_cache_motivation.ipynb"
    nb = nbformat.read(stored, as_version=4)
    assert differences(stored, stored) == []
    code_index, cell = _first_checked_stream(nb)
    out = next(o for o in cell.outputs if o.output_type == "stream")
    digit = next(ch for ch in out.text if ch.isdigit())
    out.text = out.text.replace(digit, str((int(digit) + 1) % 10), 1)
    changed = tmp_path / stored.name
    nbformat.write(nb, changed)
    found = differences(stored, changed)
    assert len(found) == 1 and found[0].startswith(f"{stored.name} Cell {code_index}:"), found


def test_one_print_split_into_two_messages_is_not_a_difference(tmp_path):
    stored = NOTEBOOKS / "01_kv_cache_motivation.ipynb"
    nb = nbformat.read(stored, as_version=4)
    _, cell = _first_checked_stream(nb)
    i, out = next((i, o) for i, o in enumerate(cell.outputs) if o.output_type == "stream")
    head, tail = out.text[: len(out.text) // 2], out.text[len(out.text) // 2:]
    second = copy.deepcopy(out)
    out.text, second.text = head, tail
    cell.outputs.insert(i + 1, second)
    split = tmp_path / stored.name
    nbformat.write(nb, split)
    assert differences(stored, split) == []


def test_an_unchecked_cell_may_differ(tmp_path):
    stored = NOTEBOOKS / "01_kv_cache_motivation.ipynb"
    nb = nbformat.read(stored, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and TAG not in c.metadata.get("tags", [])
                and any(o.output_type == "stream" for o in c.outputs))
    next(o for o in cell.outputs if o.output_type == "stream").text += "another machine's timing\n"
    changed = tmp_path / stored.name
    nbformat.write(nb, changed)
    assert differences(stored, changed) == []


def test_the_skipped_keys_are_nbvals_own():
    """SKIP_COMPARE copies nbval's list (built inside IPyNbFile.__init__, so not importable): keep them equal."""
    import inspect
    import re

    from checked_outputs import SKIP_COMPARE
    from nbval.plugin import IPyNbFile

    source = inspect.getsource(IPyNbFile.__init__)
    code = "\n".join(line.split("#")[0] for line in source.splitlines())  # commented-out keys do not count
    nbvals = set(re.findall(r"'([\w/.+-]+)'", code[code.index("self.skip_compare"):]))
    assert set(SKIP_COMPARE) == nbvals, f"nbval skips {sorted(nbvals)}, checked_outputs.py {sorted(SKIP_COMPARE)}"
