"""The static book (`make book` -> build/book/) read in headless Chromium as a reader would: nothing leaves the
site, and every image, math expression, widget and internal link a page has is there (book_check.py).

`make book-tests` runs it after building the book, in a phase of `make test` of its own (no JupyterLab, no kernel);
`make browser-tests` leaves it out.
"""

from __future__ import annotations

import pytest
from book_check import check_book
from series import ROOT

BOOK = ROOT / "build" / "book"


def test_every_page_of_the_book_renders_from_the_site_alone(browser):
    if not (BOOK / "index.html").is_file():
        pytest.fail(f"no book at {BOOK}: run `make book` first (`make test` runs it before the browser tests)")
    report = check_book(BOOK, browser)
    print(f"\nthe book: {report.counts()}")
    assert not report.blocked, ("pages asked for files outside the site (blocked):\n  "
                                + "\n  ".join(report.blocked[:20]))
    assert not report.problems, "the book as a reader sees it:\n  " + "\n  ".join(report.problems[:40])
    assert report.pages >= 9 and report.widgets >= 1 and report.math >= 1 and report.images >= 1, report.counts()


PLANTED = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>planted</title>{head}</head>
<body><h1 id="top">A planted page</h1><p><a href="#top">up</a></p>{body}</body></html>"""


def _plant(folder, head: str = "", body: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.html").write_text(PLANTED.format(head=head, body=body))
    (folder / "dot.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4">'
                                    '<circle cx="2" cy="2" r="2"/></svg>')


def test_the_check_fails_on_a_broken_image_an_external_script_and_a_dead_link(browser, tmp_path):
    good = tmp_path / "good"
    _plant(good, body='<img src="dot.svg" alt="a dot">')
    report = check_book(good, browser)
    assert not report.problems and not report.blocked, report.problems + report.blocked
    assert (report.pages, report.images, report.links) == (1, 1, 1), report.counts()

    broken = tmp_path / "broken-image"
    _plant(broken, body='<img src="dot.svg" alt="a dot"><img src="missing.svg" alt="gone">')
    problems = check_book(broken, browser).problems
    assert any(p.startswith("index.html: image did not load: missing.svg") for p in problems), problems

    external = tmp_path / "external-script"
    _plant(external, head='<script src="https://cdn.example.org/tracker.js"></script>')
    report = check_book(external, browser)
    assert report.blocked == ["index.html: https://cdn.example.org/tracker.js"], report.blocked

    dead = tmp_path / "dead-link"
    _plant(dead, body='<a href="nowhere.html">a page that is not there</a><a href="index.html#no-such">an anchor</a>')
    problems = check_book(dead, browser).problems
    assert "index.html: link to a missing file: nowhere.html" in problems, problems
    assert "index.html: link to a missing anchor #no-such in index.html" in problems, problems
