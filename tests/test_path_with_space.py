"""The make targets work from a checkout whose path has a space, and delete nothing beside it.

Before the Makefile quoted the paths it builds from $(CURDIR), `make notebook-tests` (and so `make test`)
in "My Notes/repo" ran `rm -f /.../My Notes/repo/build/network-attempts.log`, which deleted the file "My"
beside the folder, and then failed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _base_python() -> str:
    """The interpreter .venv was made from, so make keeps .venv as it is."""
    cfg = dict(line.split(" = ", 1) for line in (ROOT / ".venv" / "pyvenv.cfg").read_text().splitlines()
               if " = " in line)
    return cfg["executable"]


@pytest.mark.skipif(not (ROOT / ".venv" / ".installed").exists(), reason="needs a finished .venv (make test makes it)")
def test_notebook_tests_from_a_path_with_a_space_delete_nothing_beside_it(tmp_path):
    beside = tmp_path / "My"  # what the unquoted path's first word names
    beside.write_text("a learner's notes\n")
    repo = tmp_path / "My Notes" / "repo"
    repo.mkdir(parents=True)
    for name in ("Makefile", "requirements.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, repo / name)
        os.utime(repo / name, (0, 0))  # older than .venv's install stamp: nothing to reinstall
    shutil.copytree(ROOT / "tools", repo / "tools")
    shutil.copytree(ROOT / "tests" / "offline_guard", repo / "tests" / "offline_guard")
    (repo / ".venv").symlink_to(ROOT / ".venv")
    folder = repo / "my notebooks"
    folder.mkdir()
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print(2 * 3 * 64)", metadata={"tags": ["nbval-check-output"]})
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="384\n")]  # as a run stores it
    cell.execution_count = 1
    nb.cells = [cell]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "a.ipynb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    result = subprocess.run(["make", "--no-print-directory", "notebook-tests", "NBVAL_DIR=my notebooks",
                             f"PYTHON={_base_python()}"], cwd=repo, env=env, capture_output=True, text=True,
                            timeout=300)
    out = result.stdout + result.stderr
    assert beside.exists(), f"make deleted {beside}:\n{out[-2000:]}"
    assert result.returncode == 0, out[-3000:]
    assert "1 passed" in out
    assert not (repo / "Notes").exists() and not (tmp_path / "Notes").exists()
