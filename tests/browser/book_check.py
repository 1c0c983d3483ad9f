"""Reads a built book (``make book`` -> build/book/) the way a reader's browser does, and says what is wrong.

``check_book(folder, browser)`` serves ``folder`` on a loopback port (a threaded ``http.server``), opens every
page in headless Chromium with every request outside that server blocked and counted, and checks on each page:

- no request leaves the server, and every file the page asks the server for is there;
- every image has loaded (``naturalWidth > 0``), the widgets' pictures included;
- every math expression was typeset by MathJax (an ``mjx-container`` in each ``.math`` element), and no raw
  TeX (``\\(``, ``\\[``, ``$$``, or ``$...$`` with TeX in it) is left in the text outside code;
- every stored widget view rendered its controls (an input, select, button or slider inside the rendered
  view), and no page shows the text a kernel-less view falls back to (``VBox(children=...)``, "a kernel is
  required");
- every link inside the site resolves: to a file that exists and, with a ``#fragment``, to an element with
  that id on the target page;
- no page logged a console error or threw.

It returns a ``BookReport``: the counts, and one line per problem naming the page and what is missing.
"""

from __future__ import annotations

import functools
import http.server
import re
import threading
import urllib.parse
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

# Folders of the site that hold assets, not pages.
NOT_PAGES = ("_static", "_sources", "_images", "_downloads")
WIDGET_TIMEOUT_MS = 20_000
# $...$ with TeX in it (a backslash, ^, _ or {) that no renderer turned into math.
RAW_DOLLAR_TEX = re.compile(r"\$[^$\n]{0,80}[\\^_{][^$\n]{0,80}\$")
KERNEL_TEXT = ("VBox(children", "HBox(children", "kernel is required", "Loading widget")

# Run in the page once it has loaded: waits for MathJax and the widget manager, then reads the page.
READ_PAGE = """
async (widgetTimeoutMs) => {
  const views = [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')];
  const rendered = (s) => { const p = s.previousElementSibling;
    return p && p.classList.contains('widget-subarea') && p.querySelector('.jupyter-widgets') !== null; };
  const deadline = Date.now() + widgetTimeoutMs;
  while (views.some(s => !rendered(s)) && Date.now() < deadline) await new Promise(r => setTimeout(r, 50));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    try { await MathJax.startup.promise; } catch (e) { }
  }
  for (const img of document.images) img.loading = 'eager';
  await Promise.all([...document.images].map(img => img.decode().catch(() => null)));
  const skip = (n) => n.parentElement && n.parentElement.closest('pre, code, script, style, textarea, mjx-container');
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const texts = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) if (!skip(n)) texts.push(n.textContent);
  return {
    images: [...document.images].map(i => ({src: i.getAttribute('src') || '', ok: i.complete && i.naturalWidth > 0})),
    math: [...document.querySelectorAll('.math')].map(m => ({ok: m.querySelector('mjx-container') !== null,
                                                             text: m.textContent.slice(0, 60)})),
    widgets: views.map(s => { const p = s.previousElementSibling; const ok = rendered(s);
      return {ok, controls: ok ? p.querySelectorAll('input, select, button, .noUi-target, .slider').length : 0,
              text: ok ? p.innerText.slice(0, 200) : ''}; }),
    text: texts.join(' '),
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    ids: [...document.querySelectorAll('[id], a[name]')].map(e => e.id || e.getAttribute('name')),
  };
}
"""


@dataclass
class BookReport:
    pages: int = 0
    images: int = 0
    math: int = 0
    widgets: int = 0
    controls: int = 0
    links: int = 0
    external_links: int = 0
    blocked: list[str] = field(default_factory=list)  # "page: url" of each request stopped on its way out
    problems: list[str] = field(default_factory=list)

    def counts(self) -> str:
        return (f"{self.pages} pages, {self.images} images, {self.math} math expressions, {self.widgets} widgets "
                f"({self.controls} controls), {self.links} internal links ({self.external_links} external, not "
                f"followed), {len(self.blocked)} requests blocked")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (http.server's name)
        pass


@contextmanager
def serve(folder: Path):
    """``folder`` over HTTP on 127.0.0.1 and a free port, in a thread; yields the base URL (ends with /)."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def pages_of(folder: Path) -> list[str]:
    """Every HTML page of the site, as paths relative to ``folder``, the landing page first."""
    pages = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.html")
                   if p.relative_to(folder).parts[0] not in NOT_PAGES)
    return sorted(pages, key=lambda p: p != "index.html")


def check_book(folder: Path, browser, viewport: dict | None = None, at_once: int = 4) -> BookReport:
    """Open every page of the site in ``folder`` in ``browser`` (a Playwright Browser); see the module's doc.
    ``at_once`` pages load side by side (each tab is its own renderer process), then are read one by one."""
    folder = Path(folder).resolve()
    report = BookReport()
    ids: dict[str, set[str]] = {}
    links: list[tuple[str, str]] = []  # (page, absolute href)
    with serve(folder) as base:
        ctx = browser.new_context(viewport=viewport or {"width": 1400, "height": 1000}, service_workers="block")
        ctx.set_default_timeout(30_000)
        names: dict = {}  # Playwright page -> its path in the site

        def route(r):
            url = r.request.url
            if url.startswith(base):
                r.continue_()
                return
            try:
                page = names.get(r.request.frame.page, "?")
            except Exception:  # a request of no frame (a worker): the page is not known
                page = "?"
            report.blocked.append(f"{page}: {url}")
            r.abort("blockedbyclient")

        ctx.route("**/*", route)
        try:
            rels = pages_of(folder)
            for i in range(0, len(rels), at_once):
                opened = [_open_page(ctx, base, rel, names) for rel in rels[i:i + at_once]]
                for rel, page, errors in opened:
                    _read_page(page, base, rel, errors, report, ids, links)
        finally:
            ctx.close()
    for page, href in links:
        _check_link(folder, base, page, href, ids, report)
    report.pages = len(ids)
    return report


def _open_page(ctx, base: str, rel: str, names: dict):
    """A new tab on its way to ``rel``, with its console errors, uncaught errors and missing files collected."""
    page = ctx.new_page()
    names[page] = rel
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
    page.on("response", lambda r: errors.append(f"{r.status} for {r.url[len(base):]}")
            if r.url.startswith(base) and r.status >= 400 else None)
    page.goto(base + rel, wait_until="commit")
    return rel, page, errors


def _read_page(page, base: str, rel: str, errors: list, report: BookReport, ids: dict, links: list) -> None:
    try:
        page.wait_for_load_state("load")
        seen = page.evaluate(READ_PAGE, WIDGET_TIMEOUT_MS)
        page.wait_for_timeout(100)  # a late console error (a font, a worker) still counts
    finally:
        page.close()
    say = lambda what: report.problems.append(f"{rel}: {what}")  # noqa: E731
    for e in dict.fromkeys(errors):
        say(f"console error: {e[:300]}")
    report.images += len(seen["images"])
    for img in seen["images"]:
        if not img["ok"]:
            say(f"image did not load: {img['src'][:120]}")
    report.math += len(seen["math"])
    for m in seen["math"]:
        if not m["ok"]:
            say(f"math not rendered: {m['text']!r}")
    for delimiter in ("\\(", "\\[", "$$"):
        if delimiter in seen["text"]:
            at = seen["text"].index(delimiter)
            say(f"raw TeX {delimiter!r} left in the text: {seen['text'][max(0, at - 40):at + 60]!r}")
    for dollars in RAW_DOLLAR_TEX.findall(seen["text"])[:3]:
        say(f"raw TeX left in the text: {dollars!r}")
    report.widgets += len(seen["widgets"])
    for i, w in enumerate(seen["widgets"], 1):
        report.controls += w["controls"]
        if not w["ok"]:
            say(f"widget {i} of {len(seen['widgets'])} did not render (no .jupyter-widgets in its view)")
        elif w["controls"] == 0:
            say(f"widget {i} of {len(seen['widgets'])} rendered without any control: {w['text'][:100]!r}")
    for text in KERNEL_TEXT:
        if text in seen["text"]:
            say(f"shows {text!r}: a widget drawn as text, not as its controls")
    ids[rel] = set(seen["ids"])
    links.extend((rel, href) for href in seen["links"])


def _check_link(folder: Path, base: str, page: str, href: str, ids: dict, report: BookReport) -> None:
    url = urllib.parse.urlsplit(href)
    if url.scheme not in ("http", "https"):
        return  # mailto:, javascript:, data:
    if not href.startswith(base):
        report.external_links += 1
        return
    report.links += 1
    target = urllib.parse.unquote(url.path[len(urllib.parse.urlsplit(base).path):]) or "index.html"
    if target.endswith("/"):
        target += "index.html"
    path = folder / target
    if not path.is_file():
        report.problems.append(f"{page}: link to a missing file: {href[len(base):]}")
    elif url.fragment and target.endswith(".html"):
        fragment = urllib.parse.unquote(url.fragment)
        if target not in ids:
            report.problems.append(f"{page}: link into {target}, which is not a page of the site: {href[len(base):]}")
        elif fragment not in ids[target]:
            report.problems.append(f"{page}: link to a missing anchor #{fragment} in {target}")
