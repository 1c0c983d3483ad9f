"""Headless update latency of every widget of the series: set a control's value, time until the update is done.

ipywidgets calls a widget's observers synchronously, so when ``control.value = x`` returns, the widget
has recomputed its readout and drawn its figure (to PNG bytes). This command builds each widget,
moves each of its controls back and forth between two neighbouring values ``--repeats`` times, and
prints the median and the worst wall time and the median CPU time per control and per widget. No
kernel, no browser: this is the Python side of an update (the browser tests in tests/browser measure
key press -> redrawn page).

Run it on a quiet machine; the numbers on a shared one are noisy, so the load average is printed
before and after. The widgets of notebooks 02 and 05 load SmolLM2 first (about 20 s, not counted);
``--skip-model`` leaves them out. Widgets keep what does not change between updates (rendered
backgrounds, the group explorer's random K/V per shape), so moving back to a value seen before is
faster than the first visit: the "max" column includes the first visits.

    .venv/bin/python benchmarks/widget_latency.py [--repeats 5] [--widgets group_explorer ...] [--skip-model]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import ipywidgets as ipw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from gqa_lib import widgets  # noqa: E402
from gqa_lib.experiments import bench_cli  # noqa: E402

MODEL_WIDGETS = ("head_heatmap_explorer", "smollm_group_explorer")  # these need SmolLM2
NOT_CONTROLS = {"readout", "image", "plot", "source", "note"}
CONTROL_TYPES = (ipw.IntSlider, ipw.FloatSlider, ipw.SelectionSlider, ipw.Dropdown, ipw.ToggleButtons,
                 ipw.Checkbox, ipw.Text)
SENTENCES = ("The cat sat on the mat because it was warm.", "Alice gave Bob the book, and then he thanked her.")


def controls_of(w) -> dict:
    return {name: c for name, c in vars(w).items()
            if isinstance(c, CONTROL_TYPES) and not name.startswith("_") and name not in NOT_CONTROLS}


def neighbour(control):
    """A value next to the control's current one (the next position, or the previous one at the end)."""
    v = control.value
    if isinstance(control, ipw.Checkbox):
        return not v
    if isinstance(control, ipw.Text):
        return SENTENCES[0] if v != SENTENCES[0] else SENTENCES[1]
    if isinstance(control, (ipw.IntSlider, ipw.FloatSlider)):
        up = v + control.step
        return up if up <= control.max else v - control.step
    options = list(control._options_values)  # selection widgets
    if len(options) < 2:
        return None
    i = options.index(v)
    return options[i + 1] if i + 1 < len(options) else options[i - 1]


def time_control(control, repeats: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per change, moving the control to a neighbour and back, ``repeats`` times each way.

    CPU time is this process's: on a machine shared with other jobs the wall time also counts the waits
    for a core, the CPU time does not.
    """
    times = []
    for _ in range(repeats):
        for _ in range(2):
            target = neighbour(control)
            if target is None or control.disabled:
                return times
            start, start_cpu = time.perf_counter(), time.process_time()
            control.value = target
            times.append((time.perf_counter() - start, time.process_time() - start_cpu))
    return times


def measure(name: str, repeats: int) -> tuple[float, dict[str, list[float]]]:
    start = time.perf_counter()
    w = getattr(widgets, name)()
    build_s = time.perf_counter() - start
    return build_s, {control: time_control(c, repeats) for control, c in controls_of(w).items()}


def main(argv=None) -> int:
    p = bench_cli.command_parser(__doc__)
    p.add_argument("--repeats", type=int, default=5, help="moves each way per control (default 5)")
    p.add_argument("--widgets", nargs="+", default=list(widgets.__all__), choices=list(widgets.__all__),
                   help="builders to measure (default: all)")
    p.add_argument("--skip-model", action="store_true", help=f"leave out {', '.join(MODEL_WIDGETS)}")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats={args.repeats} must be 1 or more")
    names = [n for n in args.widgets if not (args.skip_model and n in MODEL_WIDGETS)]
    print("headless widget update latency (ms): control.value = neighbour -> update done; "
          f"{args.repeats} moves each way per control; load average {_load()} (1, 5, 15 min) at the start")
    print(f"{'widget':<24} {'control':<14} {'changes':>7} {'median':>8} {'max':>8} {'CPU med':>8}")
    summary = []
    for name in names:
        if name in MODEL_WIDGETS:
            from gqa_lib.models import smollm

            smollm.load_smollm()  # loading is not an update: do it before the clock starts
        build_s, per_control = measure(name, args.repeats)
        everything = []
        for control, times in per_control.items():
            if not times:
                continue
            everything += times
            ms = [t * 1000 for t, _ in times]
            cpu = [c * 1000 for _, c in times]
            print(f"{name:<24} {control:<14} {len(ms):>7} {statistics.median(ms):>8.0f} {max(ms):>8.0f} "
                  f"{statistics.median(cpu):>8.0f}")
        if everything:
            summary.append((name, len(everything), statistics.median(t for t, _ in everything) * 1000,
                            max(t for t, _ in everything) * 1000, statistics.median(c for _, c in everything) * 1000,
                            build_s))
    print()
    print(f"{'widget':<24} {'changes':>7} {'median':>8} {'max':>8} {'CPU med':>8} {'build (s)':>10}")
    for name, n, med, worst, cpu, build_s in summary:
        print(f"{name:<24} {n:>7} {med:>8.0f} {worst:>8.0f} {cpu:>8.0f} {build_s:>10.1f}")
    print(f"load average {_load()} (1, 5, 15 min) at the end; {os.cpu_count()} CPUs")
    return 0


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    raise SystemExit(main())
