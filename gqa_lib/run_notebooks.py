"""Re-execute notebooks top to bottom in a fresh kernel and store their outputs (``make notebooks``).

Refuses to overwrite a notebook that has uncommitted changes (someone's edits would be lost), or
one whose state git cannot report, unless ``--force`` is given. Writes to a temporary file and
renames it, so an interrupted run never leaves a half-written notebook.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def has_uncommitted_changes(path: Path) -> bool:
    """True if ``path`` differs from git's HEAD, or if git cannot tell (then we refuse to be safe)."""
    path = path.resolve()
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", path.name], capture_output=True, text=True,
                             cwd=path.parent, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return True  # no git, or not a repository: we cannot know what would be lost
    return any(line[:2].strip() and not line.startswith("??") for line in out.splitlines())


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
    p.add_argument("notebooks", nargs="+", type=Path)
    p.add_argument("--force", action="store_true", help="overwrite notebooks that have uncommitted changes")
    args = p.parse_args(argv)
    blocked = [nb for nb in args.notebooks if not args.force and has_uncommitted_changes(nb)]
    if blocked:
        names = ", ".join(map(str, blocked))
        print(f"refusing to overwrite notebooks with uncommitted changes: {names}\n"
              "commit or stash them first, or run `make notebooks FORCE=1` to overwrite", file=sys.stderr)
        return 1
    for nb in args.notebooks:
        if not nb.is_file():
            print(f"no such notebook: {nb}", file=sys.stderr)
            return 1
        print(f"executing {nb} ...", flush=True)
        print(f"  done in {execute(nb):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
