"""`make test` phase by phase: runs `make PHASE` for each phase named, in order, times each one (wall clock),
stops at the first that fails, and always ends with one table of the phases and their times, so anyone sees
where the time went. The table is also written to build/test-phases.txt (GQA_PHASES_OUT names another file).

    python3 tools/phases.py install lint unit notebook-tests browser-tests

Only the standard library: it runs before .venv exists (the first phase makes it).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The CPU's model name and widest vector extension, as a learner would quote them."""
    name, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    width = next((w for flag, w in (("amx_bf16", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags),
                 "no AVX2")
    return f"{name} ({width})"


def mmss(seconds: float) -> str:
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def main(phases: list[str]) -> int:
    make = os.environ.get("MAKE", "make")
    rows, failed = [], None
    for phase in phases:
        start = time.monotonic()
        rc = subprocess.call([make, "--no-print-directory", phase], cwd=ROOT)
        rows.append((phase, time.monotonic() - start, "passed" if rc == 0 else f"FAILED (exit {rc})"))
        if rc != 0:
            failed = rc
            break
    narrowed = ", ".join(f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                                          "MKL_ENABLE_INSTRUCTIONS") if os.environ.get(k))
    lines = [f"make test, phase by phase (wall clock, m:ss.s), {os.cpu_count()} cores, {cpu_name()}"
             + (f", kernels narrowed everywhere: {narrowed}" if narrowed else "") + ":",
             f"{'phase':<16} {'time':>8}  result"]
    lines += [f"{phase:<16} {mmss(s):>8}  {result}" for phase, s, result in rows]
    lines.append(f"{'total':<16} {mmss(sum(s for _, s, _ in rows)):>8}")
    table = "\n".join(lines)
    print("\n" + table)
    out = Path(os.environ.get("GQA_PHASES_OUT", ROOT / "build" / "test-phases.txt"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    return failed or 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python3 tools/phases.py PHASE [PHASE ...]  (make targets, run in order)")
    sys.exit(main(sys.argv[1:]))
