"""Re-execute notebooks top to bottom in a fresh kernel and store their outputs (``make notebooks``).

With no paths it runs the series' own notebooks: those git tracks in notebooks/ (a JupyterLab copy
such as ``04_...-Copy1.ipynb`` is not one of them). Refuses to overwrite a notebook that has
uncommitted changes or that git does not track (someone's work would be lost), or one whose state
git cannot report, unless ``--force`` is given (``make notebooks FORCE=1``; ``--force-value`` checks
the value make passes: only a clear yes forces). A path that does not exist is reported as such.
Writes to a temporary file and renames it, so an interrupted run never leaves a half-written notebook.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

YES = ("1", "yes", "true")  # the values of FORCE that overwrite; anything else is refused
SERIES_NAME = re.compile(r"^\d\d_[A-Za-z0-9_]+\.ipynb$")  # 01_kv_cache_motivation.ipynb


def git_state(path: Path) -> str:
    """'clean', 'edited' (differs from HEAD, staged or not), 'untracked' (new or git-ignored), or 'unknown'
    (no git to ask). An ignored file (a JupyterLab checkpoint, anything under build/) is as unsaved as a new
    one: plain ``git status`` does not list it, so it would look clean."""
    path = path.resolve()
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--", path.name], capture_output=True,
                             text=True,
                             cwd=path.parent, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"  # no git, or not a repository: we cannot know what would be lost
    lines = out.splitlines()
    if any(line.startswith(("??", "!!")) for line in lines):
        return "untracked"
    return "edited" if any(line[:2].strip() for line in lines) else "clean"


def series_notebooks(folder: Path) -> list[Path]:
    """The notebooks of the series in ``folder``: those git tracks; without git, those named NN_name.ipynb."""
    try:
        out = subprocess.run(["git", "ls-files", "--", "*.ipynb"], capture_output=True, text=True,
                             cwd=folder, check=True).stdout
        names = sorted({Path(line).name for line in out.splitlines() if "/" not in line})
    except (OSError, subprocess.CalledProcessError):
        names = sorted(p.name for p in folder.glob("*.ipynb") if SERIES_NAME.match(p.name))
    return [folder / name for name in names]


def check_force_value(value: str | None) -> bool:
    """True for a clear yes (1, yes, true; any case); None means not given; anything else raises ValueError."""
    if value is None:
        return False
    if value.strip().lower() in YES:
        return True
    raise ValueError(f"FORCE={value!r} is not a clear yes, so nothing was run. To overwrite edited or untracked "
                     f"notebooks use FORCE=1 (accepted: {', '.join(YES)}); to keep them, leave FORCE out.")


def execute(path: Path, timeout: int = 600) -> float:
    """Execute one notebook in place; return the seconds it took."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    resources = {"metadata": {"path": str(path.parent)}}
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources=resources).execute()
    elapsed = time.perf_counter() - start
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)  # git-ignored
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            nbformat.write(nb, fh)
        os.chmod(tmp, 0o644)  # mkstemp makes files private; a notebook is an ordinary readable file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)  # never leave a half-written notebook beside the real ones
        raise
    return elapsed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="*", type=Path,
                   help="notebooks or folders (default: the series' notebooks in notebooks/)")
    p.add_argument("--force", action="store_true", help="overwrite notebooks that are edited or untracked")
    p.add_argument("--force-value", metavar="VALUE", default=None,
                   help="what FORCE was set to in `make notebooks FORCE=...`: only 1, yes or true force")
    args = p.parse_args(argv)
    try:
        force = args.force or check_force_value(args.force_value)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    missing = [str(nb) for nb in args.notebooks if not nb.exists()]
    if missing:
        print(f"no such notebook or folder: {', '.join(missing)} (paths are relative to {Path.cwd()})",
              file=sys.stderr)
        return 2
    chosen = []
    for nb in args.notebooks or [Path("notebooks")]:
        chosen += series_notebooks(nb) if nb.is_dir() else [nb]
    if not chosen:
        print("no notebooks to run", file=sys.stderr)
        return 2
    if not force:
        states = {nb: git_state(nb) for nb in chosen}
        edited = [str(nb) for nb, st in states.items() if st in ("edited", "unknown")]
        untracked = [str(nb) for nb, st in states.items() if st == "untracked"]
        if edited or untracked:
            lines = ["refusing to overwrite notebooks whose stored outputs may be someone's work:"]
            if edited:
                lines.append(f"  with uncommitted changes (or git cannot tell): {', '.join(edited)}")
            if untracked:
                lines.append("  not tracked by git (new or ignored: a copy made in JupyterLab, a file under build/?): "
                             + ", ".join(untracked))
            lines.append("commit or stash them first, or run `make notebooks FORCE=1` to overwrite")
            print("\n".join(lines), file=sys.stderr)
            return 1
    for nb in chosen:
        if not nb.is_file():
            print(f"no such notebook: {nb}", file=sys.stderr)
            return 1
        print(f"executing {nb} ...", flush=True)
        print(f"  done in {execute(nb):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
