"""What each notebook of the series costs a hub: the kernel's peak memory, CPU time and wall time, on one core.

Each notebook runs top to bottom in a fresh kernel, as Restart and Run All does, one notebook at a time.
A small runner process (nbclient) is started for each notebook and pinned to one core (--cpu) with
OMP_NUM_THREADS=1; the kernel it starts inherits the pin, so the kernel computes on that one core. The
runner starts no other process, so once the kernel has shut down and been reaped, the runner's
getrusage(RUSAGE_CHILDREN) is the kernel's alone:

- peak_rss_MiB: ru_maxrss, the largest resident set the kernel process ever had (MiB = 2^20 bytes). As a
  check, peak_rss_procfs_MiB is VmHWM read from /proc/<kernel pid>/status after the last cell, by a
  different route; the two should agree within a few MiB.
- cpu_s: the kernel's user + system CPU time (ru_utime + ru_stime), its start-up imports included. CPU time
  counts only the time the kernel ran, so other programs on the machine change it far less than the wall time
  (they still compete for caches and memory bandwidth).
- wall_s: from starting the kernel to its shutdown. Other programs on the core stretch it: the 1-minute load
  average is recorded before and after each notebook (load1_start, load1_end). runner_cpu_s is the CPU time
  the runner itself used meanwhile (sending cells, receiving outputs), on the same core as the kernel.

The notebooks run in memory with notebooks/ as their working folder, as `make notebooks` runs them; their
files are never written. The header also records the disk the series needs: the Python environment
running this command (du of sys.prefix, normally .venv), the SmolLM2 model file, and the files git tracks.

    .venv/bin/python benchmarks/notebook_resources.py                      # every notebook; data/results/
    .venv/bin/python benchmarks/notebook_resources.py --notebooks 01 04 --out /tmp/n.csv

Linux only (it pins with sched_setaffinity and reads /proc).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from gqa_lib.experiments import bench_cli, results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
SERIES_NAME = re.compile(r"^(\d\d)_[A-Za-z0-9_]+\.ipynb$")  # 01_kv_cache_motivation.ipynb
MiB = 2**20
ANSI = re.compile(r"\x1b\[[0-9;]*m")
MEASURED = ("peak_rss_MiB", "cpu_s", "wall_s")  # must be finite numbers in every row
TABLE = {"notebook": 34, "cells": 5, "peak MiB": 9, "procfs MiB": 10, "CPU s": 8, "wall s": 8, "runner s": 8,
         "load start": 10, "load end": 8}


def _measure_here(path: str, cpu: int, timeout: int) -> None:
    """Run in a fresh runner process (its source is sent with ``python -c``): execute the notebook at ``path``
    in a new kernel pinned to ``cpu`` and print one JSON line of what the kernel used. Imports only what it
    needs, so the runner stays small."""
    import json
    import os
    import resource
    import time

    import nbformat
    import psutil
    from nbclient import NotebookClient

    os.sched_setaffinity(0, {cpu})  # the kernel started below inherits this
    me = psutil.Process()
    assert not me.children(), "the runner must have no child besides the kernel"
    nb = nbformat.read(path, as_version=4)
    kernel = {}

    def kernel_started(**_):
        kernel["pid"] = client.km.provisioner.pid

    def cell_done(**_):  # after every cell; the last reading is the kernel's high-water mark before shutdown
        try:
            with open(f"/proc/{kernel['pid']}/status") as fh:
                hwm = next(line for line in fh if line.startswith("VmHWM:"))
            kernel["vmhwm_bytes"] = int(hwm.split()[1]) * 1024
        except (OSError, StopIteration, KeyError):
            pass

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", on_notebook_start=kernel_started,
                            on_cell_executed=cell_done,
                            resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}})
    start, own_start = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    error = ""
    try:
        client.execute()
    except Exception as e:  # a failing cell: reported, and the command writes nothing
        error = f"{type(e).__name__}: {str(e)[-1500:]}"
    wall = time.perf_counter() - start
    psutil.wait_procs(me.children(recursive=True), timeout=30)  # reap anything left, so its usage is counted
    kids, own = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({
        "kernel_pid": kernel.get("pid"), "error": error, "wall_s": wall,
        "peak_rss_bytes": kids.ru_maxrss * 1024,  # Linux reports KiB
        "vmhwm_bytes": kernel.get("vmhwm_bytes"),
        "cpu_user_s": kids.ru_utime, "cpu_sys_s": kids.ru_stime,
        "runner_cpu_s": own.ru_utime + own.ru_stime - own_start.ru_utime - own_start.ru_stime,  # while it ran
        "code_cells": sum(c.cell_type == "code" for c in nb.cells),
    }))


RUNNER_SOURCE = inspect.getsource(_measure_here)  # read once, at import: an edit during a run cannot mix sources


def run_in_runner(path: Path, cpu: int, timeout: int) -> dict:
    """The raw figures of ``_measure_here`` for ``path`` from a fresh runner process, with the 1-minute load
    average before and after (``load_start``, ``load_end``). ``error`` is the failing cell's exception, or ''.
    Raises RuntimeError naming the notebook when the runner itself fails."""
    code = RUNNER_SOURCE + f"\n_measure_here({str(path)!r}, {cpu}, {timeout})\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    load_start = os.getloadavg()[0]
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    load_end = os.getloadavg()[0]
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{path.name}: the runner failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    got = json.loads(lines[-1])
    got["error"] = ANSI.sub("", got["error"])  # the kernel colours its tracebacks
    return {**got, "load_start": load_start, "load_end": load_end}


def measure_notebook(path: Path, cpu: int, timeout: int) -> dict:
    """One row: what the kernel used for one top-to-bottom run of ``path`` on core ``cpu`` (see ``_measure_here``).

    Raises RuntimeError naming the notebook when the runner fails or a cell raises."""
    got = run_in_runner(path, cpu, timeout)
    if got["error"]:
        raise RuntimeError(f"{path.name} failed in its kernel, so no figures were written: {got['error']}")
    load_start, load_end = got["load_start"], got["load_end"]
    vmhwm = got["vmhwm_bytes"]
    return {
        "notebook": path.stem, "code_cells": got["code_cells"],
        "peak_rss_MiB": round(got["peak_rss_bytes"] / MiB, 1),
        "peak_rss_procfs_MiB": round(vmhwm / MiB, 1) if vmhwm else "",
        "cpu_s": round(got["cpu_user_s"] + got["cpu_sys_s"], 2),
        "cpu_user_s": round(got["cpu_user_s"], 2), "cpu_sys_s": round(got["cpu_sys_s"], 2),
        "wall_s": round(got["wall_s"], 2), "runner_cpu_s": round(got["runner_cpu_s"], 2),
        "load1_start": round(load_start, 2), "load1_end": round(load_end, 2), "cpu_pinned": cpu,
    }


def disk_bytes(path: Path) -> int:
    """Bytes ``path`` occupies on disk, as ``du -s --block-size=1`` counts them: allocated blocks of every file,
    folder and link under it, a hard-linked file once, links not followed."""
    seen, total = set(), 0
    for folder, dirs, files in os.walk(path):
        for name in [".", *dirs, *files]:
            st = os.lstat(os.path.join(folder, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def tracked_bytes(root: Path) -> int | None:
    """Total size of the files git tracks in ``root`` (what a clone's working tree holds), or None without git."""
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True,
                               check=True).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum((root / n).lstat().st_size for n in names if n and (root / n).is_file())


def series_notebooks(folder: Path) -> dict[str, Path]:
    """The series' notebooks in ``folder`` by their two-digit number: {'01': .../01_kv_cache_motivation.ipynb}."""
    found = {}
    for p in sorted(folder.glob("*.ipynb")):
        m = SERIES_NAME.match(p.name)
        if m:
            found[m.group(1)] = p
    return found


def pick_notebooks(parser, wanted: list[str] | None, folder: Path) -> list[Path]:
    """The notebooks named by ``--notebooks`` (numbers such as 4 or 04, or names with or without .ipynb), in the
    order given; all of ``folder``'s when None. Stops with a usage error naming a value that matches none."""
    found = series_notebooks(folder)
    if not found:
        parser.error(f"--folder {folder} holds no notebook named like 01_name.ipynb")
    if not wanted:
        return list(found.values())
    picked = []
    for w in wanted:
        key = w.removesuffix(".ipynb")
        hit = found.get(key.zfill(2)) if key.isdigit() else next((p for p in found.values() if p.stem == key), None)
        if hit is None:
            parser.error(f"--notebooks {w} is not a notebook of {folder}; valid: {', '.join(found)} "
                         "(or their names)")
        if hit in picked:
            parser.error(f"--notebooks {w} is given twice; give each notebook once")
        picked.append(hit)
    return picked


def parse_args(argv=None):
    p = bench_cli.command_parser(__doc__)
    p.add_argument("--notebooks", nargs="+", metavar="N",
                   help="notebooks to run: numbers (1 or 01) or names (default: every notebook of the series)")
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    last = allowed[-1] if allowed else 0
    p.add_argument("--cpu", type=bench_cli.non_negative_int, default=last,
                   help=f"the one core the runner and its kernel are pinned to (default {last}, the last this "
                        "process may use)")
    p.add_argument("--timeout", type=bench_cli.positive_int, default=1200, help="seconds a cell may run (default 1200)")
    p.add_argument("--folder", type=Path, default=NOTEBOOKS, help="where the notebooks are (default notebooks/)")
    args = bench_cli.parse_options(p, argv, "notebook_resources.csv")
    if not hasattr(os, "sched_setaffinity") or not Path("/proc/self/status").exists():
        p.error("this command pins a core with sched_setaffinity and reads /proc: it runs on Linux only")
    if args.cpu not in allowed:
        p.error(f"--cpu {args.cpu} is not a core this process may use; valid: {', '.join(map(str, allowed))}")
    args.paths = pick_notebooks(p, args.notebooks, args.folder)
    bench_cli.check_output_option(p, args)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start, load_before = time.perf_counter(), os.getloadavg()
    print(f"{len(args.paths)} notebook(s), each in a fresh kernel pinned to core {args.cpu} with OMP_NUM_THREADS=1; "
          f"load average {' '.join(f'{x:.2f}' for x in load_before)} (1, 5, 15 min) at the start", flush=True)
    rows = []
    for path in args.paths:
        try:
            row = measure_notebook(path, args.cpu, args.timeout)
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 1
        rows.append(row)
        print(f"  done: {row['notebook']}: peak {row['peak_rss_MiB']:.0f} MiB, CPU {row['cpu_s']:.1f} s, "
              f"wall {row['wall_s']:.1f} s, load {row['load1_start']:.2f} -> {row['load1_end']:.2f}", flush=True)
    disk = environment_disk()
    meta = {
        "what": "per notebook, one top-to-bottom run in a fresh kernel on one core: the kernel's peak RSS "
                "(getrusage RUSAGE_CHILDREN ru_maxrss of a runner whose only child is the kernel; MiB = 2^20 bytes), "
                "its user+system CPU time, and the wall time from kernel start to shutdown",
        "command": results.command_line(), **results.environment_metadata(),
        "git_commit": git_commit(ROOT), "notebooks_folder": _shown(args.folder),
        "cpu_pinned": str(args.cpu), "omp_num_threads": "1",
        **{key: str(value) for key, value in disk.items()},
        "loadavg_before": " ".join(f"{x:.2f}" for x in load_before),
        **results.end_metadata(start),
    }
    return results.save_and_report(args, rows, meta, finite=MEASURED, label="notebook",
                                   summary=lambda: print_summary(rows, disk))


def environment_disk() -> dict[str, int | str]:
    """The disk figures of the header: the running environment (sys.prefix), the model file, the tracked files."""
    from gqa_lib.models import smollm

    out: dict[str, int | str] = {"environment": _shown(Path(sys.prefix)),
                                 "environment_disk_bytes": disk_bytes(Path(sys.prefix))}
    try:
        out["model_file_bytes"] = smollm.gguf_path().stat().st_size
    except (smollm.ModelFileError, OSError):
        out["model_file_bytes"] = ""
    tracked = tracked_bytes(ROOT)
    out["checkout_tracked_bytes"] = "" if tracked is None else tracked
    return out


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (.venv, notebooks), else as it is."""
    path = Path(os.path.abspath(path))  # not resolve(): a .venv that links elsewhere is still the checkout's .venv
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def git_commit(root: Path) -> str:
    """The commit checked out at ``root``, with ' (edited)' when a file git tracks in notebooks/, gqa_lib/ or data/
    differs from it (a new results file is not an edit)."""
    try:
        def git(*words):
            return subprocess.run(["git", *words], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

        head = git("rev-parse", "--short", "HEAD")
        edited = git("status", "--porcelain", "--untracked-files=no", "--", "notebooks", "gqa_lib", "data")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return head + (" (edited)" if edited else "")


def table_cells(r: dict) -> tuple:
    return (r["notebook"], r["code_cells"], f"{r['peak_rss_MiB']:.0f}",
            f"{r['peak_rss_procfs_MiB']:.0f}" if r["peak_rss_procfs_MiB"] != "" else "-",
            f"{r['cpu_s']:.1f}", f"{r['wall_s']:.1f}", f"{r['runner_cpu_s']:.1f}",
            f"{r['load1_start']:.2f}", f"{r['load1_end']:.2f}")


def print_summary(rows: list[dict], disk: dict) -> None:
    """The table, then what one user needs (printed after the CSV is saved)."""
    bench_cli.print_table(rows, TABLE, table_cells)
    top = max(rows, key=lambda r: r["peak_rss_MiB"])
    print(f"\nOne notebook at a time: the kernel peaks at {top['peak_rss_MiB']:.0f} MiB "
          f"({top['peak_rss_MiB'] / 1024:.2f} GiB) in {top['notebook']}.")
    print(f"All {len(rows)} in turn: {sum(r['cpu_s'] for r in rows):.0f} s of kernel CPU time on one core, "
          f"{sum(r['wall_s'] for r in rows):.0f} s of wall time at the load averages shown.")
    gib = disk["environment_disk_bytes"] / 2**30
    model, tracked = disk["model_file_bytes"], disk["checkout_tracked_bytes"]
    print(f"Disk: the environment ({disk['environment']}) takes {gib:.2f} GiB (du)"
          + (f", the SmolLM2 model file among it {model / 2**20:.1f} MiB" if model != "" else "")
          + (f"; the files git tracks {tracked / 2**20:.1f} MiB" if tracked != "" else "") + ".")


if __name__ == "__main__":
    raise SystemExit(main())
