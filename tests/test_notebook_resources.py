"""benchmarks/notebook_resources.py: its options are checked before any notebook runs, and what it reports is the
kernel's own memory and CPU time.

The measuring test runs one planted notebook that fills 300 MiB and spins for 1 s of CPU time in a real kernel:
the reported peak must hold the 300 MiB, agree with the kernel's VmHWM read from /proc by another route, and the
CPU time must hold the second. Everything else replaces the measuring with a stand-in.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from gqa_lib.experiments import results

ROOT = Path(__file__).resolve().parent.parent
LINUX = sys.platform.startswith("linux") and hasattr(os, "sched_setaffinity")
pytestmark = pytest.mark.skipif(not LINUX, reason="the command pins a core and reads /proc: Linux only")


@pytest.fixture(scope="module")
def command():
    spec = importlib.util.spec_from_file_location("bench_notebook_resources",
                                                  ROOT / "benchmarks" / "notebook_resources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _notebook(folder: Path, name: str, source: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# planted"), nbformat.v4.new_code_cell(source)]
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / name)
    return folder / name


@pytest.fixture
def no_work(command, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a notebook ran before the bad option was refused")

    monkeypatch.setattr(command, "measure_notebook", refuse)


def _refused(command, argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        command.main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_bad_options_are_refused_before_any_notebook_runs(command, no_work, capsys, tmp_path):
    out = ["--out", str(tmp_path / "r.csv")]
    allowed = ", ".join(map(str, sorted(os.sched_getaffinity(0))))
    cases = [
        (["--notebooks", "9"], ["--notebooks 9 is not a notebook", "valid: 01, 02, 03, 04, 05, 06, 07, 08"]),
        (["--notebooks", "kv_cache"], ["--notebooks kv_cache is not a notebook"]),
        (["--notebooks", "1", "01_kv_cache_motivation"], ["--notebooks 01_kv_cache_motivation is given twice"]),
        (["--cpu", "4096"], [f"--cpu 4096 is not a core this process may use; valid: {allowed}"]),
        (["--cpu", "-1"], ["argument --cpu", "-1 is not valid", "0 or more"]),
        (["--timeout", "0"], ["argument --timeout", "0 is not valid", "1 or more"]),
        (["--folder", str(tmp_path)], [f"--folder {tmp_path} holds no notebook"]),
    ]
    for argv, needles in cases:
        err = _refused(command, argv + out, capsys)
        assert all(n in err for n in needles), (argv, err)
    assert not (tmp_path / "r.csv").exists()


def test_notebooks_are_picked_by_number_or_name_in_the_order_given(command, tmp_path):
    args = command.parse_args(["--notebooks", "4", "01_kv_cache_motivation", "02_multi_head_attention.ipynb",
                               "--out", str(tmp_path / "r.csv")])
    assert [p.name for p in args.paths] == ["04_grouped_query_attention.ipynb", "01_kv_cache_motivation.ipynb",
                                            "02_multi_head_attention.ipynb"]
    assert len(command.parse_args(["--out", str(tmp_path / "r.csv")]).paths) == 8


@pytest.mark.skipif(shutil.which("du") is None, reason="no du to compare with")
def test_disk_bytes_counts_as_du_does(command, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "big").write_bytes(b"x" * 100_000)
    os.link(tmp_path / "a" / "big", tmp_path / "a" / "same")  # a hard link is counted once
    (tmp_path / "link").symlink_to(tmp_path / "a" / "big")  # a symbolic link is not followed
    du = int(subprocess.run(["du", "-s", "--block-size=1", str(tmp_path)], capture_output=True, text=True,
                            check=True).stdout.split()[0])
    assert command.disk_bytes(tmp_path) == du


def _row(name, **change):
    row = {"notebook": name, "code_cells": 3, "peak_rss_MiB": 512.0, "peak_rss_procfs_MiB": 511.9, "cpu_s": 9.5,
           "cpu_user_s": 9.0, "cpu_sys_s": 0.5, "wall_s": 12.0, "runner_cpu_s": 0.4, "load1_start": 1.0,
           "load1_end": 1.1, "cpu_pinned": 1}
    return {**row, **change}


def _stand_in(command, monkeypatch, rows):
    feed = iter(rows)
    monkeypatch.setattr(command, "measure_notebook", lambda path, cpu, timeout: next(feed))
    monkeypatch.setattr(command, "environment_disk", lambda: {"environment": ".venv", "environment_disk_bytes": 2**31,
                                                              "model_file_bytes": 98362432,
                                                              "checkout_tracked_bytes": 6_000_000})


def test_the_csv_is_saved_before_the_summary_and_the_summary_names_the_largest(command, monkeypatch, tmp_path,
                                                                                capsys):
    out = tmp_path / "r.csv"
    _stand_in(command, monkeypatch, [_row("01_a"), _row("02_b", peak_rss_MiB=1536.0)])
    summary = command.print_summary

    def after_saving(*args):
        assert out.exists(), "the summary was printed before the CSV was saved"
        summary(*args)

    monkeypatch.setattr(command, "print_summary", after_saving)
    assert command.main(["--notebooks", "1", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.isascii()
    assert "peaks at 1536 MiB (1.50 GiB) in 02_b" in printed and "19 s of kernel CPU time" in printed
    assert "2.00 GiB (du)" in printed and "93.8 MiB" in printed
    meta = results.read_metadata(out)
    assert meta["environment_disk_bytes"] == str(2**31) and meta["model_file_bytes"] == "98362432"
    assert meta["cpu_pinned"] and meta["loadavg_before"] and meta["loadavg_after"]
    assert results.read_results(out)["peak_rss_MiB"].tolist() == [512.0, 1536.0]


def test_a_failing_notebook_or_a_nan_writes_nothing(command, monkeypatch, tmp_path, capsys):
    out = tmp_path / "r.csv"
    _stand_in(command, monkeypatch, [_row("01_a", cpu_s=float("nan"))])
    assert command.main(["--notebooks", "1", "--out", str(out)]) == 1
    assert "cpu_s=nan" in capsys.readouterr().err and not out.exists()

    def fails(path, cpu, timeout):
        raise RuntimeError(f"{path.name} failed in its kernel, so no figures were written: ZeroDivisionError")

    monkeypatch.setattr(command, "measure_notebook", fails)
    assert command.main(["--notebooks", "1", "--out", str(out)]) == 1
    assert "01_kv_cache_motivation.ipynb failed in its kernel" in capsys.readouterr().err and not out.exists()


FILL = """block = bytearray(300 * 2**20)  # 300 MiB; the zero fill touches every page
import time
start = time.process_time()
while time.process_time() - start < 1.0:
    pass"""


def test_the_figures_are_the_kernels_own(command, tmp_path):
    """One real kernel: the 300 MiB it filled and the second it spun are in its figures, and the cell after them
    that raises is reported. The runner (the reading's only other candidate) holds neither."""
    path = _notebook(tmp_path / "notebooks", "01_fill.ipynb", FILL)
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("1 / 0"))
    nbformat.write(nb, path)
    got = command.run_in_runner(path, min(os.sched_getaffinity(0)), 120)
    assert got["code_cells"] == 2 and got["kernel_pid"]
    assert "ZeroDivisionError" in got["error"] and "\x1b[" not in got["error"]
    peak, procfs = got["peak_rss_bytes"] / 2**20, got["vmhwm_bytes"] / 2**20
    assert 300 <= peak < 300 + 200, got  # the kernel's own start-up takes some tens of MiB
    assert abs(peak - procfs) < 8, got  # two routes to the same high-water mark
    cpu = got["cpu_user_s"] + got["cpu_sys_s"]
    assert cpu >= 1.0 and got["wall_s"] >= 1.0 and got["runner_cpu_s"] < cpu, got


def test_a_failing_cell_stops_the_row_naming_the_notebook(command, monkeypatch):
    monkeypatch.setattr(command, "run_in_runner", lambda *a: {"error": "ZeroDivisionError: division by zero"})
    with pytest.raises(RuntimeError, match="02_x.ipynb failed in its kernel, so no figures were written: Zero"):
        command.measure_notebook(Path("02_x.ipynb"), 0, 1)


def test_a_row_is_made_from_the_runners_figures(command, monkeypatch):
    raw = {"error": "", "kernel_pid": 7, "wall_s": 3.456, "peak_rss_bytes": 300 * 2**20, "vmhwm_bytes": 299 * 2**20,
           "cpu_user_s": 1.25, "cpu_sys_s": 0.5, "runner_cpu_s": 0.1, "code_cells": 4, "load_start": 1.5,
           "load_end": 2.25}
    monkeypatch.setattr(command, "run_in_runner", lambda *a: raw)
    row = command.measure_notebook(Path("03_x.ipynb"), 1, 10)
    assert row == {"notebook": "03_x", "code_cells": 4, "peak_rss_MiB": 300.0, "peak_rss_procfs_MiB": 299.0,
                   "cpu_s": 1.75, "cpu_user_s": 1.25, "cpu_sys_s": 0.5, "wall_s": 3.46, "runner_cpu_s": 0.1,
                   "load1_start": 1.5, "load1_end": 2.25, "cpu_pinned": 1}


def _instructors_section() -> str:
    text = (ROOT / "README.md").read_text()
    assert "\n## For instructors\n" in text, "README.md has no 'For instructors' section"
    return text.split("\n## For instructors\n", 1)[1].split("\n## ", 1)[0]


def readme_mismatches(section: str) -> list[str]:
    """What README's "For instructors" ``section`` says that the shipped CSV does not, rounded as the command prints
    it; [] when every figure is the CSV's."""
    path = results.RESULTS_DIR / "notebook_resources.csv"
    rows, meta = results.read_results(path), results.read_metadata(path)
    problems = []
    table = {m[0]: m[1:] for m in re.findall(r"^\| (\d\d) \| (\d+) \| ([\d.]+) \| ([\d.]+) \|$", section, re.M)}
    want = {r.notebook[:2]: (f"{r.peak_rss_MiB:.0f}", f"{r.cpu_s:.1f}", f"{r.wall_s:.1f}") for r in rows.itertuples()}
    if table != want:
        problems.append(f"the table says {table}; the CSV {want}")
    top = rows.loc[rows.peak_rss_MiB.idxmax()]
    loads = [*rows.load1_start, *rows.load1_end]
    over_2_gib = [r.notebook[:2] for r in rows.itertuples() if r.peak_rss_MiB > 2048]
    quoted = [
        f"reaches {top.peak_rss_MiB:.0f} MiB ({top.peak_rss_MiB / 1024:.2f} GiB) in notebook {top.notebook[:2]}",
        f"{rows.cpu_s.sum():.0f} s of kernel CPU time", f"{rows.wall_s.sum():.0f} s of wall time",
        f"load average {min(loads):.2f} to {max(loads):.2f}",
        f"`{meta['environment']}` takes {int(meta['environment_disk_bytes']) / 2**30:.2f} GiB (du)",
        f"model file is {int(meta['model_file_bytes']) / 2**20:.1f} MiB",
        f"is {int(meta['checkout_tracked_bytes']) / 2**20:.1f} MiB", f"({meta['wall_seconds']} s here",
        f"notebooks {' and '.join(over_2_gib)} need more than 2 GiB",
    ]
    flat = " ".join(section.split())
    return problems + [f"it does not say {q!r}" for q in quoted if q not in flat]


def test_the_readme_quotes_the_shipped_figures():
    """A new measurement cannot leave old figures in the README."""
    assert readme_mismatches(_instructors_section()) == []


@pytest.mark.parametrize(("old", "new", "needle"), [
    ("| 07 | 2645 |", "| 07 | 2600 |", "the table says"),
    ("125 s of kernel CPU time", "120 s of kernel CPU time", "125 s of kernel CPU time"),
    ("2.04 GiB (du)", "2.0 GiB (du)", "GiB (du)"),
])
def test_a_stale_figure_in_the_readme_is_named(old, new, needle):
    section = _instructors_section()
    assert old in section, f"{old!r} is not in the section: the planted change needs updating"
    assert any(needle in p for p in readme_mismatches(section.replace(old, new)))
