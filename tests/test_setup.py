"""The set-up a newcomer meets: which Python, a .venv that recovers, `make help`, and `make lab` as root or not.

tools/venv.py decides whether .venv must be made again (another Python asked for, or an install that
never finished); the Makefile forgets its install stamp when it must. `make lab` goes through
tools/lab.py, which adds --allow-root for root and prints the address to open.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


venv = _load("venv")
lab = _load("lab")


def _fake_venv(path: Path, executable: str, version: str, finished: bool) -> Path:
    path.mkdir()
    (path / "pyvenv.cfg").write_text(f"home = {Path(executable).parent}\nversion = {version}\n"
                                     f"executable = {executable}\n")
    if finished:
        (path / ".installed").touch()
    return path


# ---- which Python ---------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [(3, 10, 13), (3, 14, 0), (2, 7, 18)])
def test_an_unsupported_python_is_named_in_one_line_with_how_to_pick_another(version, monkeypatch, capsys):
    monkeypatch.setattr(venv.sys, "version_info", version)
    assert venv.check() == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"this is Python {'.'.join(map(str, version))}" in err
    assert "3.11, 3.12, 3.13" in err and "make lab PYTHON=python3.11" in err


@pytest.mark.parametrize("version", [(3, 11, 2), (3, 11, 7), (3, 12, 1), (3, 13, 0)])
def test_supported_pythons_pass_quietly(version, monkeypatch, capsys):
    monkeypatch.setattr(venv.sys, "version_info", version)
    assert venv.check() == 0
    assert capsys.readouterr() == ("", "")


def test_the_pins_install_on_every_311_release():
    """Debian 12's python3.11 is 3.11.2; soupsieve 3 needs 3.11.5 (broken possessive quantifiers before it)."""
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().split() if "==" in line)
    assert int(pins["soupsieve"].split(".")[0]) < 3, "soupsieve 3 does not install on Python 3.11.0-3.11.4"


# ---- a .venv that recovers ------------------------------------------------------------------------

def test_a_venv_of_this_python_with_a_finished_install_is_kept(tmp_path):
    v = _fake_venv(tmp_path / ".venv", os.path.realpath(sys.executable), venv._version(), finished=True)
    assert venv.state(str(v)) == "ok"


def test_a_venv_made_by_another_python_is_made_again(tmp_path, monkeypatch, capsys):
    v = _fake_venv(tmp_path / ".venv", "/opt/other/bin/python3.12", "3.12.1", finished=True)
    assert venv.state(str(v)).startswith("it was made by Python 3.12.1 (/opt/other/bin/python3.12)")
    made = []
    monkeypatch.setattr(venv.subprocess, "call", lambda cmd: made.append(cmd) or 0)
    assert venv.prepare(str(v)) == 0
    assert not v.exists(), "the stale .venv was kept"
    assert made == [[sys.executable, "-m", "venv", str(v)]]
    assert "making" in capsys.readouterr().out


def test_a_venv_whose_install_never_finished_is_made_again(tmp_path, monkeypatch):
    v = _fake_venv(tmp_path / ".venv", os.path.realpath(sys.executable), venv._version(), finished=False)
    assert venv.state(str(v)) == "its install did not finish"
    monkeypatch.setattr(venv.subprocess, "call", lambda cmd: 0)
    venv.prepare(str(v))
    assert not v.exists()


def test_a_folder_that_is_no_venv_is_made_again(tmp_path):
    (tmp_path / ".venv").mkdir()
    assert "no pyvenv.cfg" in venv.state(str(tmp_path / ".venv"))
    assert venv.state(str(tmp_path / "absent")) == "missing"


def _copy_of_the_setup(tmp_path: Path) -> Path:
    for name in ("Makefile", "requirements.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "tools", tmp_path / "tools")
    return tmp_path


def test_make_forgets_its_install_stamp_when_another_python_made_the_venv(tmp_path):
    repo = _copy_of_the_setup(tmp_path)
    v = _fake_venv(repo / ".venv", "/opt/other/bin/python3.12", "3.12.1", finished=True)
    result = subprocess.run(["make", "-n", "lint", f"PYTHON={sys.executable}"], cwd=repo, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not (v / ".installed").exists(), "the stamp of a stale .venv survived, so nothing would be reinstalled"
    assert "tools/venv.py prepare .venv" in result.stdout


def test_make_keeps_a_good_venv(tmp_path):
    repo = _copy_of_the_setup(tmp_path)
    v = _fake_venv(repo / ".venv", os.path.realpath(sys.executable), venv._version(), finished=True)
    os.utime(v / ".installed")  # newer than the copied requirements
    result = subprocess.run(["make", "-n", "lint", f"PYTHON={sys.executable}"], cwd=repo, capture_output=True,
                            text=True, timeout=60)
    assert (v / ".installed").exists()
    assert "venv.py prepare" not in result.stdout and "ruff check" in result.stdout


@pytest.mark.parametrize("target", ["lint", "help", "lab"])
def test_a_python_that_does_not_exist_is_named_and_changes_nothing(tmp_path, target):
    """A mistyped PYTHON used to delete the install stamp, so the next `make lab` rebuilt a good .venv."""
    repo = _copy_of_the_setup(tmp_path)
    v = _fake_venv(repo / ".venv", os.path.realpath(sys.executable), venv._version(), finished=True)
    os.utime(v / ".installed")
    before = sorted(p.relative_to(repo) for p in repo.rglob("*"))
    result = subprocess.run(["make", target, "PYTHON=/nonexistent/python3.11"], cwd=repo, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "PYTHON=/nonexistent/python3.11 is not a command here, so nothing was changed" in result.stderr
    assert (v / ".installed").exists() and sorted(p.relative_to(repo) for p in repo.rglob("*")) == before


def test_make_help_lists_the_parts_and_clean():
    out = subprocess.run(["make", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60).stdout
    for target in ("make lab", "make test", "make lint", "make unit", "make notebook-tests", "make browser-tests",
                   "make notebooks", "make clean", "PYTHON="):
        assert target in out, f"`make help` does not mention {target}"
    readme = (ROOT / "README.md").read_text()
    for target in ("make clean", "make unit", "make notebook-tests", "make browser-tests", "make lint"):
        assert target in readme, f"README.md does not mention {target}"


# ---- make lab -------------------------------------------------------------------------------------

def test_lab_command_allows_root_and_skips_the_browser_without_a_screen():
    cmd = lab.lab_command("notebooks", 8888, "abc", open_browser=False, as_root=True)
    assert "--allow-root" in cmd and "--no-browser" in cmd and "--IdentityProvider.token=abc" in cmd
    cmd = lab.lab_command("notebooks", 8888, "abc", open_browser=True, as_root=False)
    assert "--allow-root" not in cmd and "--no-browser" not in cmd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(240)
def test_make_lab_serves_the_series_and_prints_the_address(tmp_path):
    """The same command line a newcomer types (as root in CI), on a free loopback port, then stopped."""
    if not (ROOT / ".venv" / ".installed").exists():
        pytest.skip("needs the installed .venv (make test makes it first)")
    port = _free_port()
    log = tmp_path / "lab.log"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["JUPYTER_RUNTIME_DIR"] = str(tmp_path / "runtime")  # leave no server file behind
    with open(log, "w") as fh:
        proc = subprocess.Popen(["make", "lab", f"LAB_PORT={port}"], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
    try:
        url, status = None, None
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline and status != 200:
            assert proc.poll() is None, f"make lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            found = re.search(rf"http://127\.0\.0\.1:{port}/lab\?token=[0-9a-f]+", log.read_text())
            url = found.group(0) if found else None
            if url:
                try:
                    with urllib.request.urlopen(url, timeout=5) as r:
                        status = r.status
                except OSError:
                    pass
            time.sleep(1)
        assert url, f"make lab printed no address to open:\n{log.read_text()[-3000:]}"
        assert status == 200, f"{url} did not answer:\n{log.read_text()[-3000:]}"
        text = log.read_text()
        assert "No screen here" in text
        if os.geteuid() == 0:
            assert "--allow-root" in text and "Running as root is not recommended" not in text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
