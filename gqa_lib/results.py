"""Write and read the measured results the series ships in ``data/results/`` (CSV with a metadata header).

A results file starts with ``# key: value`` lines that say how it was made (the command, the
versions, the machine, the corpus hash), then an ordinary CSV table. Writing goes to a temporary
file in the same folder that is renamed over the target only when complete, so an interrupted run
never leaves half a file; and a file that already exists is never replaced unless the caller says
``overwrite=True`` (the benchmark commands expose that as ``--overwrite``).
"""

from __future__ import annotations

import csv
import io
import os
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent.parent / "data" / "results"


class ResultsExistError(FileExistsError):
    """A results file is already there and the caller did not ask to overwrite it."""


def environment_metadata() -> dict[str, str]:
    """Versions and machine facts worth recording next to any measurement."""
    import torch

    meta = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cpu_count": str(os.cpu_count()),
        "date_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    try:
        import transformers

        meta["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - transformers is a dependency, but the writer does not need it
        pass
    return meta


def _cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo where there is one (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running, as a reader would retype it."""
    argv = sys.argv if argv is None else argv
    return " ".join([Path(sys.executable).name, *argv]) if argv else Path(sys.executable).name


def format_results(rows: list[dict], metadata: dict[str, str]) -> str:
    """The text of a results file: ``# key: value`` lines, then a CSV header and one line a row."""
    if not rows:
        raise ValueError("rows is empty: there is nothing to write")
    columns = list(rows[0])
    for i, row in enumerate(rows):
        if list(row) != columns:
            raise ValueError(f"row {i} has columns {list(row)}; every row needs {columns}")
    out = io.StringIO()
    for key, value in metadata.items():
        if "\n" in str(value) or ":" in key:
            raise ValueError(f"metadata {key!r}={value!r}: keys must not contain ':' nor values newlines")
        out.write(f"# {key}: {value}\n")
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_results(path: str | Path, rows: list[dict], metadata: dict[str, str], overwrite: bool = False) -> Path:
    """Write ``rows`` (dicts with the same keys) and ``metadata`` to ``path`` atomically.

    Refuses (``ResultsExistError``) when ``path`` exists and ``overwrite`` is False, so a quick
    trial run cannot replace the shipped results by accident.
    """
    path = Path(path)
    text = format_results(rows, metadata)
    if path.exists() and not overwrite:
        raise ResultsExistError(f"{path} exists; pass --overwrite to replace it, or --out to write elsewhere")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes the file private (0600); a results file is for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``# key: value`` header of a results file."""
    meta = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.startswith("# "):
                break
            key, _, value = line[2:].rstrip("\n").partition(": ")
            meta[key] = value
    return meta


def read_results(path: str | Path):
    """The table of a results file as a pandas DataFrame (the ``#`` header is skipped)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {path}; the command that makes it is in benchmarks/README.md")
    n_header = len(read_metadata(path))
    return pd.read_csv(path, skiprows=n_header)  # not comment="#": a cell may hold a '#'


# --- options every benchmark command shares (benchmarks/*.py) -----------------------------------

def add_output_options(parser, default_name: str) -> None:
    """Add ``--out`` (default ``data/results/<default_name>``) and ``--overwrite`` to an argparse parser."""
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / default_name,
                        help=f"CSV to write (default data/results/{default_name})")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def require_at_least_one(parser, args, names) -> None:
    """Stop with argparse's usage error if any of ``names`` (attribute names of ``args``) is below 1."""
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be at least 1")


def output_blocked(path: Path, overwrite: bool) -> bool:
    """True (after saying why on stderr) when ``path`` exists and may not be replaced: check before a long run."""
    if path.exists() and not overwrite:
        print(f"{path} exists; pass --overwrite to replace it, or --out to write elsewhere", file=sys.stderr)
        return True
    return False
