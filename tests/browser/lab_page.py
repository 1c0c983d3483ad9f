"""Drive one notebook in JupyterLab the way a reader does: open it, Run All, read and move its widgets.

Everything here goes through the page (menus, keyboard, DOM), never through JupyterLab's internals,
so a test that passes here means a reader with a browser sees the same.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

RUN_ALL_TIMEOUT_S = 600  # several notebooks run at once on 2 cores; several load SmolLM2
# How long a widget must stay unchanged, after the kernel has answered, before a move counts as drawn. The
# kernel is idle again only after every message of the update has been sent, so this only covers the
# browser's own drawing; latency measurements wait longer (LATENCY_QUIET_MS) so that no late change is missed.
QUIET_MS = 100
LATENCY_QUIET_MS = 200


# CSS animations and transitions off in every page: while eight notebooks run, JupyterLab's busy indicators and
# the editor's blinking cursor repaint many times a second in every tab, which costs the kernels CPU time; and a
# redraw that animates would have to be waited for. Nothing the tests check is an animation.
NO_MOTION_SCRIPT = """(() => {
  const add = () => {
    const style = document.createElement('style');
    style.textContent = '*, *::before, *::after { animation: none !important; transition: none !important; }';
    document.head.appendChild(style);
  };
  if (document.head) add(); else document.addEventListener('DOMContentLoaded', add);
})()"""

_ERROR_SCRIPT = """(root) => {
  const found = [];
  for (const el of root.querySelectorAll('.jp-OutputArea-output')) {
    const mime = el.getAttribute('data-mime-type') || '';
    const text = el.innerText || '';
    if (mime === 'application/vnd.jupyter.stderr' && /Traceback|Error|Exception/.test(text)) {
      found.push('error output: ' + text.slice(0, 600));
    }
  }
  if (/Error displaying widget/.test(root.innerText)) {
    found.push('a widget failed: "Error displaying widget" is shown');
  }
  return found;
}"""

# Opened: every cell of the file is in the DOM and the status bar says the kernel is idle (before the
# kernel connects the toolbar indicator also reads "idle", so it cannot be trusted alone).
_OPENED = """(nCells) => {
  const panel = document.querySelector('.jp-NotebookPanel');
  if (!panel || panel.querySelectorAll('.jp-Notebook .jp-Cell').length !== nCells) return false;
  const status = Array.from(document.querySelectorAll('.jp-StatusBar-TextItem')).map(e => e.textContent).join('|');
  return /\\| Idle/.test(status) && panel.querySelector('.jp-Notebook-ExecutionIndicator[data-status="idle"]') !== null;
}"""

_UNEXECUTED_SCRIPT = """() => Array.from(document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell'))
    .filter(c => (c.querySelector('.cm-content') || {textContent: ''}).textContent.trim() !== '')
    .filter(c => !/\\[\\d+\\]/.test(c.querySelector('.jp-InputPrompt').textContent)).length"""

# Run All is over when the kernel is idle, no cell is queued or running ([*]), and either every
# non-empty code cell has an execution count or an error output stopped the run.
_RUN_ALL_DONE = """() => {
  const panel = document.querySelector('.jp-NotebookPanel');
  if (!panel) return false;
  const idle = panel.querySelector('.jp-Notebook-ExecutionIndicator[data-status="idle"]');
  const prompts = Array.from(panel.querySelectorAll('.jp-CodeCell'))
    .filter(c => (c.querySelector('.cm-content') || {textContent: ''}).textContent.trim() !== '')
    .map(c => c.querySelector('.jp-InputPrompt').textContent);
  if (!idle || prompts.some(t => t.includes('*'))) return false;
  const failed = panel.querySelector('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]');
  return prompts.every(t => /\\[\\d+\\]/.test(t)) || (failed !== null && /Traceback/.test(failed.textContent));
}"""

# Every control of a widget, by its label: sliders give the handle's aria value (the index, for a
# SelectionSlider), the shown readout and how many positions there are; dropdowns give the shown
# option and all option labels. HTML readouts come as plain text lines.
_CONTROLS_SCRIPT = """(root) => {
  const out = {sliders: {}, dropdowns: {}, html: []};
  for (const s of root.querySelectorAll('.widget-slider')) {
    const h = s.querySelector('[role="slider"]');
    const label = (s.querySelector('.widget-label') || {textContent: ''}).textContent.trim();
    out.sliders[label] = {value: Number(h.getAttribute('aria-valuenow')), min: Number(h.getAttribute('aria-valuemin')),
                          max: Number(h.getAttribute('aria-valuemax')),
                          readout: (s.querySelector('.widget-readout') || {textContent: ''}).textContent.trim()};
  }
  for (const d of root.querySelectorAll('.widget-dropdown')) {
    const sel = d.querySelector('select');
    const label = (d.querySelector('.widget-label') || {textContent: ''}).textContent.trim();
    const text = (o) => o.textContent.replace(/\u00a0/g, ' ');  // ipywidgets shows spaces as no-break spaces
    out.dropdowns[label] = {selected: sel.selectedIndex >= 0 ? text(sel.options[sel.selectedIndex]) : null,
                            options: Array.from(sel.options).map(text)};
  }
  for (const h of root.querySelectorAll('.widget-html-content')) out.html.push(h.innerText);
  return out;
}"""

_STDERR_SCRIPT = """(root) => Array.from(root.querySelectorAll(
    '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')).map(e => e.innerText.slice(0, 300))"""

_SLIDERS_SCRIPT = """(root) => Array.from(root.querySelectorAll('.widget-slider')).map(s => {
  const h = s.querySelector('[role="slider"]');
  return {label: (s.querySelector('.widget-label') || {}).innerText || '',
          value: h ? Number(h.getAttribute('aria-valuenow')) : null,
          min: h ? Number(h.getAttribute('aria-valuemin')) : null,
          max: h ? Number(h.getAttribute('aria-valuemax')) : null,
          readout: (s.querySelector('.widget-readout') || {}).innerText || '',
          disabled: s.querySelector('.slider[disabled]') !== null};  // how ipywidgets marks a greyed-out slider
})"""

# A one-shot probe: the start is stamped by the next keydown (capture phase), or at once for a
# dropdown; a MutationObserver on the widget stamps every change outside the control being moved
# (readout, figure, other controls), and one on the notebook's kernel indicator stamps the kernel going
# busy and coming back idle (the round trip of the widget's message). The update is finished at the last
# change before the widget has been quiet for a while.
_PROBE_SCRIPT = """([root, moved, startNow]) => {
  const handle = moved.querySelector('[role="slider"]');  // a slider's handle: its value before the key
  const probe = {start: startNow ? performance.now() : null, last: null, changes: 0, busy: false, backIdle: null,
                 handle: handle, value0: handle ? handle.getAttribute('aria-valuenow') : null};
  if (window.__gqaProbe) window.__gqaProbe.stop();
  window.__gqaProbe = probe;
  const observer = new MutationObserver((records) => {
    if (probe.start === null) return;
    if (records.some(r => !moved.contains(r.target))) { probe.last = performance.now(); probe.changes += 1; }
  });
  observer.observe(root, {subtree: true, childList: true, characterData: true, attributes: true});
  const indicator = document.querySelector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator');
  const kernel = new MutationObserver(() => {
    if (probe.start === null) return;
    const status = indicator.getAttribute('data-status');
    if (status === 'busy') { probe.busy = true; probe.backIdle = null; }
    else if (status === 'idle' && probe.busy) probe.backIdle = performance.now();
  });
  if (indicator) kernel.observe(indicator, {attributes: true, attributeFilter: ['data-status']});
  probe.stop = () => { observer.disconnect(); kernel.disconnect(); };
  const onKey = () => { if (probe.start === null) probe.start = performance.now(); };
  if (!startNow) document.addEventListener('keydown', onKey, {capture: true, once: true});
}"""

# Settled: the kernel is idle again (so every update it sent has arrived: its messages come in order,
# "idle" last), something changed and nothing since ``quiet`` ms; or nothing changed for ``quiet`` ms after
# the kernel's round trip (a move the kernel answers without a visible change); or, when the kernel was
# never asked, nothing changed for ``idle`` ms; a slider key that left the handle's value where it was (Home
# at the minimum, an arrow at an end) sends the kernel nothing, so there ``still`` ms of nothing are enough.
_PROBE_SETTLED = """([quiet, idle, still]) => { const p = window.__gqaProbe; const now = performance.now();
  if (!p || p.start === null) return false;
  const status = Array.from(document.querySelectorAll('.jp-StatusBar-TextItem')).map(e => e.textContent).join('|');
  if (!/\\| Idle/.test(status)) return false;
  if (p.last !== null) return now - p.last > quiet;
  if (p.backIdle !== null) return now - p.backIdle > quiet;
  if (!p.busy && p.handle && p.handle.getAttribute('aria-valuenow') === p.value0) return now - p.start > still;
  return now - p.start > idle; }"""


# Text a reader cannot read in full: for every piece of widget text (labels, slider readouts, buttons,
# the chosen option of a dropdown, HTML readouts) either its box cuts it short (its content is wider or
# taller than the box that clips it) or something else is drawn over it (the element at points across
# its text, found with document.elementFromPoint, is not the text's own element or inside it). Each
# element is scrolled into view vertically first, so the points are on screen; sideways, what a row
# wider than its output area hides on the right counts as hidden. Returns one line per problem.
_TEXT_FITS_SCRIPT = """(root) => {
  const problems = [];
  const describe = (el) => {
    const cls = (el.className && el.className.baseVal === undefined ? el.className : '').toString().trim()
      .split(/\\s+/).filter(c => c.startsWith('widget') || c.startsWith('jp-')).slice(0, 2).join('.');
    const text = (el.innerText || el.value || '').trim().replace(/\\s+/g, ' ').slice(0, 60);
    return `<${el.tagName.toLowerCase()}${cls ? '.' + cls : ''}> "${text}"`;
  };
  const selector = ['.widget-label', '.widget-readout', '.widget-button', '.widget-toggle-button',
                    '.widget-dropdown select', '.widget-html-content', '.widget-checkbox label', 'button'].join(', ');
  const seen = new Set();
  for (const el of root.querySelectorAll(selector)) {
    if (seen.has(el)) continue;
    seen.add(el);
    const style = getComputedStyle(el);
    if (style.display === 'none' || style.visibility === 'hidden' || el.getClientRects().length === 0) continue;
    let text = el.tagName === 'SELECT' ? ((el.options[el.selectedIndex] || {}).text || '') : (el.innerText || '');
    text = text.trim();
    if (!text) continue;
    el.scrollIntoView({block: 'nearest', inline: 'nearest'});
    // ... but only vertically: a reader sees the start of a row that is wider than its output area, so
    // text beyond its right edge counts as hidden (it is, until the reader scrolls sideways).
    for (let p = el.parentElement; p; p = p.parentElement) if (p.scrollLeft) p.scrollLeft = 0;
    if (el.tagName === 'SELECT') {
      // A <select> shows its chosen option in its own box, less the padding and the arrow.
      const ctx = document.createElement('canvas').getContext('2d');
      ctx.font = `${style.fontWeight} ${style.fontSize} ${style.fontFamily}`;
      const need = ctx.measureText(text.replace(/\\u00a0/g, ' ')).width;
      const room = el.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
      if (need > room + 1) problems.push(`${describe(el)}: the chosen option needs ${Math.ceil(need)} px, `
                                         + `the box shows ${Math.floor(room)} px`);
    } else if (el.scrollWidth > el.clientWidth + 1 && style.overflowX !== 'visible') {
      problems.push(`${describe(el)}: cut short (text ${el.scrollWidth} px wide, box ${el.clientWidth} px)`);
      continue;
    } else if (el.scrollHeight > el.clientHeight + 1 && style.overflowY !== 'visible') {
      problems.push(`${describe(el)}: cut short (text ${el.scrollHeight} px tall, box ${el.clientHeight} px)`);
      continue;
    }
    // Points across the text: start, middle and end of each line box of the text (at most 40 lines).
    const rects = [];
    if (el.tagName === 'SELECT' || el.tagName === 'BUTTON') {
      rects.push(el.getBoundingClientRect());
    } else {
      const range = document.createRange();
      range.selectNodeContents(el);
      for (const r of range.getClientRects()) if (r.width > 2 && r.height > 2) rects.push(r);
    }
    let reported = false;
    for (const r of rects.slice(0, 40)) {
      for (const fx of [0.02, 0.5, 0.98]) {
        const x = r.left + fx * r.width, y = r.top + r.height / 2;
        if (x < 0 || y < 0 || x >= innerWidth || y >= innerHeight) continue;
        const hit = document.elementFromPoint(x, y);
        if (hit && (hit === el || el.contains(hit))) continue;
        problems.push(`${describe(el)}: covered at (${Math.round(x)}, ${Math.round(y)}) by `
                      + (hit ? describe(hit) : 'nothing (outside its clip)'));
        reported = true;
        break;
      }
      if (reported) break;
    }
  }
  return problems;
}"""


@dataclass
class Slider:
    label: str
    value: float
    min: float
    max: float
    readout: str
    disabled: bool  # greyed out: its keys move nothing (the calculator's MLA sliders while it prices K and V)


class NotebookPage:
    """One notebook opened in its own browser tab."""

    def __init__(self, page, lab, name: str):
        self.page, self.lab, self.name = page, lab, name
        self.run_seconds: float | None = None
        self._run_started: float | None = None
        self._pointer_parked = False  # the mouse is at (0, 0), over no widget (clicks move it)

    # -- opening and running -------------------------------------------------------------------------
    def goto(self) -> NotebookPage:
        """Load JupyterLab with the notebook (returns once the page has loaded, before the notebook has)."""
        self.page.goto(self.lab.notebook_url(self.name))
        return self

    def wait_opened(self) -> NotebookPage:
        """Wait until all the notebook's cells are shown and its python3 kernel is connected and idle."""
        n_cells = len(json.loads((self.lab.root_dir / self.name).read_text())["cells"])
        self.page.wait_for_function(_OPENED, arg=n_cells, timeout=180_000, polling=250)
        if self.page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").count():
            self.page.keyboard.press("Control+b")  # hide the file browser: more room for the notebook
        return self

    def open(self) -> NotebookPage:
        return self.goto().wait_opened()

    @property
    def notebook(self):
        return self.page.locator(".jp-NotebookPanel:visible .jp-Notebook").first

    def start_run_all(self) -> None:
        """Run > Run All Cells (returns at once; ``wait_run_all`` waits for the end)."""
        self._run_started = time.monotonic()
        self.page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        self.page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()

    @property
    def run_started(self) -> bool:
        return self._run_started is not None

    def run_all_done(self) -> bool:
        """Whether a started Run All is over (a look at the page, without waiting); records its seconds."""
        if self.run_seconds is None and self.run_started and self.page.evaluate(_RUN_ALL_DONE):
            self.page.wait_for_timeout(500)  # let the last widget views and images attach
            self.run_seconds = time.monotonic() - self._run_started
        return self.run_seconds is not None

    def wait_run_all(self, timeout_s: float = RUN_ALL_TIMEOUT_S) -> float:
        """Wait until every code cell ran (or one failed, which stops Run All); return seconds since the start."""
        self.page.wait_for_function(_RUN_ALL_DONE, timeout=timeout_s * 1000, polling=250)
        self.page.wait_for_timeout(500)  # let the last widget views and images attach
        self.run_seconds = time.monotonic() - self._run_started
        return self.run_seconds

    def run_all(self, timeout_s: float = RUN_ALL_TIMEOUT_S) -> float:
        self.start_run_all()
        return self.wait_run_all(timeout_s)

    def save(self):
        """Save the notebook as a reader does (Ctrl+S); return the path of the saved file, once it is written."""
        path = self.lab.root_dir / self.name
        before = path.stat().st_mtime_ns
        self.page.keyboard.press("Control+s")
        self.page.wait_for_function("""() => !document.querySelector('.lm-TabBar-tab.jp-mod-current.jp-mod-dirty')""",
                                    timeout=60_000, polling=100)
        deadline = time.monotonic() + 60
        while path.stat().st_mtime_ns == before:
            assert time.monotonic() < deadline, f"{self.name}: Ctrl+S did not write the notebook within 60 s"
            time.sleep(0.1)
        return path

    def unexecuted_code_cells(self) -> int:
        """Non-empty code cells without an execution count (Run All stops at the first error)."""
        return self.page.evaluate(_UNEXECUTED_SCRIPT)

    def errors(self) -> list[str]:
        return self.notebook.evaluate(_ERROR_SCRIPT)

    def stderr_outputs(self) -> list[str]:
        return self.notebook.evaluate(_STDERR_SCRIPT)

    # -- widgets -------------------------------------------------------------------------------------
    def widget_roots(self):
        """The outermost widget view of each output that shows a widget, in notebook order."""
        return self.page.locator(".jp-OutputArea-output > .jupyter-widgets.widget-container, "
                                 ".jp-OutputArea-output > .jupyter-widgets.widget-box")

    def widget_with_slider(self, label: str):
        """The first widget in the notebook that has a slider labelled ``label``."""
        roots = self.widget_roots()
        for i in range(roots.count()):
            if self.slider_box(roots.nth(i), label).count():
                return roots.nth(i)
        raise AssertionError(f"{self.name}: no widget with a {label!r} slider")

    def values_reachable_by_keyboard(self, root, label: str, read, n_choices: str) -> list:
        """What the widget shows at every position of slider ``label``: Home, then ArrowRight to the end.

        ``read(nb, root)`` returns a dict of what the widget shows, with the slider's number of
        positions under the key ``n_choices``; one such dict is returned per position.
        """
        self.press(root, label, "Home")
        seen = [read(self, root)]
        for _ in range(seen[0][n_choices] - 1):
            self.press(root, label, "ArrowRight")
            seen.append(read(self, root))
        return seen

    def sliders(self, root) -> list[Slider]:
        return [Slider(**s) for s in root.evaluate(_SLIDERS_SCRIPT)]

    def slider(self, root, label: str) -> Slider:
        found = self.sliders(root)
        for s in found:  # the exact label first: "head" must not find "head dim"
            if s.label.strip().lower() == label.strip().lower():
                return s
        for s in found:
            if s.label.strip().lower().startswith(label.lower()):
                return s
        raise AssertionError(f"no slider labelled {label!r}; found {[s.label for s in self.sliders(root)]}")

    def controls(self, root) -> dict:
        """{'sliders': {label: {value, min, max, readout}}, 'dropdowns': {label: {selected, options}},
        'html': [text of each HTML readout]}."""
        return root.evaluate(_CONTROLS_SCRIPT)

    def _labelled(self, root, css: str, label: str):
        exact = re.compile(rf"^\s*{re.escape(label)}\s*$")
        return root.locator(css).filter(has=self.page.locator(".widget-label", has_text=exact)).first

    def slider_box(self, root, label: str):
        """The slider whose label is exactly ``label``."""
        return self._labelled(root, ".widget-slider", label)

    def _probe(self, root, moved, start_now: bool) -> None:
        self.page.evaluate(_PROBE_SCRIPT, [root.element_handle(), moved.element_handle(), start_now])

    def _settle(self, quiet_ms: int, idle_ms: int = 3000, still_ms: int = 500, timeout_ms: int = 30_000) -> dict:
        """Wait for the probe to settle; return {'ms': start -> last change, 'changes': count}."""
        self.page.wait_for_function(_PROBE_SETTLED, arg=[quiet_ms, idle_ms, still_ms], timeout=timeout_ms, polling=50)
        return self.page.evaluate("""() => { const p = window.__gqaProbe; p.stop();
            return {ms: p.last === null ? null : p.last - p.start, changes: p.changes}; }""")

    def press(self, root, label: str, key: str, times: int = 1, quiet_ms: int = QUIET_MS) -> None:
        """Focus the handle of slider ``label``, press ``key`` ``times`` times; wait until the widget has redrawn."""
        box = self.slider_box(root, label)
        handle = box.locator("[role='slider']").first
        handle.focus()
        for _ in range(times):
            self._probe(root, box, start_now=False)
            self.page.keyboard.press(key)
            self._settle(quiet_ms)

    def choose(self, root, label: str, option: str, quiet_ms: int = QUIET_MS) -> None:
        """Pick ``option`` (its label) in dropdown ``label``; wait until the widget has redrawn."""
        box = self._labelled(root, ".widget-dropdown", label)
        self._probe(root, box, start_now=True)
        box.locator("select").select_option(label=option)
        self._settle(quiet_ms)

    def press_and_time(self, root, label: str, key: str, quiet_ms: int = LATENCY_QUIET_MS) -> float:
        """Press ``key`` on the slider ``label``; milliseconds from the key press to the widget's last change.

        "Last change" is the last DOM change outside the moved slider (readout text, figure, other
        controls) once the kernel is idle again and the widget has stayed unchanged for ``quiet_ms``.
        Fails if nothing changed at all.
        """
        box = self.slider_box(root, label)
        box.locator("[role='slider']").first.focus()
        self._probe(root, box, start_now=False)
        self.page.keyboard.press(key)
        result = self._settle(quiet_ms)
        assert result["changes"], f"pressing {key} on slider {label!r} changed nothing in the widget"
        return float(result["ms"])

    def text_problems(self, root) -> list[str]:
        """Widget text that is cut short or covered (see ``_TEXT_FITS_SCRIPT``); empty when all is readable."""
        if not self._pointer_parked:  # no hover effects or tooltips over the widget; moving the mouse costs
            self.page.mouse.move(0, 0)  # ~0.1 s on a long notebook, so it is moved only after a click
            self._pointer_parked = True
        return root.evaluate(_TEXT_FITS_SCRIPT)

    def click_and_wait(self, root, locator, quiet_ms: int = QUIET_MS) -> None:
        """Click ``locator`` inside the widget ``root``; wait until the widget has redrawn."""
        self._probe(root, locator, start_now=True)
        self._pointer_parked = False
        locator.click()
        self._settle(quiet_ms)

    def screenshot(self, path, root=None) -> None:
        """Scroll the widget's top (and the cell above it) into view and save what the reader sees."""
        if root is not None:
            root.evaluate("""e => { e.scrollIntoView({block: 'start'});
                let p = e.parentElement;
                while (p && p.scrollHeight <= p.clientHeight) p = p.parentElement;
                if (p) p.scrollTop -= 40; }""")
            root.evaluate("""e => Promise.all(Array.from(e.querySelectorAll('img')).map(
                i => i.decode().catch(() => null)))""")  # every figure decoded, not half drawn
            self.page.wait_for_timeout(150)
        self.page.screenshot(path=str(path))
