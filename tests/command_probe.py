"""Run benchmark commands' ``main(argv)`` for several argument lists in ONE fresh Python process.

Tests that a command refuses bad options or an existing --out before doing any work used to start one
Python (and import torch) per case: about 2.5 s each, 19 cases. Here one process imports each script
once and calls its ``main`` for every case, with stdout and stderr captured per call and a time limit on
the whole, so a command that stops refusing fails the test (it would start working and run out of
time) instead of running in the test process itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PROBE = r"""
import contextlib, importlib.util, io, json, sys, time
cases, modules, out = json.loads(sys.argv[1]), {}, []
for script, argv in cases:
    if script not in modules:
        spec = importlib.util.spec_from_file_location("probe_" + str(len(modules)), script)
        modules[script] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(modules[script])
    stdout, stderr, code = io.StringIO(), io.StringIO(), None
    start = time.perf_counter()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = modules[script].main(argv)
        except SystemExit as e:
            code = e.code
    out.append({"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(),
                "seconds": time.perf_counter() - start})
print(json.dumps(out))
"""


def run_mains(cases: list[tuple[Path, list[str]]], timeout: float = 180) -> list[dict]:
    """{'code', 'stdout', 'stderr', 'seconds'} of ``main(argv)`` for each (script, argv), in order, from one
    process; 'seconds': how long that call of ``main`` took (the script's imports, done once, not counted)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", _PROBE, json.dumps([[str(s), a] for s, a in cases])], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"the probe process failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.splitlines()[-1])
