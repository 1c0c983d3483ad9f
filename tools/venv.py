"""Make sure .venv is a virtual environment of the Python asked for, before anything is installed in it.

Run by the Makefile with the interpreter the learner chose (``make lab PYTHON=python3.12``), so it
can only use the standard library and must run on any Python 3.

    python tools/venv.py check           one line and exit 1 unless this Python can run the series
    python tools/venv.py state .venv     prints "ok" when .venv was made by this Python and its install
                                         finished, otherwise the reason it will be made again
    python tools/venv.py prepare .venv   check, then remove a stale .venv and create a fresh one if needed

Why it exists: a failed install used to leave a .venv that later runs reused, so choosing another
Python changed nothing until ``make clean``.
"""

import os
import shutil
import subprocess
import sys

# Versions tried on Linux (x86_64); see README.md "Which Python". 3.11.0-3.11.4 are fine too: the pins
# avoid packages that need 3.11.5 or later (soupsieve 3, whose regular expressions need it).
SUPPORTED = ((3, 11), (3, 12), (3, 13))
STAMP = ".installed"  # written by the Makefile after every package is installed


def _version(info=None) -> str:
    info = info or sys.version_info
    return ".".join(str(n) for n in info[:3])


def supported_message() -> str:
    names = ", ".join(f"{major}.{minor}" for major, minor in SUPPORTED)
    return (f"the series needs Python {names}; this is Python {_version()} ({sys.executable}). "
            "Pick another with, for example, `make lab PYTHON=python3.11` (or a full path).")


def check() -> int:
    if tuple(sys.version_info[:2]) not in SUPPORTED:
        print(supported_message(), file=sys.stderr)
        return 1
    return 0


def read_config(venv: str) -> dict:
    """The key = value lines of ``venv/pyvenv.cfg`` (empty if there is none)."""
    cfg = {}
    try:
        with open(os.path.join(venv, "pyvenv.cfg"), encoding="utf-8") as fh:
            for line in fh:
                key, sep, value = line.partition("=")
                if sep:
                    cfg[key.strip()] = value.strip()
    except OSError:
        pass
    return cfg


def made_by(cfg: dict) -> str:
    """The interpreter a venv was made from, as a resolved path ('' if the config does not say)."""
    exe = cfg.get("executable")
    if not exe and cfg.get("home"):  # Python before 3.11 writes only the folder
        exe = os.path.join(cfg["home"], "python" + cfg.get("version", "")[:4].rstrip("."))
    return os.path.realpath(exe) if exe else ""


def state(venv: str) -> str:
    """'ok', or why ``venv`` must be made again for this interpreter ('' reasons are never returned)."""
    if not os.path.isdir(venv):
        return "missing"
    cfg = read_config(venv)
    if not cfg:
        return "it has no pyvenv.cfg, so it is not a virtual environment made by `python -m venv`"
    want = os.path.realpath(sys.executable)
    have = made_by(cfg)
    version = cfg.get("version") or cfg.get("version_info", "")
    if have != want or (version and version != _version()):
        return "it was made by Python {} ({}), and Python {} ({}) is asked for".format(
            version or "?", have or "?", _version(), want)
    if not os.path.exists(os.path.join(venv, STAMP)):
        return "its install did not finish"
    return "ok"


def prepare(venv: str) -> int:
    if check():
        return 1
    why = state(venv)
    if why == "ok":
        return 0
    if why != "missing":
        print(f"making {venv} again: {why}")
        shutil.rmtree(venv)
    print(f"creating {venv} with Python {_version()} ({sys.executable})")
    return subprocess.call([sys.executable, "-m", "venv", venv])


def main(argv) -> int:
    if len(argv) == 2 and argv[1] == "check":
        return check()
    if len(argv) == 3 and argv[1] in ("state", "prepare"):
        if argv[1] == "state":
            print(state(argv[2]))
            return 0
        return prepare(argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
