"""Every number in a notebook's prose was printed by one of its cells, or is cited with its source.

The series promises that no figure is typed from memory. This test reads every markdown cell of
every notebook in ``notebooks/`` and finds each number in it. A number passes when

1. it appears in that notebook's **stored printed outputs**: the text of ``stream`` outputs and the
   ``text/plain`` of results and displays, but not the ``text/plain`` stand-in of a figure
   (``<Figure size 850x360 ...>``) or of a widget (its repr, which a reader never sees as a
   statement), nor any HTML; or
2. it is listed in ``data/prose_citations/<notebook file stem>.json``, a JSON list of objects
   ``{"number": "47.2", "source": "Ainslie et al. 2023, GQA, Table 1", "what": "MHA-XXL average score"}``
   (papers, datasheets, model cards: figures the series cites rather than computes).

How numbers are compared. Thousands separators are ignored (``1,024`` is ``1024``), and so is a sign
(``-0.6``, ``−0.6`` and ``+0.6`` are ``0.6``); a unit glued to the number is not part of it
(``3.26×``, ``16x``, ``66%``, ``110.6K`` are ``3.26``, ``16``, ``66``, ``110.6``). A printed figure
with trailing zeros after the decimal point also stands for the figure without them (``1.00 GiB``
printed allows "1 GiB" in prose, ``0.40`` allows "0.4"); the converse is not true, and nothing is
rounded: prose that says "14" needs a printed ``14``, not ``14.2``.

What is not a number to check (removed from the text before numbers are looked for):

- code: fenced blocks and ``code spans``; LaTeX: ``$$...$$`` and ``$...$``; HTML tags; the target
  of a markdown link ``](...)``;
- heading numbers (``## 3. The cost``), ordered-list markers at the start of a line (``2. Why ...``),
  a power written with a caret, which defines a unit (``GB = 10^9 bytes``, ``2^30``); a number format
  (``16-bit``, ``4-bit``); and the number
  after the words section(s) or §, step(s), question(s), table, figure, chapter, eq. or equation, and
  notebook(s), including a list of them joined by ``,``, ``and``, ``or``, ``to`` or a dash
  ("sections 1 and 3", "notebooks 03–05");
- the ``NN ·`` that opens a notebook's title or a link to a notebook ("[04 · Grouped-query ...]");
- years: four digits from 1950 to 2039 with no thousands separator;
- model names: every model name in ``data/models.json`` and its family name (the name less its
  size: "Llama-3 8B" and "Llama-3", "Gemma 3 1B" and "Gemma 3"); a digit glued to a letter before it,
  directly or by a hyphen, underscore or colon, is part of a name or an identifier (``SmolLM2``,
  ``GPT-2``, ``DeepSeek-V2``, ``bf16``, ``Q4_1``, ``TPUv2``, ``T5-XXL``, ``arXiv:2405.04434``); a number
  directly followed by ``B`` or ``M`` is a model's size in its name (``70B``, ``135M``).

Small counting numbers get no exception of their own: "3 KV heads" passes because a cell printed the
3. A test at the end plants a typed-in number in a small notebook and checks that it is caught.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CITATIONS = ROOT / "data" / "prose_citations"
MODELS = ROOT / "data" / "models.json"

# A number: digits with optional thousands separators and an optional decimal part.
NUMBER = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?")
MARKER_WORDS = r"(?:sections?|§|steps?|questions?|tables?|figures?|chapters?|eqs?\.|equations?|notebooks?)"
JOIN = r"(?:\s*(?:,|and|or|to|–|—|-)\s*)"
MARKER = re.compile(rf"(?<!\w){MARKER_WORDS}\s+\d+(?:\.\d+)?(?:{JOIN}\d+(?:\.\d+)?)*", re.IGNORECASE)
STRIP = [
    re.compile(r"```.*?```", re.DOTALL),  # fenced code
    re.compile(r"`[^`]*`"),  # code spans
    re.compile(r"\$\$.*?\$\$", re.DOTALL),  # display LaTeX
    re.compile(r"\$[^$]*\$"),  # inline LaTeX
    re.compile(r"<[^>]*>"),  # HTML tags
    re.compile(r"\]\([^)]*\)"),  # link targets
    re.compile(r"^\s*#+\s*\d+(?:\.\d+)*\.?(?=\s)", re.MULTILINE),  # heading numbers
    re.compile(r"^\s*\d+\.(?=\s)", re.MULTILINE),  # ordered-list markers
    re.compile(r"\b\d\d\s+·"),  # "03 · Multi-query attention": a notebook's number in a title or link
    re.compile(r"\b\d+\^\d+"),  # a power that defines a unit: GB = 10^9 bytes, GiB = 2^30 bytes
    re.compile(r"\b\d+-bit\b"),  # a number format: 16-bit, 4-bit
    MARKER,
]
YEAR = re.compile(r"(?<![\w.,])(?:19[5-9]\d|20[0-3]\d)(?!\w|[.,]\d)")


def model_names() -> list[str]:
    """Names from data/models.json and their family names, longest first (so "Llama-3 8B" goes before "Llama-3")."""
    names = set()
    for m in json.loads(MODELS.read_text())["models"]:
        names.add(m["name"])
        family = re.sub(r"[\s-]+\S*\d+(?:\.\d+)?[BM]$", "", m["name"])  # "Gemma 3 1B" -> "Gemma 3"
        names.add(family)
    return sorted(names, key=len, reverse=True)


def normalise(integer: str, fraction: str | None) -> str:
    return integer.replace(",", "") + (fraction or "")


def prose_numbers(markdown: str, names: list[str]) -> list[tuple[str, str]]:
    """The numbers to check in one markdown cell: (normalised number, the text around it)."""
    text = markdown
    for name in names:
        text = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w])", " ", text)
    for pattern in STRIP:
        text = pattern.sub(" ", text)
    text = YEAR.sub(" ", text)
    found = []
    for match in NUMBER.finditer(text):
        before, after = text[:match.start()], text[match.end():]
        if re.search(r"[A-Za-z][-_:]?\Z", before):  # glued to a name or identifier: SmolLM2, GPT-2, Q4_1
            continue
        if re.match(r"[BM](?![A-Za-z])", after):  # a model size: 70B, 135M
            continue
        context = text[max(0, match.start() - 30):match.end() + 30].replace("\n", " ")
        found.append((normalise(match.group(1), match.group(2)), " ".join(context.split())))
    return found


def printed_numbers(nb) -> set[str]:
    """Every number in the notebook's printed outputs, with and without trailing decimal zeros."""
    texts = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                texts.append(out.text)
            elif out.output_type in ("execute_result", "display_data"):
                data = out.get("data", {})
                if any(k.startswith("image/") or "widget" in k for k in data):
                    continue  # a figure's or a widget's repr is not a printed statement
                texts.append(data.get("text/plain", ""))
    found = set()
    for match in re.finditer(r"(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?", "\n".join(texts)):
        number = normalise(match.group(1), match.group(2))
        found.add(number)
        if "." in number:
            found.add(number.rstrip("0").rstrip("."))
    return found


def load_citations(path: Path) -> dict[str, dict]:
    """Read a citations file; fail with the file and the entry when the format is wrong."""
    if not path.exists():
        return {}
    entries = json.loads(path.read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{path.name}: must hold a JSON list of {{number, source, what}} objects")
    cited = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"number", "source", "what"}:
            raise ValueError(f"{path.name}[{i}]={entry!r} must have exactly the keys number, source, what")
        if not all(isinstance(v, str) and v.strip() for v in entry.values()):
            raise ValueError(f"{path.name}[{i}]: number, source and what must be non-empty strings")
        if not re.fullmatch(r"\d+(?:\.\d+)?", entry["number"]):
            raise ValueError(f"{path.name}[{i}]: number={entry['number']!r} must be written like 47.2 "
                             f"(digits, optional decimals, no sign, separators or unit)")
        cited[entry["number"]] = entry
    return cited


def offending_numbers(nb, cited: dict[str, dict], names: list[str]) -> list[str]:
    """One line per number in the prose that is neither printed nor cited."""
    printed = printed_numbers(nb)
    bad = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        for number, context in prose_numbers(cell.source, names):
            if number not in printed and number not in cited:
                bad.append(f"cell {index}: {number}  (…{context}…)")
    return bad


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_prose_number_is_printed_or_cited(path):
    nb = nbformat.read(path, as_version=4)
    cited = load_citations(CITATIONS / f"{path.stem}.json")
    bad = offending_numbers(nb, cited, model_names())
    assert not bad, (f"{path.name}: {len(bad)} number(s) in the prose are neither printed by a cell nor listed "
                     f"in data/prose_citations/{path.stem}.json:\n" + "\n".join(bad))


@pytest.mark.parametrize("path", sorted(CITATIONS.glob("*.json")), ids=lambda p: p.stem)
def test_each_citation_is_used_by_its_notebook(path):
    """A citations file names an existing notebook, and every figure in it is quoted in that notebook's prose."""
    notebook = ROOT / "notebooks" / f"{path.stem}.ipynb"
    assert notebook.exists(), f"{path.name} names no notebook: {notebook.name} does not exist"
    nb = nbformat.read(notebook, as_version=4)
    names = model_names()
    in_prose = {n for c in nb.cells if c.cell_type == "markdown" for n, _ in prose_numbers(c.source, names)}
    unused = sorted(set(load_citations(path)) - in_prose)
    assert not unused, f"{path.name}: cited but not in the prose of {notebook.name}: {', '.join(unused)}"


def _tiny_notebook(tmp_path: Path, prose: str) -> Path:
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("print(f'cache {1024 * 36:,} bytes, ratio {3.0:.2f}x')")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="cache 36,864 bytes, ratio 3.00x\n")]
    figure = nbformat.v4.new_output("display_data", data={"image/png": "", "text/plain": "<Figure size 850x360>"})
    code.outputs.append(figure)
    widget = nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "x", "version_major": 2, "version_minor": 0},
        "text/plain": "IntSlider(value=77)"})
    code.outputs.append(widget)
    nb.cells = [nbformat.v4.new_markdown_cell("# 09 · A test\n\n## 2. Section"), code,
                nbformat.v4.new_markdown_cell(prose)]
    path = tmp_path / "09_tiny.ipynb"
    nbformat.write(nb, path)
    return path


def test_a_typed_in_number_is_caught(tmp_path):
    names = model_names()
    honest = ("The cache holds 36,864 bytes, 3× more (36864 = `1024 * 36`; see notebook 02, section 4, "
              "Ainslie et al. 2023, Llama-3 8B, SmolLM2-135M in bf16, $2 \\times 64$).")
    nb = nbformat.read(_tiny_notebook(tmp_path, honest), as_version=4)
    assert offending_numbers(nb, {}, names) == []
    for typed in ("The cache holds 36,000 bytes.", "It is 3.5× larger.", "The figure is 850 wide.",
                  "The slider starts at 77.", "Reduced by 16x.", "About 2.9 times more."):
        nb = nbformat.read(_tiny_notebook(tmp_path, typed), as_version=4)
        bad = offending_numbers(nb, {}, names)
        assert len(bad) == 1 and bad[0].startswith("cell 2: "), (typed, bad)


def test_a_cited_number_passes_and_a_bad_citation_fails(tmp_path):
    names = model_names()
    nb = nbformat.read(_tiny_notebook(tmp_path, "MHA-XXL scores 47.2 (Ainslie et al. 2023)."), as_version=4)
    assert [b.split("  ")[0] for b in offending_numbers(nb, {}, names)] == ["cell 2: 47.2"]
    citation = tmp_path / "09_tiny.json"
    citation.write_text(json.dumps([{"number": "47.2", "source": "Ainslie et al. 2023, Table 1", "what": "MHA-XXL"}]))
    assert offending_numbers(nb, load_citations(citation), names) == []
    citation.write_text(json.dumps([{"number": "47.2%", "source": "x", "what": "y"}]))
    with pytest.raises(ValueError, match=r"number='47.2%'"):
        load_citations(citation)


def test_trailing_zeros_only_one_way(tmp_path):
    names = model_names()
    nb = nbformat.read(_tiny_notebook(tmp_path, "A ratio of 3 (printed as 3.00)."), as_version=4)
    assert offending_numbers(nb, {}, names) == []
    nb = nbformat.read(_tiny_notebook(tmp_path, "A ratio of 3.000."), as_version=4)
    assert len(offending_numbers(nb, {}, names)) == 1


def test_a_number_that_starts_a_wrapped_line_is_checked():
    """A number at the start of a line whose previous line ends in a word is prose, not part of a name: the
    check for a name glued to the number looks at the characters just before it, across the line break."""
    assert [n for n, _ in prose_numbers("the base of LLaMA is\n500,000 and SmolLM2's is\n100,000.", [])] == \
        ["500000", "100000"]
    assert prose_numbers("SmolLM2 and Q4_1 are names", []) == []
