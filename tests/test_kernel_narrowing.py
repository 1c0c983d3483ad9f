"""`make notebook-tests` compares the stored outputs with another CPU's arithmetic, and so catches a checked
output that only one machine's kernels print; and it runs from a checkout whose path has a space, deleting
nothing beside it.

The stored outputs come from `make notebooks`, at this machine's full vector width. The nbval run narrows
PyTorch's kernels to the generic ones, oneDNN's and MKL's to AVX2, and the thread count to one
(``NARROW_KERNELS`` in the Makefile), as a learner's AVX2 laptop or an AMD CI runner would run them. Here a
planted notebook, executed at full width, stores a checked output that depends on the kernels (the bytes of
``torch.exp`` over a few thousand numbers: PyTorch's vectorised exp and the C library's differ in the last
bit for some of them); `make notebook-tests` must fail on exactly that cell and pass the one beside it whose
checked output is exact arithmetic.

The same run is made from "My Notes/repo", beside a file "My": before the Makefile quoted the paths it builds
from $(CURDIR), `make notebook-tests` there ran `rm -f /.../My Notes/repo/build/network-attempts.log`, which
deleted "My", and then failed. One `make` run serves both checks (each starts nbval and a kernel).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
TAG = "nbval-check-output"
NARROWING = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")

KERNEL_DEPENDENT = """import hashlib
import torch
x = torch.linspace(-20, 20, 4099)  # the same inputs on every machine
print("exp bytes:", hashlib.sha256(torch.exp(x).numpy().tobytes()).hexdigest()[:16])"""
EXACT = """import torch
print("2 x 3 x 64 x 30 x 2 =", int(torch.tensor([2, 3, 64, 30, 2]).prod()))"""


def _printed(code: str, env: dict) -> str:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                          timeout=120).stdout


# A plain AVX2 machine (an AMD CI runner, a learner's laptop): PyTorch's generic kernels, oneDNN
# (bf16 products) and MKL (fp32 products) limited to AVX2, one thread. The Makefile must narrow at least this.
AVX2_MACHINE = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                "OMP_NUM_THREADS": "1"}


def _narrow_env() -> dict:
    return {**os.environ, **AVX2_MACHINE}


def test_the_makefile_narrows_to_an_avx2_machine():
    line = next(x for x in (ROOT / "Makefile").read_text().splitlines() if x.startswith("NARROW_KERNELS :="))
    pairs = dict(p.split("=", 1) for p in line.split(":=", 1)[1].split())
    assert pairs == AVX2_MACHINE, f"the Makefile's NARROW_KERNELS is {pairs}, not {AVX2_MACHINE}"


def _base_python() -> str:
    """The interpreter .venv was made from, so the make run below keeps .venv as it is."""
    cfg = dict(line.split(" = ", 1) for line in (ROOT / ".venv" / "pyvenv.cfg").read_text().splitlines()
               if " = " in line)
    return cfg["executable"]


def _planted_notebook():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(code, metadata={"tags": [TAG]}) for code in (EXACT, KERNEL_DEPENDENT)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _checkout_with_a_space(tmp: Path) -> Path:
    """'My Notes/repo' with what `make notebook-tests` needs (.venv linked, stamps older than it), beside 'My'."""
    repo = tmp / "My Notes" / "repo"
    repo.mkdir(parents=True)
    for name in ("Makefile", "requirements.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, repo / name)
        os.utime(repo / name, (0, 0))  # older than .venv's install stamp: nothing to reinstall
    shutil.copytree(ROOT / "tools", repo / "tools")
    shutil.copytree(ROOT / "tests" / "offline_guard", repo / "tests" / "offline_guard")
    (repo / "tests" / "browser").mkdir()
    shutil.copy(ROOT / "tests" / "browser" / "series.py", repo / "tests" / "browser")  # which notebooks show widgets
    (repo / ".venv").symlink_to(ROOT / ".venv")
    return repo


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """The planted notebook executed at full width (as `make notebooks` stores it), then `make notebook-tests`
    run on it from 'My Notes/repo': (full-width text of the kernel-dependent cell, the make result, tmp)."""
    if not (ROOT / ".venv" / ".installed").exists():
        pytest.skip("needs a finished .venv (make test makes it first)")
    tmp = tmp_path_factory.mktemp("planted")
    (tmp / "My").write_text("a learner's notes\n")  # what the unquoted path's first word names
    repo = _checkout_with_a_space(tmp)
    folder = repo / "my notebooks"
    folder.mkdir()
    full_env = {k: v for k, v in os.environ.items() if k not in NARROWING}  # full width, as `make notebooks` runs
    nb = _planted_notebook()
    # Each cell's stored output is what it prints at full width, in a fresh Python as a kernel would run it (one
    # process, not a kernel: the text is what nbval compares, and a kernel's start-up costs seconds more)
    marker = "\n--- next cell ---\n"
    one_thread = {**full_env, "OMP_NUM_THREADS": "1"}  # as make's nbval runs (a thread count moves an exp's bits)
    texts = _printed(f"\nprint({marker!r}, end='')\n".join(c.source for c in nb.cells), one_thread).split(marker)
    for count, (cell, text) in enumerate(zip(nb.cells, texts, strict=True), start=1):
        cell.outputs, cell.execution_count = [nbformat.v4.new_output("stream", name="stdout", text=text)], count
    nbformat.write(nb, folder / "planted.ipynb")
    env = {k: v for k, v in full_env.items() if not k.startswith("PYTEST_")}
    result = subprocess.run(["make", "--no-print-directory", "notebook-tests", "NBVAL_DIR=my notebooks",
                             f"PYTHON={_base_python()}"], cwd=repo, env=env, capture_output=True, text=True,
                            timeout=300)
    return nb.cells[1].outputs[0]["text"], result, tmp


def test_make_notebook_tests_catches_a_kernel_dependent_checked_output(planted_run):
    full, result, _ = planted_run
    narrow = _printed(KERNEL_DEPENDENT, _narrow_env())
    if full == narrow:  # the premise: the planted cell's text depends on which kernels run it
        pytest.skip(f"this CPU's widest PyTorch kernels print what an AVX2 machine's print ({full.strip()}): "
                    "there is nothing wider here to compare with")
    out = result.stdout + result.stderr
    assert result.returncode != 0, f"the narrowed nbval run passed a kernel-dependent checked output:\n{out[-3000:]}"
    summary = out.split("short test summary info")[-1]
    assert "planted.ipynb::Cell 1" in summary and "planted.ipynb::Cell 0" not in summary, out[-3000:]
    assert "1 failed, 1 passed" in summary, out[-3000:]


def test_notebook_tests_from_a_path_with_a_space_delete_nothing_beside_it(planted_run):
    _, result, tmp = planted_run
    out = result.stdout + result.stderr
    assert (tmp / "My").exists(), f"make deleted {tmp / 'My'}:\n{out[-2000:]}"
    assert not (tmp / "My Notes" / "repo" / "Notes").exists() and not (tmp / "Notes").exists()
    # nbval ran both cells from the spaced path: the exact one passed (the other passes or fails by this CPU)
    assert "planted.ipynb::Cell 0" not in out.split("short test summary info")[-1], out[-3000:]
    assert "1 failed, 1 passed" in out or (result.returncode == 0 and "2 passed" in out), out[-3000:]
    # a notebook that shows no widget also runs at full width (the browser tests do not run it), and passes there
    full_width = out.split("at full width, the notebooks without a widget (planted;")[-1]
    assert full_width != out and "2 passed" in full_width, out[-3000:]
