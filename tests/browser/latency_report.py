"""Merge the browser latency tables of the test processes that ran side by side (`make browser-tests`).

Each process writes build/browser-shards/latency-N.json ({widget: [ms, ...]}); this prints one table and
writes it to build/browser_latency.txt, as a single process does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import BUILD, latency_table  # noqa: E402  (one table format for one process and for several)


def main() -> int:
    merged: dict[str, list[float]] = {}
    for path in sorted((BUILD / "browser-shards").glob("latency-*.json")):
        for widget, values in json.loads(path.read_text()).items():
            merged.setdefault(widget, []).extend(values)
    if not merged:
        print("browser latency: no key presses were timed")
        return 0
    table = latency_table(merged)
    (BUILD / "browser_latency.txt").write_text(table + "\n")
    print(f"{' browser latency (also in build/browser_latency.txt) ':-^80}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
