"""gqa_lib's layers hold: an import points only down exercises, widgets, pictures, experiments, models, core.

`make lint` runs import-linter with the layers contract in pyproject.toml; here the same contract is run
on the package as it is (kept) and on a copy with one planted upward import (broken, and the import named).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
LAYERS = ["gqa_lib.exercises", "gqa_lib.widgets", "gqa_lib.pictures", "gqa_lib.experiments", "gqa_lib.models",
          "gqa_lib.core"]


def _lint(where: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(where)}  # the copy's gqa_lib comes first on sys.path
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(where / "pyproject.toml")], cwd=where,
                          env=env, capture_output=True, text=True, timeout=120)


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "gqa_lib", tmp_path / "gqa_lib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_contract_names_every_layer_bottom_up():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert [c["layers"] for c in contracts if c["type"] == "layers"] == [LAYERS]
    on_disk = {p.name for p in (ROOT / "gqa_lib").iterdir() if (p / "__init__.py").exists()}
    assert on_disk == {name.split(".")[1] for name in LAYERS}, "every subpackage of gqa_lib sits in a layer"
    loose = sorted(p.name for p in (ROOT / "gqa_lib").glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules outside the layers: {loose}"


def test_the_package_keeps_its_layers(tmp_path):
    done = _lint(_copy(tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(("module", "upward"), [
    ("core/layout.py", "from gqa_lib.pictures import style"),  # core must not draw
    ("models/catalog.py", "import gqa_lib.experiments.results"),  # a model must not know what is measured
    ("experiments/results.py", "from gqa_lib.widgets import controls"),
])
def test_a_planted_upward_import_breaks_the_contract(tmp_path, module, upward):
    where = _copy(tmp_path)
    path = where / "gqa_lib" / module
    path.write_text(path.read_text() + f"\n{upward}  # planted\n")
    done = _lint(where)
    assert done.returncode != 0, f"the contract kept an upward import in {module}:\n{done.stdout}"
    assert "1 broken" in done.stdout
    importer = "gqa_lib." + module.removesuffix(".py").replace("/", ".")
    assert importer in done.stdout, done.stdout
