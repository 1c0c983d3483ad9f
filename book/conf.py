"""Sphinx settings of the series' book: `make book` turns the committed notebooks, with their stored outputs and
stored widget state, into a static site in build/book/, without running them.

Everything a page loads comes from the site itself: the widget renderer (@jupyter-widgets/html-manager) with its
loader (requirejs) and the math renderer (MathJax) are npm packages pinned in book/package-lock.json, installed
by `npm ci` into book/node_modules and copied into the site by book/_ext/gqa_book.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

BOOK = Path(__file__).resolve().parent
sys.path.insert(0, str(BOOK / "_ext"))

# Where the repository is published: "owner/name" on GitHub. GitHub's workflows set GITHUB_REPOSITORY, so the book
# built by .github/workflows/pages.yml links to its own repository; elsewhere this placeholder stands in.
GITHUB_REPOSITORY = os.environ.get("GITHUB_REPOSITORY") or "your-account/gqa-series"
REPOSITORY_URL = f"https://github.com/{GITHUB_REPOSITORY}"
REPOSITORY_BRANCH = "main"
gqa_repository_url, gqa_repository_branch = REPOSITORY_URL, REPOSITORY_BRANCH  # read by _ext/gqa_book.py

project = "Grouped Query Attention, from the KV cache up"

extensions = ["myst_nb", "gqa_book"]
root_doc = "index"
exclude_patterns = ["node_modules", "**/.ipynb_checkpoints"]

# The notebooks are shown as committed: their stored outputs and widget state, never executed here.
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "substitution"]
myst_substitutions = {"repository": f"[{GITHUB_REPOSITORY}]({REPOSITORY_URL})"}  # index.md's {{ repository }}
myst_heading_anchors = 3

# The widget renderer and its loader, from the site (gqa_book copies them into _static/widgets/). The standard
# widgets are in the bundle; a module it lacked would be looked up on the site (and not found), not on a CDN.
nb_ipywidgets_js = {
    "gqa_widgets.js": {},  # where the renderer's fonts are, and MathJax 2's call the renderer makes (book/_static)
    "widgets/require.js": {},
    "widgets/embed-amd.js": {"data-jupyter-widgets-cdn": "_static/widgets/modules/"},
}

# MathJax 4 from the site (_static/mathjax/), and its font from beside it instead of its default CDN. Screen readers
# get each expression as hidden MathML (assistiveMml) rather than MathJax's semantic enrichment, which took about
# half of a page's typesetting time (notebook 02, measured in Chromium: 3.0-3.6 s against 5.5-7.1 s on a busy
# machine).
mathjax_path = "mathjax/tex-mml-chtml.js"
mathjax4_config = {
    "loader": {"paths": {"fonts": "[mathjax]/fonts"}},
    "options": {"menuOptions": {"settings": {"enrich": False, "assistiveMml": True}}},
}

html_theme = "sphinx_book_theme"
html_title = "Grouped Query Attention, from the KV cache up"
html_static_path = ["_static"]
html_css_files = ["gqa_book.css"]
html_copy_source = True  # MyST-NB puts each .ipynb itself under _sources/: the pages offer it as a download
html_show_sourcelink = False
html_use_index = False  # no general index page: the book has no index entries
html_context = {"default_mode": "light"}  # the widgets' controls are drawn for a light page
html_theme_options = {
    "repository_url": REPOSITORY_URL,
    "repository_branch": REPOSITORY_BRANCH,
    "path_to_docs": "book",
    "use_repository_button": True,
    "use_download_button": True,
    "use_source_button": False,  # each notebook page links its own file under notebooks/ (gqa_book)
    "show_navbar_depth": 1,
    "show_toc_level": 2,
    "home_page_in_toc": True,
    "navigation_with_keys": False,
    "navbar_persistent": [],  # one search box, the sidebar's, not a second one in a header bar above it
    "footer_content_items": [],  # no author or copyright line under every page
}
