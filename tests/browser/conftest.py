"""Fixtures of the browser tests: one JupyterLab server and one Chromium for the whole session.

- ``lab``: JupyterLab on 127.0.0.1, a free port and a random token, serving a COPY of notebooks/ (the
  repository's notebooks are never touched), with throw-away config/settings (lab_settings.py) and
  the offline guard on its PYTHONPATH, so every kernel it starts refuses non-loopback connections.
- ``browser``: Debian's Chromium (/usr/bin/chromium) driven by Playwright; nothing is downloaded.
- ``latency_report``: browser latencies collected by the tests, printed at the end of the run and
  written to build/browser_latency.txt.

- ``executed``: on first use, every notebook of this process's share that shows a widget is opened in its
  own tab (its kernel starts), and run (Run > Run All Cells) RUNS_AT_ONCE at a time, at this machine's full
  kernel width, in series.RUN_ORDER: the notebooks with the longest tests first. ``executed(name)`` waits for that one.
  The tests go notebook by notebook in that order: a notebook's run-all checks (errors, widgets drawn,
  checked outputs), then its interactions and text walks, which mostly wait for the browser and so overlap
  the Run Alls still going. Started all at once, every notebook finished late and the walks came after.
- The latency tests come last, at the state the text walks leave (every slider at its maximum, every
  dropdown at its last option): they wait (``quiet_machine``) until every process has done all its other
  tests, and with GQA_BROWSER_SHARD=i/n (``make browser-tests`` runs 0/2 and 1/2 side by side, each with its
  share of the notebooks, series.py) the processes take turns timing while the others wait, so nothing
  else competes with a timed key press.
Any request the page makes to a host other than 127.0.0.1 fails the session.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from lab_page import NO_MOTION_SCRIPT, RUN_ALL_TIMEOUT_S, NotebookPage
from lab_settings import make_lab_home
from series import NOTEBOOKS, ROOT, SHARD, SHARDS, WIDGET_NOTEBOOKS, in_this_shard, run_order

BUILD = ROOT / "build"
SCREENSHOTS = BUILD / "screenshots"
OFFLINE_GUARD = ROOT / "tests" / "offline_guard"
CHROMIUM = Path(os.environ.get("GQA_CHROMIUM", "/usr/bin/chromium"))  # Debian's package
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
SERVER_START_TIMEOUT_S = 90
# Run Alls going at once in one test process; `make browser-tests` runs two processes on a 2-core machine.
# Measured there (idle, the whole phase): all at once 3:52; one at a time 3:33; two at a time, the first started as
# soon as its page had opened, 3:13.
RUNS_AT_ONCE = int(os.environ.get("GQA_BROWSER_RUNS_AT_ONCE", "2"))

_LATENCIES: dict[str, list[float]] = {}  # widget name -> milliseconds, one per key press
_RUN_SECONDS: dict[str, float] = {}  # notebook -> seconds from Run All to done (runs overlap)
_PUMPS: list = []  # starts the next queued Run Alls; called between tests too (pytest_runtest_teardown)
_STDERR: list[tuple[str, str]] = []  # (notebook, text) of stderr outputs shown to readers (warnings)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {proc.returncode}; its log:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"JupyterLab did not answer {url} within {SERVER_START_TIMEOUT_S} s; log:\n"
                       f"{log.read_text()[-4000:]}")


def _clear_outputs(path: Path) -> None:
    """Serve the notebook as a reader who cleared it would open it: no stored outputs, counts or widget state.
    Run All fills them again; the checked outputs are compared with the repository's file, not this copy.
    A page that need not draw the stored figures and widgets first opens in a fraction of the time, and a cell
    left unrun cannot pass for run with a stale execution count."""
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
            cell.get("metadata", {}).pop("execution", None)
    nb.get("metadata", {}).pop("widgets", None)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


class Lab:
    """A running JupyterLab: where it is, its token and the folder it serves."""

    def __init__(self, port: int, token: str, root_dir: Path, log: Path):
        self.port, self.token, self.root_dir, self.log = port, token, root_dir, log
        self.base = f"http://127.0.0.1:{port}"

    def notebook_url(self, name: str) -> str:
        # ?reset starts from an empty workspace, so nothing left from another test is restored.
        return f"{self.base}/lab/tree/{name}?reset&token={self.token}"


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    home = tmp_path_factory.mktemp("lab-home")
    served = home / "notebooks"
    if not NOTEBOOKS.is_dir():
        pytest.fail(f"no notebooks folder at {NOTEBOOKS}")
    shutil.copytree(NOTEBOOKS, served, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for path in served.glob("*.ipynb"):
        _clear_outputs(path)
    env = {**os.environ, **make_lab_home(home)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(OFFLINE_GUARD), str(ROOT), env.get("PYTHONPATH")]))
    env["GQA_NETWORK_LOG"] = str(home / "network-attempts.log")
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONHASHSEED"] = "2"  # nbval's run uses 1: two runs whose set and dict orders differ (test_determinism.py)
    env.pop("JUPYTER_TOKEN", None)
    port, token = _free_port(), secrets.token_hex(16)
    log = home / "jupyterlab.log"
    jupyter_lab = Path(sys.executable).parent / "jupyter-lab"
    cmd = [str(jupyter_lab), "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={served}"]
    with open(log, "w") as log_fh:
        proc = subprocess.Popen(cmd, env=env, stdout=log_fh, stderr=subprocess.STDOUT, cwd=served)
    try:
        _wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", proc, log)
        yield Lab(port, token, served, log)
    finally:
        proc.terminate()  # the server shuts its kernels down on SIGTERM
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    attempts = Path(env["GQA_NETWORK_LOG"])
    if attempts.exists() and attempts.read_text().strip():
        pytest.fail(f"JupyterLab or a kernel tried to reach the network:\n{attempts.read_text()}")


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `bash tests/browser/ensure_chromium.sh` as root, "
                    "or `sudo apt-get install chromium`")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="session")
def executed(lab, browser):
    """``executed(name)``: the notebook open in its tab after Run All (see the module's docstring)."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
    ctx.set_default_timeout(30_000)
    ctx.add_init_script(NO_MOTION_SCRIPT)
    external: list[str] = []
    ctx.on("request", lambda r: external.append(r.url) if urllib.parse.urlparse(r.url).hostname not in
           (None, "127.0.0.1", "localhost") and not r.url.startswith(("data:", "blob:")) else None)
    pages: dict[str, NotebookPage] = {}
    queue: list[str] = []  # opened, Run All not started yet, in the order they start

    def pump() -> None:
        """Start queued Run Alls while fewer than RUNS_AT_ONCE of this process's are going."""
        running = sum(1 for nb in pages.values() if nb.run_started and not nb.run_all_done())
        while queue and running < RUNS_AT_ONCE:
            pages[queue.pop(0)].start_run_all()
            running += 1

    # Every page opens now (its kernel starts), but the Run Alls start a few at a time, those whose tests take
    # longest first (series.RUN_ORDER): that notebook is done early, and its interactions and text walks, which
    # mostly wait for the browser, overlap the Run Alls still going. The first Run All starts as soon as its
    # page is open, while the other pages load.
    names = run_order([n for n in WIDGET_NOTEBOOKS if in_this_shard(n)])
    for i, name in enumerate(names):
        pages[name] = NotebookPage(ctx.new_page(), lab, name).goto()
        if i == 0:
            queue.append(pages[name].wait_opened().name)
            pump()
    for name in names[1:]:
        queue.append(pages[name].wait_opened().name)
        pump()
    _PUMPS.append(pump)

    def get(name: str) -> NotebookPage:
        if name not in pages:
            pages[name] = NotebookPage(ctx.new_page(), lab, name).open()
            queue.append(name)
        nb = pages[name]
        if not nb.run_started:
            queue.remove(name)
            nb.start_run_all()
        deadline = time.monotonic() + RUN_ALL_TIMEOUT_S
        while not nb.run_all_done():  # waiting: start the next Run All as soon as another one ends
            assert time.monotonic() < deadline, f"{name}: Run All did not end within {RUN_ALL_TIMEOUT_S} s"
            pump()
            nb.page.wait_for_timeout(250)
        _RUN_SECONDS[name] = nb.run_seconds
        pump()
        return nb

    yield get
    _PUMPS.clear()
    ctx.close()
    if external:
        pytest.fail(f"the page requested hosts other than 127.0.0.1: {sorted(set(external))[:10]}")


@pytest.fixture(scope="session", autouse=True)
def _runs_start_first(request):
    """The notebooks open and the first Run Alls start before any test, so the tests of no notebook (the book)
    run while they go; a process whose tests use no notebook opens none."""
    if any("executed" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("executed")


@pytest.fixture(scope="session")
def screenshots_dir() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture(scope="session")
def latency_report():
    """Call ``latency_report(widget, ms)`` for each measured key press; the table is printed at the end."""

    def record(widget: str, ms: float) -> None:
        _LATENCIES.setdefault(widget, []).append(ms)

    return record


@pytest.fixture(scope="session")
def stderr_report():
    """Call ``stderr_report(notebook, text)`` for text a notebook shows on stderr; listed at the end of the run."""
    return lambda name, text: _STDERR.append((name, text))


def latency_table(latencies: dict[str, list[float]] | None = None) -> str:
    latencies = _LATENCIES if latencies is None else latencies
    rows = ["browser latency: key press on a slider -> readout and figure updated in the DOM (ms)",
            f"{'widget':<28} {'presses':>7} {'median':>8} {'max':>8}"]
    for widget, values in sorted(latencies.items()):
        rows.append(f"{widget:<28} {len(values):>7} {statistics.median(values):>8.0f} {max(values):>8.0f}")
    return "\n".join(rows)


def _notebook_of(item) -> str | None:
    params = getattr(item, "callspec", None)
    name = params.params.get("name") if params else None
    return name or getattr(item.module, "NOTEBOOK", None)


_LAST_LATENCY_TEST: list[str] = []  # node id of this process's last latency test, once collected
SHARD_FILES = BUILD / "browser-shards"  # where the processes of `make browser-tests` leave word for each other
BARRIER_TIMEOUT_S = 600
LATENCY_TEST = "test_keyboard_latency"


def pytest_collection_modifyitems(config, items):
    """This process's share of the notebooks only (series.py): the tests of no notebook first, then notebook
    by notebook in the order their Run Alls start (series.RUN_ORDER): run-all checks, interactions, text walks;
    then the latency tests, at the state the walks leave."""
    if SHARDS > 1:
        kept = [item for item in items if in_this_shard(_notebook_of(item))]
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
    # Notebook by notebook, in the order their Run Alls start: a notebook's interactions and text walks, which
    # mostly wait for the browser, then overlap the Run Alls still going.
    # Tests of no notebook (the book, the checks of the checks) come first, while the first Run All goes; the
    # latency tests come last of all.
    finish = run_order([n for n in WIDGET_NOTEBOOKS if in_this_shard(n)])
    first = ("test_runs_without_errors_and_draws_widgets", "test_checked_outputs_hold_at_full_width")

    def place(item) -> tuple[float, int]:
        if item.originalname == LATENCY_TEST:
            return (len(finish) + 1, 0)
        name = _notebook_of(item)
        group = finish.index(name) if name in finish else -1
        return (group, 0 if item.originalname in first else 1)

    items.sort(key=place)  # a stable sort: within a notebook, the files' own order (text walks last)
    latency = [item.nodeid for item in items if item.originalname == LATENCY_TEST]
    _LAST_LATENCY_TEST[:] = latency[-1:]
    if SHARDS > 1 and not latency:  # nothing to time here: the others need not wait for this process
        _say("latency-done")



def _wait_for(files: list[Path], what: str) -> None:
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while not all(f.exists() for f in files):
        if time.monotonic() > deadline:
            print(f"browser tests: {what} did not happen within {BARRIER_TIMEOUT_S} s; going on")
            return
        time.sleep(0.2)


def _say(name: str) -> None:
    SHARD_FILES.mkdir(parents=True, exist_ok=True)
    (SHARD_FILES / f"{name}-{SHARD}").touch()


@pytest.fixture(scope="session")
def quiet_machine(executed):
    """Before the first latency measurement of this process (the latency tests run last): every process has
    run all its notebooks and done its other tests, and the processes before this one have done their timing.
    While one process times key presses, the others wait (``pytest_runtest_teardown``), so no other work
    competes with a timed key press."""
    if SHARDS == 1:
        return
    for name in WIDGET_NOTEBOOKS:
        if in_this_shard(name):
            executed(name)
    _say("run-all-done")
    _wait_for([SHARD_FILES / f"run-all-done-{i}" for i in range(SHARDS)], "every process's other tests")
    _wait_for([SHARD_FILES / f"latency-done-{i}" for i in range(SHARD)], "the other processes' timing")


def pytest_runtest_teardown(item):
    """Between tests: start the next queued Run All if one has ended. After this process's last latency test:
    say so, and wait until every process has timed its widgets."""
    for pump in _PUMPS:
        pump()
    if SHARDS > 1 and _LAST_LATENCY_TEST and item.nodeid == _LAST_LATENCY_TEST[0]:
        _say("latency-done")
        _wait_for([SHARD_FILES / f"latency-done-{i}" for i in range(SHARDS)], "every process's timing")


def pytest_sessionfinish(session):
    """A process that stops early (a failure, an interrupt) must not keep the others waiting for it."""
    if SHARDS > 1:
        _say("run-all-done")
        _say("latency-done")


def pytest_terminal_summary(terminalreporter):
    if _STDERR:
        terminalreporter.write_sep("-", "stderr shown to readers after Run All (not errors; worth removing)")
        for name, text in _STDERR:
            terminalreporter.write_line(f"{name}: {' '.join(text.split())[:200]}")
    if _RUN_SECONDS:
        terminalreporter.write_sep("-", f"Run All in the browser, {RUNS_AT_ONCE} at a time in each process (s)")
        for name, seconds in sorted(_RUN_SECONDS.items()):
            terminalreporter.write_line(f"{name:<48} {seconds:6.0f}")
    if not _LATENCIES:
        return
    BUILD.mkdir(exist_ok=True)
    if SHARDS > 1:  # the Makefile merges the shares' tables (tests/browser/latency_report.py)
        SHARD_FILES.mkdir(parents=True, exist_ok=True)
        (SHARD_FILES / f"latency-{SHARD}.json").write_text(json.dumps(_LATENCIES))
        return
    table = latency_table()
    (BUILD / "browser_latency.txt").write_text(table + "\n")
    terminalreporter.write_sep("-", "browser latency (also in build/browser_latency.txt)")
    terminalreporter.write_line(table)
