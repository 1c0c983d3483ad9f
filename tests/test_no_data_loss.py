"""Nothing a person made is lost by the series' own commands.

- ``python tools/run_notebooks.py`` (``make notebooks``) refuses to overwrite a notebook whose edits
  are not committed, unless ``--force``; a notebook that fails to run is left as it was; an interrupted
  write leaves the old file. Tested in a throw-away git repository, never on the real notebooks.
- ``gqa_lib.experiments.results.write_results`` writes to a temporary file and renames it, and refuses to replace
  an existing results file unless ``overwrite=True``; an interrupted write leaves the old file.
- Every experiment command in benchmarks/ that writes results refuses, before doing any work, to
  replace an existing file unless given ``--overwrite``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from command_probe import run_mains

from gqa_lib.experiments import results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))  # run_notebooks is a developer tool, outside the package
import run_notebooks  # noqa: E402

BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org", "-c", "commit.gpgsign=false"]


def _notebook(source: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source)]
    return nb


def _run_notebooks(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(ROOT / "tools" / "run_notebooks.py"), *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def repo(tmp_path):
    """A git repository holding one committed notebook, notebooks/a.ipynb, that prints 42."""
    subprocess.run([*GIT, "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "notebooks").mkdir()
    nbformat.write(_notebook("print(6 * 7)"), tmp_path / "notebooks" / "a.ipynb")
    subprocess.run([*GIT, "add", "-A"], cwd=tmp_path, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", "notebook"], cwd=tmp_path, check=True)
    return tmp_path


def _edit(path: Path, source: str) -> bytes:
    nb = nbformat.read(path, as_version=4)
    nb.cells[0].source = source
    nbformat.write(nb, path)
    return path.read_bytes()


@pytest.mark.parametrize("style", ["relative", "absolute"])
def test_refuses_a_notebook_with_uncommitted_edits(repo, style):
    """``make notebooks`` passes relative paths (notebooks/*.ipynb), so both spellings must be refused."""
    path = repo / "notebooks" / "a.ipynb"
    edited = _edit(path, "print('my unsaved work')")
    result = _run_notebooks(repo, "notebooks/a.ipynb" if style == "relative" else str(path))
    assert result.returncode != 0
    assert "refusing to overwrite" in result.stderr and "a.ipynb" in result.stderr and "FORCE=1" in result.stderr
    assert path.read_bytes() == edited, "the edited notebook was changed"


def test_refuses_staged_but_uncommitted_edits(repo):
    path = repo / "notebooks" / "a.ipynb"
    edited = _edit(path, "print('staged work')")
    subprocess.run([*GIT, "add", "-A"], cwd=repo, check=True)
    assert _run_notebooks(repo, "notebooks/a.ipynb").returncode != 0
    assert path.read_bytes() == edited


def _forced_run(repo: Path, flag: str, text: str) -> nbformat.NotebookNode:
    """Edit notebooks/a.ipynb to print ``text``, run it with ``flag``; it must succeed. Returns its cell."""
    path = repo / "notebooks" / "a.ipynb"
    _edit(path, f"print({text!r})")
    result = _run_notebooks(repo, flag, "notebooks/a.ipynb")
    assert result.returncode == 0, result.stderr
    cell = nbformat.read(path, as_version=4).cells[0]
    assert cell.outputs[0]["text"] == text + "\n"
    return cell


def test_force_overwrites_and_keeps_the_edited_source(repo):
    assert _forced_run(repo, "--force", "my work, run").source == "print('my work, run')"


def test_a_committed_notebook_is_executed_in_place(repo):
    path = repo / "notebooks" / "a.ipynb"
    result = _run_notebooks(repo, "notebooks/a.ipynb")
    assert result.returncode == 0, result.stderr
    assert nbformat.read(path, as_version=4).cells[0].outputs[0]["text"] == "42\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.ipynb"], "a temporary file was left behind"
    assert oct(path.stat().st_mode & 0o777) == "0o644", "the rewritten notebook must stay readable by others"


def test_a_failing_notebook_is_left_as_it_was(repo):
    path = repo / "notebooks" / "a.ipynb"
    _edit(path, "1 / 0")
    subprocess.run([*GIT, "commit", "-q", "-am", "broken"], cwd=repo, check=True)
    before = path.read_bytes()
    result = _run_notebooks(repo, "notebooks/a.ipynb")
    assert result.returncode != 0 and "ZeroDivisionError" in result.stderr
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.ipynb"]


def test_an_interrupted_write_keeps_the_old_notebook(tmp_path, monkeypatch):
    """The disk fills up (or the user presses Ctrl-C) while the executed notebook is written."""
    path = tmp_path / "a.ipynb"
    nbformat.write(_notebook("x = 1"), path)
    before = path.read_bytes()

    def interrupted(nb, fh, *args, **kwargs):
        fh.write('{"cells": [')  # half a notebook
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(nbformat, "write", interrupted)
    monkeypatch.setattr("nbclient.NotebookClient.execute", lambda self, **kwargs: self.nb)  # no kernel needed
    with pytest.raises(OSError, match="No space left"):
        run_notebooks.execute(path, timeout=120)
    assert path.read_bytes() == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "a.ipynb"]
    assert not leftovers, f"half-written temporary notebook left in the notebooks folder: {leftovers}"


@pytest.mark.parametrize("value", ["0", "maybe"])
def test_force_must_be_a_clear_yes(repo, value):
    """`make notebooks FORCE=0` used to force, because make counts any non-empty value."""
    path = repo / "notebooks" / "a.ipynb"
    edited = _edit(path, "print('my work')")
    result = _run_notebooks(repo, f"--force-value={value}", "notebooks/a.ipynb")
    assert result.returncode == 2
    assert f"FORCE={value!r} is not a clear yes" in result.stderr and "1, yes, true" in result.stderr
    assert path.read_bytes() == edited


def test_a_clear_yes_forces(repo):
    """`FORCE=yes` runs the edited notebook end to end; every spelling of yes is the same yes to the check."""
    _forced_run(repo, "--force-value=yes", "forced")
    from run_notebooks import check_force_value

    assert all(check_force_value(v) for v in ("1", "yes", "TRUE", "True", " true "))  # no kernel needed to check


def test_untracked_copies_are_not_run_by_default_and_refused_when_named(repo):
    """A JupyterLab duplicate (04_x-Copy1.ipynb) holds a learner's outputs: never run without asking."""
    copy = repo / "notebooks" / "a-Copy1.ipynb"
    nbformat.write(_notebook("print('learner copy')"), copy)
    before = copy.read_bytes()
    result = _run_notebooks(repo)  # what `make notebooks` runs: the series' own notebooks only
    assert result.returncode == 0, result.stderr
    assert "a-Copy1" not in result.stdout and copy.read_bytes() == before
    named = _run_notebooks(repo, "notebooks/a-Copy1.ipynb")
    assert named.returncode == 1 and "not tracked by git" in named.stderr and "a-Copy1.ipynb" in named.stderr
    assert copy.read_bytes() == before


def test_a_mistyped_path_is_reported_as_missing(repo):
    result = _run_notebooks(repo, "notebook/a.ipynb")
    assert result.returncode == 2
    assert "no such notebook or folder: notebook/a.ipynb" in result.stderr and "FORCE" not in result.stderr


@pytest.mark.parametrize("value", ["no", "false", "", "maybe", "0"])
def test_the_check_refuses_what_is_not_a_clear_yes(value):
    """Each refused spelling, checked without starting a kernel (two of them also run end to end above)."""
    from run_notebooks import check_force_value

    with pytest.raises(ValueError, match="is not a clear yes"):
        check_force_value(value)


def test_make_notebooks_passes_force_through_the_check():
    makefile = (ROOT / "Makefile").read_text()
    assert '--force-value="$(FORCE)"' in makefile and "$(if $(FORCE),--force)" not in makefile


# ---- results files -------------------------------------------------------------------------

ROWS = [{"n_kv_heads": 8, "median_ms": 1.5}, {"n_kv_heads": 1, "median_ms": 0.4}]


def test_results_are_not_replaced_unless_asked(tmp_path):
    path = tmp_path / "decode.csv"
    results.write_results(path, ROWS, {"command": "first run"})
    shipped = path.read_bytes()
    with pytest.raises(results.ResultsExistError, match="--overwrite"):
        results.write_results(path, ROWS[:1], {"command": "trial run"})
    assert path.read_bytes() == shipped
    results.write_results(path, ROWS[:1], {"command": "asked to replace"}, overwrite=True)
    assert results.read_metadata(path) == {"command": "asked to replace"}


@pytest.mark.parametrize("fail_at", ["fsync", "replace"])
def test_an_interrupted_results_write_keeps_the_old_file(tmp_path, monkeypatch, fail_at):
    path = tmp_path / "decode.csv"
    results.write_results(path, ROWS, {"command": "first run"})
    shipped = path.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, fail_at, interrupted)
    with pytest.raises(KeyboardInterrupt):
        results.write_results(path, ROWS[:1], {"command": "interrupted"}, overwrite=True)
    assert path.read_bytes() == shipped
    assert [p.name for p in tmp_path.iterdir()] == ["decode.csv"], "a temporary file was left behind"


def _writes_results(script: Path) -> bool:
    text = script.read_text()
    return any(f"results.{writer}" in text for writer in ("save_rows", "write_results", "save_and_report"))


WRITERS = [s for s in BENCHMARKS if _writes_results(s)]
EXISTING = "# command: shipped\nn_kv_heads,median_ms\n8,1.5\n"


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    """For each command: its --help, then a run with --out at an existing file and no --overwrite (one process)."""
    folders = {s: tmp_path_factory.mktemp(s.stem) for s in WRITERS}
    for folder in folders.values():
        (folder / "results.csv").write_text(EXISTING)
    cases = [(s, args) for s in WRITERS for args in (["--help"], ["--out", str(folders[s] / "results.csv")])]
    done = run_mains(cases)
    return {s: (folders[s], done[2 * i], done[2 * i + 1]) for i, s in enumerate(WRITERS)}


@pytest.mark.parametrize("script", WRITERS, ids=lambda p: p.name)
def test_experiment_commands_refuse_to_replace_results(script, refusals):
    """Run with --out pointing at an existing file and no --overwrite: it must stop at once, file untouched."""
    folder, usage, result = refusals[script]
    assert "--overwrite" in usage["stdout"] and "--out" in usage["stdout"], \
        f"{script.name} must offer --out and --overwrite"
    assert result["code"] not in (0, None), f"{script.name} went ahead:\n{result['stdout'][-2000:]}"
    assert "--overwrite" in result["stderr"], result["stderr"][-2000:]
    assert (folder / "results.csv").read_text() == EXISTING
    assert [p.name for p in folder.iterdir()] == ["results.csv"]


def test_some_experiment_command_writes_results():
    """Guards the parametrized test above against silently testing nothing."""
    assert sum(_writes_results(s) for s in BENCHMARKS) >= 5, "the benchmarks that write results are not all found"


@pytest.mark.parametrize("ignored", ["build/a-run.ipynb", "notebooks/.ipynb_checkpoints/a-checkpoint.ipynb"])
def test_a_git_ignored_notebook_is_as_unsaved_as_an_untracked_one(repo, ignored):
    """Plain `git status` does not list an ignored file, so it looked clean and was overwritten unforced."""
    (repo / ".gitignore").write_text("build/\n.ipynb_checkpoints/\n")
    path = repo / ignored
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(_notebook("print('a learner ran this')"), path)
    before = path.read_bytes()
    result = _run_notebooks(repo, ignored)
    assert result.returncode == 1 and "not tracked by git (new or ignored" in result.stderr, result.stderr
    assert path.read_bytes() == before
