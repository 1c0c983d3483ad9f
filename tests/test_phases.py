"""`make test` ends with a table of its phases and their times, also when a phase fails (tools/phases.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _phases(tmp_path, *phases):
    out = tmp_path / "phases.txt"
    env = {**os.environ, "GQA_PHASES_OUT": str(out)}
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "phases.py"), *phases], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    return done, out.read_text()


def test_each_phase_gets_a_row_with_its_time_and_the_total_is_their_sum(tmp_path):
    done, table = _phases(tmp_path, "help", "help")
    assert done.returncode == 0, done.stderr
    assert table in done.stdout  # printed at the end, and the same table written to the file
    rows = re.findall(r"^help\s+(\d+):(\d+\.\d)\s+passed$", table, flags=re.M)
    assert len(rows) == 2, table
    total = re.search(r"^total\s+(\d+):(\d+\.\d)$", table, flags=re.M)
    seconds = [60 * int(m) + float(s) for m, s in rows]
    assert abs(60 * int(total[1]) + float(total[2]) - sum(seconds)) <= 0.11, table
    assert "cores" in table.splitlines()[0]


def test_a_failing_phase_stops_the_run_and_is_named_in_the_table(tmp_path):
    done, table = _phases(tmp_path, "help", "no-such-phase", "help")
    assert done.returncode != 0
    assert re.search(r"^no-such-phase\s+\d+:\d+\.\d\s+FAILED \(exit \d+\)$", table, flags=re.M), table
    assert len(re.findall(r"^help\s", table, flags=re.M)) == 1, "the run went on after the failing phase"
