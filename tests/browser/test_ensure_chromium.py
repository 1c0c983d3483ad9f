"""tests/browser/ensure_chromium.sh: quiet when Chromium is there; as a non-root user without it, says how to
install it and fails (as root it would install the Debian package, which is not tried here: no downloads)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ensure_chromium.sh")


def run(env_extra: dict, as_user: str | None = None) -> subprocess.CompletedProcess:
    """Run the script; as another user, from a world-readable copy, since the clone may sit in a folder
    only its owner can enter (a `mktemp -d` folder, root's home), which that user cannot read."""
    if not as_user:
        return subprocess.run(["bash", str(SCRIPT)], env={**os.environ, **env_extra}, capture_output=True,
                              text=True, timeout=60)
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o755)
        copy = Path(folder) / SCRIPT.name
        shutil.copy(SCRIPT, copy)
        os.chmod(copy, 0o755)
        return subprocess.run(["runuser", "-u", as_user, "--", "bash", str(copy)], cwd=folder,
                              env={**os.environ, **env_extra}, capture_output=True, text=True, timeout=60)


def test_present_chromium_passes_quietly():
    result = run({})
    assert result.returncode == 0 and not result.stdout and not result.stderr


def test_missing_chromium_for_a_non_root_user_fails_with_the_install_command():
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            pytest.skip("running as root without runuser: cannot try the non-root branch")
        result = run({"GQA_CHROMIUM": "/nonexistent/chromium"}, as_user="nobody")
    else:
        result = run({"GQA_CHROMIUM": "/nonexistent/chromium"})
    assert result.returncode == 1
    assert "sudo apt-get install chromium" in result.stderr and "/nonexistent/chromium" in result.stderr
