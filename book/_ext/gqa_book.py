"""What the book adds to Sphinx and MyST-NB, so a reader of the static site sees the notebooks as they would in
JupyterLab and knows what only the live series can do:

- ``sync_notebooks``: the pages are made from the repository's notebooks/ folder, copied into book/notebooks/
  (git-ignored) before Sphinx looks for sources. A copy, not a link: Sphinx resolves links, and a notebook's link
  to its neighbour (``02_multi_head_attention.ipynb``) must stay inside the book's source folder.
- ``add_source_line``: under each notebook's title, a line linking the notebook's file in the repository,
  the .ipynb itself from the site, and the command that runs it live.
- ``add_widget_notes``: after each stored widget view, a note saying that moving its controls needs the live
  series, with the command (the notebooks' cells are left as they are).
- ``link_notebook_names``: on the landing page, each notebook named in the README's table links to its page.
- ``copy_assets``: the pinned npm files (book/package-lock.json, installed by ``npm ci``) that the pages load,
  copied into the site's _static/: the widget renderer and its loader, MathJax and its font.
"""

from __future__ import annotations

import html
import shutil
from pathlib import Path

from docutils import nodes
from sphinx.errors import ExtensionError

BOOK = Path(__file__).resolve().parents[1]
ROOT = BOOK.parent
NODE_MODULES = BOOK / "node_modules"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
LIVE_COMMAND = "make lab"

# Each npm file or folder the pages load -> where it goes under _static/. Only what a page asks for: MathJax's
# other combined builds and the font's SVG and module copies stay out of the site.
ASSETS = {
    "requirejs/require.js": "widgets/require.js",
    "@jupyter-widgets/html-manager/dist/embed-amd.js": "widgets/embed-amd.js",
    "mathjax/tex-mml-chtml.js": "mathjax/tex-mml-chtml.js",
    "mathjax/input": "mathjax/input",
    "mathjax/output": "mathjax/output",
    "mathjax/a11y": "mathjax/a11y",
    "mathjax/ui": "mathjax/ui",
    "mathjax/sre": "mathjax/sre",
    "mathjax/adaptors": "mathjax/adaptors",
    "mathjax/LICENSE": "mathjax/LICENSE",
    "@mathjax/mathjax-newcm-font/chtml": "mathjax/fonts/mathjax-newcm-font/chtml",
    "@mathjax/mathjax-newcm-font/chtml.js": "mathjax/fonts/mathjax-newcm-font/chtml.js",
    "@mathjax/mathjax-newcm-font/package.json": "mathjax/fonts/mathjax-newcm-font/package.json",  # its licence
}
# The widget renderer's icon fonts sit beside embed-amd.js, which loads them from its own folder.
# Its CSS lists woff2 first, which every browser the book is for reads; the older formats stay out.
WIDGET_FONT_SUFFIXES = (".woff2",)


def sync_notebooks(app, config) -> None:
    """Copy notebooks/*.ipynb into the source folder's notebooks/, keeping each file's time, so that a second
    build finds unchanged notebooks unchanged and reads only the ones that changed."""
    src, dst = ROOT / "notebooks", Path(app.srcdir) / "notebooks"
    dst.mkdir(exist_ok=True)
    names = {p.name for p in src.glob("*.ipynb")}
    if not names:
        raise ExtensionError(f"no notebooks in {src}: the book is made from them")
    for old in dst.glob("*.ipynb"):
        if old.name not in names:
            old.unlink()
    for name in sorted(names):
        s, d = src / name, dst / name
        if not d.exists() or (d.stat().st_mtime_ns, d.stat().st_size) != (s.stat().st_mtime_ns, s.stat().st_size):
            shutil.copy2(s, d)


def _notebook_name(docname: str) -> str | None:
    return docname.split("/", 1)[1] + ".ipynb" if docname.startswith("notebooks/") else None


def add_source_line(app, doctree) -> None:
    name = _notebook_name(app.env.docname)
    section = next(iter(doctree.findall(nodes.section)), None)
    if name is None or section is None:
        return
    url = f"{app.config.gqa_repository_url}/blob/{app.config.gqa_repository_branch}/notebooks/{name}"
    line = (f'This page is <a class="reference external" href="{html.escape(url)}"><code>notebooks/{name}</code></a> '
            f'as committed, with its stored outputs; nothing runs here. '
            f'<a class="reference internal" href="../_sources/notebooks/{name}" download="{name}">Download the '
            f'notebook</a>, or run the series live: <code>{LIVE_COMMAND}</code>.')
    title = next(iter(section.findall(nodes.title)), None)
    section.insert(section.index(title) + 1 if title is not None else 0, _html_paragraph("gqa-source-line", line))


def _html_paragraph(css_class: str, html_text: str) -> nodes.container:
    """One paragraph of ready-made HTML in a box with ``css_class`` (book/_static/gqa_book.css styles it)."""
    box = nodes.container(classes=[css_class])
    box += nodes.raw("", f"<p>{html_text}</p>", format="html")
    return box


def add_widget_notes(app, doctree) -> None:
    name = _notebook_name(app.env.docname)
    for raw in list(doctree.findall(nodes.raw)):
        if WIDGET_VIEW not in raw.astext() or raw.get("format") != "html":
            continue
        note = (f"This widget is shown as the notebook stored it: its controls can be moved here, but nothing "
                f"is computed, so the figure and readout stay as they are. To explore it, run the series live: "
                f"<code>{LIVE_COMMAND}</code> in the repository, open <code>{name}</code>, then Run &gt; Run All "
                f"Cells.")
        raw.parent.insert(raw.parent.index(raw) + 1, _html_paragraph("gqa-widget-note", note))


def link_notebook_names(app, doctree, docname: str) -> None:
    """``01_kv_cache_motivation`` in inline code on the landing page -> that code, linking to the notebook's page."""
    if docname != app.config.root_doc:
        return
    docs = {d.split("/", 1)[1]: d for d in app.env.found_docs if d.startswith("notebooks/")}
    for literal in list(doctree.findall(nodes.literal)):
        doc = docs.get(literal.astext())
        if doc is None or isinstance(literal.parent, nodes.reference):
            continue
        link = nodes.reference("", "", internal=True, refuri=app.builder.get_relative_uri(docname, doc))
        literal.replace_self(link)
        link += literal


def check_assets(app) -> None:
    """Before reading any notebook: the npm files are there, or the build stops naming the command."""
    missing = [src for src in ASSETS if not (NODE_MODULES / src).exists()]
    if missing:
        raise ExtensionError(f"{len(missing)} npm files the pages load are missing from {NODE_MODULES} (first: "
                             f"{missing[0]}): run `npm ci --prefix book`, or `make book`, which runs it")


def copy_assets(app, exception) -> None:
    if exception is not None or app.builder.format != "html":
        return
    static = Path(app.outdir) / "_static"
    for src, dst in ASSETS.items():
        s, d = NODE_MODULES / src, static / dst
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_dir():
            shutil.copytree(s, d, dirs_exist_ok=True, copy_function=_copy_if_changed)
        else:
            _copy_if_changed(s, d)
    dist = NODE_MODULES / "@jupyter-widgets" / "html-manager" / "dist"
    for font in dist.iterdir():
        if font.suffix in WIDGET_FONT_SUFFIXES:
            _copy_if_changed(font, static / "widgets" / font.name)


def _copy_if_changed(src, dst) -> None:
    """copy2, skipped where ``dst`` already has ``src``'s size and time (a second build copies nothing)."""
    s, d = Path(src), Path(dst)
    if d.exists() and (d.stat().st_size, d.stat().st_mtime_ns) == (s.stat().st_size, s.stat().st_mtime_ns):
        return
    shutil.copy2(s, d)


def setup(app):
    app.add_config_value("gqa_repository_url", "", "html")
    app.add_config_value("gqa_repository_branch", "main", "html")
    app.connect("config-inited", sync_notebooks)
    app.connect("builder-inited", check_assets)
    app.connect("doctree-read", add_source_line)
    app.connect("doctree-read", add_widget_notes)
    app.connect("doctree-resolved", link_notebook_names)
    app.connect("build-finished", copy_assets)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
