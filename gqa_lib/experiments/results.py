"""Write and read the measured results the series ships in ``data/results/`` (CSV with a metadata header).

A results file starts with ``# key: value`` lines that say how it was made (the command, the
versions, the machine, the corpus hash), then an ordinary CSV table. Writing goes to a temporary
file in the same folder that is renamed over the target only when complete, so an interrupted run
never leaves half a file; and a file that already exists is never replaced unless the caller says
``overwrite=True`` (the benchmark commands expose that as ``--overwrite``).

Why one module of about 380 lines: writing a results file safely (metadata, atomic rename, no overwrite,
no nan written) and reading it back (``load``, with its ceilings as numbers) are the two halves of one
format; the command-line options around them are in ``bench_cli``.
"""

from __future__ import annotations

import csv
import io
import math
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


# Header keys that hold a ceiling the run measured next to its timings: a read bandwidth in GB/s
# (10^9 bytes per second) or a matrix-multiply rate in GFLOP/s (10^9 FLOP per second). The key
# names the unit, the data type, the product's rows and the thread count: gemm_peak_GFLOPs_fp32_1t.
CEILING_PREFIXES = ("read_bandwidth_", "gemm_peak_", "decode_gemm_GFLOPs_", "kernel_in_cache_GFLOPs_")


@dataclass(frozen=True, eq=False)  # eq would compare DataFrames, which have no single truth value
class Results:
    """One results file of ``data/results/``, read once: its table, its header and the ceilings it measured.

    ``path`` (pathlib.Path): the file. ``meta`` (dict[str, str]): the ``# key: value`` header, values as
    written. ``rows`` (pandas DataFrame): the table, one row per measured case, as :func:`read_results` reads it.
    Made by :func:`load`.
    """

    path: Path
    meta: dict[str, str]
    rows: Any  # pandas.DataFrame; pandas is imported only when a file is read

    @property
    def name(self) -> str:
        """The file's stem, as :func:`load` takes it: 'decode_attention_cpu'."""
        return self.path.stem

    @property
    def ceilings(self) -> dict[str, float]:
        """Every measured ceiling in the header (keys starting with CEILING_PREFIXES) as a float; {} if none."""
        return {key: self.ceiling(key) for key in self.meta if key.startswith(CEILING_PREFIXES)}

    def ceiling(self, key: str) -> float:
        """The ceiling ``key`` of the header as a float, in the unit its name says (GBps: GB/s, GFLOPs: GFLOP/s).

        Raises KeyError naming the ceilings the file has when ``key`` is not one of them, and ValueError when
        the header's value is not a finite number.
        """
        if not key.startswith(CEILING_PREFIXES) or key not in self.meta:
            have = [k for k in self.meta if k.startswith(CEILING_PREFIXES)]
            raise KeyError(f"{self.path.name} has no ceiling {key!r}; its ceilings: "
                           f"{', '.join(have) if have else 'none (this run measured no bandwidth or FLOP rate)'}")
        try:
            value = float(self.meta[key])
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise ValueError(f"{self.path.name}: ceiling {key}={self.meta[key]!r} is not a finite number")
        return value

    def read_GBps(self, threads: int | None = None) -> float:
        """Read bandwidth in GB/s (10^9 bytes per second) measured by the run.

        ``threads``: the thread count it was measured with, for a file that measured several
        (header key ``read_bandwidth_GBps_{threads}t``); None for a file with one (``read_bandwidth_GBps``).
        Raises KeyError as :meth:`ceiling` does.
        """
        return self.ceiling("read_bandwidth_GBps" + (f"_{threads}t" if threads is not None else ""))

    def gemm_GFLOPs(self, dtype: str, threads: int, rows: int | None = None) -> float:
        """Matrix-multiply rate in GFLOP/s (10^9 FLOP per second) measured by the run, for ``dtype`` ('fp32',
        'bf16') at ``threads`` threads.

        ``rows`` None: the large product's rate, the practical peak (``gemm_peak_GFLOPs_{dtype}_{threads}t``);
        an int: the rate of the decode step's thin product with that many query rows per KV head
        (``decode_gemm_GFLOPs_{dtype}_{rows}rows_{threads}t``). Raises KeyError as :meth:`ceiling` does.
        """
        if rows is None:
            return self.ceiling(f"gemm_peak_GFLOPs_{dtype}_{threads}t")
        return self.ceiling(f"decode_gemm_GFLOPs_{dtype}_{rows}rows_{threads}t")

    def kernel_in_cache_GFLOPs(self, dtype: str, threads: int, rows: int) -> float:
        """The rate in GFLOP/s of PyTorch's attention kernel on a decode step whose K and V are already in the CPU
        cache, with ``rows`` query rows per KV head, for ``dtype`` ('fp32', 'bf16') at ``threads`` threads
        (``kernel_in_cache_GFLOPs_{dtype}_{rows}rows_{threads}t``, ``machine.measure_kernel_in_cache``): the
        arithmetic ceiling that binds a step, where :meth:`gemm_GFLOPs`'s block products only approach it.
        Raises KeyError as :meth:`ceiling` does."""
        return self.ceiling(f"kernel_in_cache_GFLOPs_{dtype}_{rows}rows_{threads}t")

    def records(self, **where) -> list[dict]:
        """The rows as a list of dicts (what the ``gqa_lib.pictures`` and analysis functions take).

        ``where``: keep only the rows whose column equals the value, e.g. ``records(threads=1, dtype='fp32')``.
        Raises KeyError naming the columns when a keyword is not one.
        """
        table = self.rows
        for column, value in where.items():
            if column not in table.columns:
                raise KeyError(f"{self.path.name} has no column {column!r}; its columns: {', '.join(table.columns)}")
            table = table[table[column] == value]
        return table.to_dict("records")

    @property
    def provenance(self) -> str:
        """One line: the file, its row count, the command that made it, when, where, and how long it ran."""
        m = self.meta
        where = ", ".join(part for part in (m.get("date_utc", "")[:10], m.get("processor"),
                                            m.get("cpu_count") and f"{m['cpu_count']} CPUs",
                                            m.get("torch") and f"torch {m['torch']}",
                                            m.get("wall_seconds") and f"{m['wall_seconds']} s") if part)
        return f"{self.path.name} ({len(self.rows)} rows): {m.get('command', 'command not recorded')}; {where}"

    def describe(self, keys: tuple[str, ...] | list[str] = ()) -> None:
        """Print how the file was made: :attr:`provenance`, then ``key: value`` for each header key in ``keys``.

        Raises KeyError naming the header's keys when one of ``keys`` is not among them (before printing anything).
        """
        missing = [k for k in keys if k not in self.meta]
        if missing:
            raise KeyError(f"{self.path.name} has no header key {', '.join(map(repr, missing))}; "
                           f"its keys: {', '.join(self.meta)}")
        print(self.provenance)
        for key in keys:
            print(f"  {key}: {self.meta[key]}")


def load(name: str, folder: str | Path = RESULTS_DIR) -> Results:
    """The results file ``name`` of ``folder`` (default ``data/results/``) as a :class:`Results`.

    ``name``: the file's stem ('decode_attention_cpu') or its name ('decode_attention_cpu.csv'), not a path.
    Raises FileNotFoundError listing the results files ``folder`` holds when there is no such file, and
    ValueError when ``name`` holds a folder.
    """
    if Path(name).name != name:
        raise ValueError(f"name={name!r} is a path; pass the file's name, such as {Path(name).stem!r}, "
                         f"and the folder as folder=")
    folder = Path(folder)
    path = folder / (name if name.endswith(".csv") else f"{name}.csv")
    if not path.is_file():
        have = sorted(p.stem for p in folder.glob("*.csv"))
        raise FileNotFoundError(f"no results file {path.name} in {folder}; there are: "
                                f"{', '.join(have) if have else 'none'} (the commands that make them are in "
                                "benchmarks/README.md)")
    return Results(path=path, meta=read_metadata(path), rows=read_results(path))


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


def non_finite_cells(rows: list[dict], columns=(), label=(), columns_if=None) -> list[str]:
    """Every cell that should hold a finite number and does not: 'row 3 (method='window 256'): val_nll=nan'.

    ``columns``: checked in every row. ``columns_if``: {column: predicate(row)}, checked only in the rows the
    predicate accepts (a column that is blank by design elsewhere, such as a recovered fraction of a model that
    was not uptrained). ``label``: the columns that name a row in the message. A cell that is not a number
    (None, '', text) counts as not finite. Returns [] when every checked cell is finite.
    """
    checks = [(c, None) for c in columns] + list((columns_if or {}).items())
    names = (label,) if isinstance(label, str) else tuple(label)
    out = []
    for i, row in enumerate(rows):
        bad = []
        for column, applies in checks:
            if applies is not None and not applies(row):
                continue
            value = row.get(column)
            try:
                number = float(value)
            except (TypeError, ValueError):  # None, '', text: not a number at all
                bad.append(f"{column}={_shown(value)}")
                continue
            if not math.isfinite(number):
                bad.append(f"{column}={number}")
        if bad:
            named = ", ".join(f"{n}={_shown(row.get(n))}" for n in names)
            out.append(f"row {i}{f' ({named})' if named else ''}: {', '.join(bad)}")
    return out


def _shown(value) -> str:
    """A cell as a message shows it: text quoted, numbers (numpy's too) as plain digits."""
    return repr(value) if isinstance(value, str) or value is None else str(value)


def refuse_non_finite(path: str | Path, rows: list[dict], columns=(), label=(), columns_if=None) -> bool:
    """True (after saying which rows and columns on stderr) when a loss or metric of ``rows`` is nan or inf.

    A table with a nan in it looks complete but is not (a nan sorts and plots as if it were a number, and a
    nan loss lands on no chart at all), so a command checks this before it writes and writes nothing if so.
    See :func:`non_finite_cells` for the arguments.
    """
    problems = non_finite_cells(rows, columns, label, columns_if)
    if not problems:
        return False
    shown = problems[:20] + ([f"... and {len(problems) - 20} more rows"] if len(problems) > 20 else [])
    print(f"refusing to write {path}: {len(problems)} of {len(rows)} rows hold a value that is not a finite number "
          "(nan or inf), so the table would look complete but is not:\n  " + "\n  ".join(shown), file=sys.stderr)
    return True


def save_and_report(args, rows: list[dict], metadata: dict[str, str], finite=(), label=(), finite_if=None,
                    summary=None) -> int:
    """End a command: check, write ``rows`` to ``args.out`` (``args.overwrite``), then print; the exit status.

    1. ``finite`` (columns), ``finite_if`` ({column: predicate(row)}): the losses and metrics that must be finite
       numbers; if one is nan or inf nothing is written, stderr names the rows (``label``: the columns that name
       a row) and the status is 1 (:func:`refuse_non_finite`).
    2. The rows are written with :func:`save_rows`, which never loses them (a temporary file if ``args.out``
       cannot be written; status 1 then).
    3. Only then ``summary()`` (the command's printed table, if given) runs, and 'wrote <path>' is printed (also
       when the summary fails): a stdout that fails (it cannot encode a character, a closed pipe) cannot lose a
       long run's results.
    """
    if refuse_non_finite(args.out, rows, finite, label, finite_if):
        return 1
    path = save_rows(args.out, rows, metadata, overwrite=args.overwrite)  # never loses the rows
    try:
        if summary is not None:
            summary()
    finally:  # where the file is, even when the summary fails
        if path is not None:
            print(f"wrote {path}")
    return 0 if path is not None else 1
