"""requirements.txt (pip) and environment.yml (conda) pin the same set, so both set-ups get the same series."""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!_-]+$")


def requirement_lines() -> list[str]:
    lines = (line.strip() for line in (REPO / "requirements.txt").read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def conda_environment() -> dict:
    return yaml.safe_load((REPO / "environment.yml").read_text())


def conda_pip_pins() -> list[str]:
    pip_sections = [d["pip"] for d in conda_environment()["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip: section"
    return [str(p).strip() for p in pip_sections[0]]


def test_every_requirement_is_pinned_exactly():
    bad = [line for line in requirement_lines() if not PIN.match(line)]
    assert not bad, f"requirements.txt lines that are not name==version: {bad}"
    names = [line.split("==")[0].lower().replace("_", "-") for line in requirement_lines()]
    assert len(names) == len(set(names)), "a package is pinned twice"


def test_conda_pip_section_is_the_same_pinned_set():
    pins = conda_pip_pins()
    assert all(PIN.match(p) for p in pins), [p for p in pins if not PIN.match(p)]
    assert len(pins) == len(set(pins))
    assert set(pins) == set(requirement_lines()), (
        f"only in requirements.txt: {sorted(set(requirement_lines()) - set(pins))}; "
        f"only in environment.yml: {sorted(set(pins) - set(requirement_lines()))}")


def test_python_311_and_torch_2_13_are_pinned():
    deps = conda_environment()["dependencies"]
    assert "python=3.11" in deps
    assert "torch==2.13.0" in requirement_lines()
    assert "torch==2.13.0" in conda_pip_pins()


def test_the_series_own_packages_are_pinned():
    names = {line.split("==")[0].lower().replace("_", "-") for line in requirement_lines()}
    needed = {"jupyterlab", "ipywidgets", "jupyterlab-widgets", "torch", "matplotlib", "seaborn", "transformers",
              "gguf", "accelerate", "nbval", "pytest", "hypothesis", "playwright", "ruff", "pyyaml"}
    assert needed <= names, f"missing pins: {sorted(needed - names)}"
