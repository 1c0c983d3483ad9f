"""Write and read the measured results the series ships in ``data/results/`` (CSV with a metadata header).

A results file starts with ``# key: value`` lines that say how it was made (the command, the
versions, the machine, the corpus hash), then an ordinary CSV table. Writing goes to a temporary
file in the same folder that is renamed over the target only when complete, so an interrupted run
never leaves half a file; and a file that already exists is never replaced unless the caller says
``overwrite=True`` (the benchmark commands expose that as ``--overwrite``).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parents[2] / "data" / "results"


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
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; results go to a file, such as {path / 'results.csv'}")
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


def save_rows(path: str | Path, rows: list[dict], metadata: dict[str, str], overwrite: bool = False) -> Path | None:
    """``write_results``, but if writing ``path`` fails the rows go to a new file in the system's temporary
    folder instead, and stderr says why and where: a long run's measurements are never lost.

    Returns the path written, or None when even the rescue file could not be written (the error is printed).
    """
    try:
        return write_results(path, rows, metadata, overwrite=overwrite)
    except OSError as err:
        print(f"could not write {path}: {err}", file=sys.stderr)
    try:
        fd, rescue = tempfile.mkstemp(prefix=f"{Path(path).stem}-", suffix=".csv")
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(format_results(rows, metadata))
    except OSError as err:  # pragma: no cover - a full or read-only temporary folder
        print(f"and could not save the rows elsewhere either: {err}", file=sys.stderr)
        return None
    print(f"the {len(rows)} measured rows are saved in {rescue}; move it where it belongs", file=sys.stderr)
    return None


# --- options every benchmark command shares (benchmarks/*.py) -----------------------------------
#
# A benchmark command checks every option while parsing, before any work, so a typing mistake costs a
# second, not a run. Use the argparse types below for numbers and check_output_option for --out:
#
#     p.add_argument("--reps", type=results.positive_int, default=5)
#     p.add_argument("--seq-lens", type=results.positive_int, nargs="+")
#     p.add_argument("--warmup", type=results.non_negative_int, default=3)
#     p.add_argument("--window", type=results.int_at_least(2), default=256)
#     p.add_argument("--lr", type=results.positive_float, default=1e-3)
#     results.add_output_options(p, "name.csv")
#     args = p.parse_args(argv)
#     results.check_output_option(p, args)  # stops with a usage error naming the problem with --out
#
# A bad value stops the command with argparse's usage error, exit status 2, naming the option as
# typed, the value, and what is valid:  "argument --lr: -1 is not valid: must be a finite number above 0".


def int_at_least(minimum: int):
    """An argparse ``type`` that accepts whole numbers >= ``minimum`` (written as digits, e.g. '256')."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not valid: must be a whole number, "
                                             f"{minimum} or more") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is not valid: must be a whole number, {minimum} or more")
        return value

    parse.__name__ = f"int_at_least_{minimum}"
    return parse


positive_int = int_at_least(1)
positive_int.__doc__ = "argparse ``type``: a whole number 1 or more (counts, sizes, repetitions)."
non_negative_int = int_at_least(0)
non_negative_int.__doc__ = "argparse ``type``: a whole number 0 or more (seeds, warm-up runs)."


def positive_float(text: str) -> float:
    """argparse ``type``: a finite number above 0 (learning rates, durations); 'nan' and 'inf' are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid: must be a finite number above 0, "
                                         "such as 1e-3") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not valid: must be a finite number above 0, such as 1e-3")
    return value


def output_problem(path: str | Path, overwrite: bool, option: str = "--out",
                   file_name: str = "results.csv") -> str | None:
    """Why results could not be written to ``path`` at the end of a run, or None if they can.

    Checked: ``path`` is a folder (``--overwrite`` does not help: it replaces files only); a folder
    above it is a file; the nearest existing folder above it is not writable; it exists and
    ``overwrite`` is False. Only looks: creates and changes nothing. ``file_name`` is the example a
    message suggests for a folder.
    """
    path = Path(path)
    if path.is_dir():
        return (f"{option}={path} is a folder; name a file in it, such as {option} {path / file_name} "
                "(--overwrite replaces files only)")
    if path.exists() and not path.is_file():
        return f"{option}={path} exists and is not a regular file; name a file"
    if path.exists() and not overwrite:
        return f"{option}={path} exists; pass --overwrite to replace it, or {option} to write elsewhere"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{option}={path} cannot be made: {parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{option}={path} cannot be written: no permission to write in {parent}"
    return None


def add_output_options(parser, default_name: str) -> None:
    """Add ``--out`` (default ``data/results/<default_name>``) and ``--overwrite`` to an argparse parser."""
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / default_name,
                        help=f"CSV to write (default data/results/{default_name})")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def check_output_option(parser, args) -> None:
    """Stop with argparse's usage error (exit 2) if ``args.out`` could not be written (see output_problem)."""
    problem = output_problem(args.out, args.overwrite, file_name=Path(parser.get_default("out") or "results.csv").name)
    if problem:
        parser.error(problem)


def require_at_least_one(parser, args, names) -> None:
    """Stop with argparse's usage error if any of ``names`` (attribute names of ``args``) is below 1.

    Prefer ``type=positive_int`` in add_argument, which also refuses '2.5' and names the option.
    """
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be at least 1")


def output_blocked(path: Path, overwrite: bool) -> bool:
    """True (after saying why on stderr) when results could not be written to ``path``: check before a long run.

    The same checks as output_problem; check_output_option does this as part of parsing.
    """
    problem = output_problem(path, overwrite)
    if problem:
        print(problem, file=sys.stderr)
        return True
    return False


# ---- what every SmolLM2 command records and how it ends (one place, so the headers agree) -------------

def model_metadata(info: dict) -> dict[str, str]:
    """Header keys naming the model file a run used: ``gqa_lib.models.smollm.MODEL_FILE_INFO``."""
    return {"model": info["name"], "model_file": f"{info['file']} ({info['quantization']})",
            "model_sha256": info["sha256"]}


def corpus_metadata(corpus) -> dict[str, str]:
    """Header keys naming the text a run used: a ``gqa_lib.experiments.corpus.Corpus``'s Python, hash and match."""
    return {"corpus_python": corpus.python, "corpus_sha256": corpus.sha256,
            "corpus_matches_shipped": str(corpus.matches_shipped)}


def end_metadata(start: float) -> dict[str, str]:
    """Header keys written as a run ends: its wall time since ``start`` (time.perf_counter) and the load average."""
    import time

    return {"wall_seconds": f"{time.perf_counter() - start:.0f}",
            "loadavg_after": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def save_and_report(args, rows: list[dict], metadata: dict[str, str]) -> int:
    """Write ``rows`` to ``args.out`` (``args.overwrite``) with :func:`save_rows`, say where; the exit status."""
    path = save_rows(args.out, rows, metadata, overwrite=args.overwrite)  # never loses the rows
    if path is None:
        return 1
    print(f"wrote {path}")
    return 0
