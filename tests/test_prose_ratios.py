"""Readings held to their numbers: a word of size in a notebook's prose agrees with the printed numbers it reads.

``test_prose_numbers`` holds every number in the prose to the outputs. A reading can still be wrong with every
number right: "a hundredth" said of +0.0064 against +0.1223 (a twentieth). This test learns the words of size
and checks each one in its **sentence**. A markdown cell is cut after ``.``, ``!`` or ``?`` and a space (not
after "et al.", "e.g." and the like), and at blank lines and list items; ``;`` and ``:`` do not cut, so a claim
and the numbers after its colon are one sentence. Code, LaTeX, HTML, link targets, model names and the other
non-numbers of ``test_prose_numbers`` are taken out before numbers are looked for.

**Words that carry a ratio.** Fractions: "half", "a third", "a quarter" (or "a fourth"), "a fifth", "a tenth",
"a twentieth", "a hundredth", "two thirds", "three quarters"; not "half a ..." (a unit's half: "half a byte") nor
a part named by its place ("the first half", "the second half", "the masked half"). Multiples: "twice",
"two/three/.../ten times" (as, more, less, larger, ...), and a numeral multiple, "N-fold", "Nx" or "N×". A
sentence that uses one and holds at least one number reads a figure, so it must hold the numbers it reads: it
passes when

1. two of its numbers, a and b, give a / b within the word's tolerance of the word's ratio (for a multiple, the
   larger over the smaller; for a fraction, the smaller over the larger), or
2. one of its numbers IS the ratio, as printed beside the word: r or 1 / r ("half of what all-global layers would
   keep (2.00×)"), or 100 r followed by % ("a fifth (19.7%)").

A numeral multiple ("202-fold", "4.00×") is a number a cell computed when a cell printed it (as a multiple, or
in a table of ratios): it passes then, and ``test_prose_numbers`` holds it to that output. One no cell printed (a
multiple typed in, or cited) must be the ratio of two numbers in its sentence. Without any number in its sentence
a fraction or multiple is a figure of speech ("half a byte", "twice the last-level cache") and is not checked,
except the fractions that have no everyday use, "a fifth", "a tenth", "a twentieth", "a hundredth", "two
thirds", "three quarters": those always read a figure, so their sentence must carry its numbers.

Tolerance, per word, relative to the word's ratio: a plain word is a rounding, +-10% ("half" is 0.45 to 0.55,
"a third" 0.30 to 0.37, "a hundredth" 0.009 to 0.011: a twentieth is five times outside it); "exactly" +-0.5% (the
rounding of three printed digits); "about", "nearly", "almost", "roughly", "around", "some" and "close to" +-20%;
"more than", "over", "above", "at least" only bound it from below (ratio >= 0.99 r), "less than", "under",
"below", "at most" only from above (ratio <= 1.01 r). A numeral N is a rounding of its own printed digits: N
printed with d decimals agrees with ratios within half a unit of the last digit (57 with 56.9; 4.00 with 3.995 to
4.005), or 1% if that is wider.

**Words that claim a size without a ratio**: "largest", "smallest", "highest", "lowest", "fades" (fading,
faded), "most of", "in most", and "only" before a word of amount ("only part of", "only in part", "only a few",
"only a fraction", "only slightly", "only a little", "only barely"; not "the only part"). These are checked in
**readings** only: the text of a markdown cell that comes right after a code cell with an output (printed text or
a figure), up to its first heading, which is where a notebook says what its outputs show. There such a sentence
must carry at least one number (the number that makes it largest, or the values that fade), unless it is a
question, it announces the next cell (it ends with a colon), or the word stands in an instruction (its clause
starts with a verb that tells the reader what to do: "pick", "move", "find", "take", "keep", ...).
Elsewhere (an introduction, a widget's description, the exercises) these words describe what is to come or define
a term, and are left alone: "the largest difference between any two query heads' K" is a definition, "the most
likely byte" a superlative of an adjective, and "only the newest token" a restriction, not a size.

A sentence this test flags in a notebook that is being rewritten may stand in ``PENDING`` (notebook, the
sentence's first words) until it is fixed; an entry that no longer matches a flagged sentence fails the test, so
the list only shrinks. Planted sentences at the end show each rule catching what it should.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path

import nbformat
import pytest
from test_prose_numbers import MARKER, NUMBER, STRIP, YEAR, model_names, printed_numbers

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# Sentences flagged in notebooks that other work is rewriting: (notebook file stem, the sentence's first words).
# To be emptied: each entry is a sentence whose reading does not yet carry its numbers.
PENDING: set[tuple[str, str]] = set()

FRACTIONS = {"half": 1 / 2, "a third": 1 / 3, "one third": 1 / 3, "a quarter": 1 / 4, "one quarter": 1 / 4,
             "a fourth": 1 / 4, "a fifth": 1 / 5, "a tenth": 1 / 10, "one tenth": 1 / 10, "a twentieth": 1 / 20,
             "a hundredth": 1 / 100, "two thirds": 2 / 3, "three quarters": 3 / 4}
ALWAYS_A_FIGURE = {"a fifth", "a tenth", "one tenth", "a twentieth", "a hundredth", "two thirds", "three quarters"}
WORD_NUMBERS = {"two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}
QUALIFIERS = {  # word before the ratio word -> (lowest, highest) ratio / word's ratio; None: no bound that side
    "exactly": (0.995, 1.005), "about": (0.8, 1.2), "nearly": (0.8, 1.2), "almost": (0.8, 1.2),
    "roughly": (0.8, 1.2), "around": (0.8, 1.2), "some": (0.8, 1.2), "close to": (0.8, 1.2),
    "more than": (0.99, None), "over": (0.99, None), "above": (0.99, None), "at least": (0.99, None),
    "less than": (None, 1.01), "under": (None, 1.01), "below": (None, 1.01), "at most": (None, 1.01)}
PLAIN = (0.9, 1.1)

_QUALIFIER = r"(?:(?P<qual>" + "|".join(sorted(QUALIFIERS, key=len, reverse=True)) + r")\s+)?"
_COMPARE = r"(?:as|more|less|fewer|larger|smaller|faster|slower|higher|lower|bigger|longer|shorter|the|its|what)"
RATIO_WORDS = re.compile(
    _QUALIFIER + r"(?<![\w-])(?:"
    r"(?<!first\s)(?<!second\s)(?<!masked\s)(?<!other\s)(?<!easy\s)(?<!upper\s)(?<!lower\s)"
    r"(?P<frac>" + "|".join(sorted(FRACTIONS, key=len, reverse=True)) + r")(?![\w-])(?!\s+an?\b)"
    r"|(?P<twice>twice)\b"
    r"|(?P<wordtimes>" + "|".join(WORD_NUMBERS) + r")\s+times\s+(?=" + _COMPARE + r"\b)"
    r"|(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?P<mark>-fold\b|[x×](?![\w×])|\s+times\s+(?="
    + _COMPARE + r"\b))"
    r")", re.IGNORECASE)
SIZE_CLAIMS = re.compile(
    r"\b(?:largest|smallest|highest|lowest|fades|fading|faded|fade|most\s+of|in\s+most"
    r"|(?<!the\s)only\s+(?:part|partly|in\s+part|a\s+few|a\s+fraction|slightly|a\s+little|barely))\b",
    re.IGNORECASE)
# A clause that tells the reader what to do (it starts with one of these verbs) describes no output.
IMPERATIVE = re.compile(r"^\W*(?:pick|move|set|find|take|keep|try|compare|switch|watch|type|look|tick|give|use|"
                        r"choose|drag|read|run|start|see|put)\b", re.IGNORECASE)
HEADING = re.compile(r"^\s*#+\s", re.MULTILINE)
ABBREVIATIONS = re.compile(r"\b(?:et al|e\.g|i\.e|cf|vs|Fig|eq|Eq|approx)\.")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)|\n\s*\n|\n\s*[-*]\s+|\n\s*\d+\.\s+")


@dataclass
class Flag:
    notebook: str
    cell: int
    sentence: str
    why: str

    def __str__(self) -> str:
        return f"{self.notebook}, cell {self.cell}: {self.why}\n    «{self.sentence}»"


def _plain_text(markdown: str, names: list[str]) -> str:
    """The markdown with what is not prose taken out, as test_prose_numbers does. A model name or a code span
    becomes the word "Name" or "Code" (no digits), so that a sentence that starts with one still starts with a
    capital, and is cut there."""
    text = markdown
    for name in names:
        text = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w])", "Name", text)
    for pattern in STRIP:
        if pattern is not MARKER:
            text = pattern.sub("Code" if pattern.pattern in ("`[^`]*`", "```.*?```") else " ", text)
    return text


def sentences(markdown: str, names: list[str]) -> list[str]:
    text = ABBREVIATIONS.sub(lambda m: m.group(0).replace(".", "\0"), _plain_text(markdown, names))
    out = []
    for part in SENTENCE_END.split(text):
        part = re.sub(r"^(?:[-*]|\d+\.)\s+", "", " ".join(part.replace("\0", ".").split()))  # a list marker
        if part:
            out.append(part)
    return out


def numbers_in(sentence: str) -> list[tuple[float, int, int, bool]]:
    """The sentence's numbers: (value, start, end, followed by %), leaving out what test_prose_numbers leaves out
    (years, section and notebook numbers, digits glued to a name or an identifier)."""
    text = MARKER.sub(lambda m: " " * len(m.group(0)), sentence)
    text = YEAR.sub(lambda m: " " * len(m.group(0)), text)
    found = []
    for m in NUMBER.finditer(text):
        before, after = text[:m.start()], text[m.end():]
        if re.search(r"[A-Za-z][-_:]?$", before) or re.match(r"[BM](?![A-Za-z])", after):
            continue
        value = float(m.group(0).replace(",", ""))
        found.append((value, m.start(), m.end(), after.lstrip().startswith("%")))
    return found


def _within(ratio: float, target: float, bounds: tuple[float | None, float | None]) -> bool:
    low, high = bounds
    return (low is None or ratio >= low * target) and (high is None or ratio <= high * target)


def _numeral_bounds(text: str) -> tuple[float, float]:
    """A numeral is a rounding of its printed digits: half a unit of its last digit, or 1% if that is wider."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    value = float(text.replace(",", ""))
    half_unit = 0.5 * 10 ** -decimals
    rel = max(half_unit / value, 0.01) if value else 0.01
    return (1 - rel, 1 + rel)


def printed_multiples(nb) -> set[float]:
    """Every number a cell printed as a multiple: 202x, 4.00×, 3-fold, 12.1x faster."""
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.output_type == "stream":
                texts.append(out.text)
            elif out.output_type in ("execute_result", "display_data"):
                texts.append(out.get("data", {}).get("text/plain", ""))
    found = re.finditer(r"(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)\s?(?:x|×|-fold)(?!\w)", "\n".join(texts))
    return {float(m.group(1).replace(",", "")) for m in found}


def check_ratio_word(match: re.Match, sentence: str, multiples: set[float], printed: set[str]) -> str | None:
    """None when the ratio word at ``match`` agrees with the sentence's numbers; otherwise why not."""
    word = match.group(0).strip()
    qual = (match.group("qual") or "").lower()
    if match.group("num"):
        target, bounds = float(match.group("num").replace(",", "")), _numeral_bounds(match.group("num"))
        if target in multiples or target <= 1:
            return None  # a ratio the code printed as such; "1x", "0.5x" are factors, not multiples
        if match.group("num").replace(",", "") in printed:
            return None  # a ratio a cell computed and printed (in a table, say): test_prose_numbers' business
    else:
        if match.group("frac"):
            target = FRACTIONS[match.group("frac").lower()]
        elif match.group("twice"):
            target = 2.0
        else:
            target = float(WORD_NUMBERS[match.group("wordtimes").lower()])
        bounds = QUALIFIERS.get(qual, PLAIN) if qual else PLAIN
    own = (match.start("num"), match.end("num")) if match.group("num") else (-1, -1)
    values = [(v, pct) for v, s, e, pct in numbers_in(sentence) if (s, e) != own and v > 0]
    if not values:
        if match.group("frac") and match.group("frac").lower() in ALWAYS_A_FIGURE:
            return f"'{word}' reads a figure, but its sentence carries no number to read it from"
        if match.group("num"):
            return (f"'{word}' is not printed as a multiple by any cell, and its sentence carries no two numbers "
                    "whose ratio it is")
        return None  # a figure of speech: "half a byte", "twice the last-level cache"
    for v, pct in values:  # the ratio itself, printed beside the word
        for candidate in ((v / 100,) if pct else (v, 1 / v)):
            if _within(candidate, target, bounds):
                return None
    for (a, _), (b, _) in permutations(values, 2):
        if _within(a / b, target, bounds):
            return None
    shown = ", ".join(f"{v:g}{'%' if p else ''}" for v, p in values)
    return (f"'{word}' means a ratio of {target:.4g}, but no two of the sentence's numbers ({shown}) give it "
            f"within {bounds[0] or '-'}..{bounds[1] or '-'} of it, and none of them is it")


def reading(nb, index: int) -> str:
    """The reading in markdown cell ``index``: its text up to its first heading, if the cell comes right after a
    code cell with an output (printed text or a figure); "" otherwise. What follows a heading opens the next
    section, and a cell that starts with a heading reads nothing."""
    cell = nb.cells[index]
    if index == 0 or nb.cells[index - 1].cell_type != "code" or not nb.cells[index - 1].get("outputs"):
        return ""
    heading = HEADING.search(cell.source)
    return cell.source[:heading.start()] if heading else cell.source


def _instruction_or_announcement(sentence: str, at: int) -> bool:
    """Whether the size word at ``at`` stands in a question, a sentence that announces the next cell (it ends
    with a colon), or a clause that tells the reader what to do."""
    if sentence.endswith(("?", ":")):
        return True
    clause = re.split(r"[:;,]", sentence[:at])[-1]
    return bool(IMPERATIVE.match(clause)) or bool(IMPERATIVE.match(sentence))


def flags(nb, notebook: str, names: list[str]) -> list[Flag]:
    multiples, printed = printed_multiples(nb), printed_numbers(nb)
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "markdown":
            continue
        for sentence in sentences(cell.source, names):
            for match in RATIO_WORDS.finditer(sentence):
                why = check_ratio_word(match, sentence, multiples, printed)
                if why:
                    found.append(Flag(notebook, index, sentence, why))
        for sentence in sentences(reading(nb, index), names):
            claims = [m for m in SIZE_CLAIMS.finditer(sentence)
                      if not _instruction_or_announcement(sentence, m.start())]
            if claims and not numbers_in(sentence):
                found.append(Flag(notebook, index, sentence,
                                  f"'{claims[0].group(0)}' reads the output above, but its sentence carries none of "
                                  "the printed numbers that make it so"))
    return found


def _pending(flag: Flag) -> tuple[str, str] | None:
    return next((p for p in PENDING if p[0] == flag.notebook and flag.sentence.startswith(p[1])), None)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_word_of_size_agrees_with_the_numbers_it_reads(path):
    found = flags(nbformat.read(path, as_version=4), path.stem, model_names())
    new = [f for f in found if _pending(f) is None]
    assert not new, f"{len(new)} reading(s) do not hold to their numbers:\n" + "\n".join(map(str, new))
    stale = {p for p in PENDING if p[0] == path.stem} - {_pending(f) for f in found}
    assert not stale, f"PENDING entries that match no flagged sentence any more (remove them): {sorted(stale)}"


# ---------------------------------------------------------------------------------------- planted sentences
def _notebook(prose: str, printed: str = "loss change +0.0064 and +0.1223; ratios 2.00x and 4.00x\n"
              ) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    code = nbformat.v4.new_code_cell("print(...)")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text=printed)]
    nb.cells = [nbformat.v4.new_markdown_cell("# 09 · A test"), code, nbformat.v4.new_markdown_cell(prose)]
    return nb


def _flags(prose: str, **kw) -> list[Flag]:
    return flags(_notebook(prose, **kw), "09_tiny", model_names())


def test_a_hundredth_is_caught_against_a_twentieth():
    bad = _flags("The window costs +0.0064, a hundredth of the +0.1223 that int4 costs.")
    assert len(bad) == 1 and bad[0].cell == 2 and "'a hundredth' means a ratio of 0.01" in bad[0].why
    assert "a hundredth of the +0.1223" in bad[0].sentence and "09_tiny, cell 2" in str(bad[0])
    assert _flags("The window costs +0.0064, a twentieth of the +0.1223 that int4 costs.") == []
    assert _flags("The window costs +0.0064, about a twentieth of the +0.1223 that int4 costs.") == []


@pytest.mark.parametrize("prose", [
    "Mistral keeps half of what all-global layers would keep (2.00×).",  # the ratio printed beside the word
    "By the end attention is a fifth of the arithmetic (19.7%).",
    "GPT-3 caches 9.66 GB, twice the 4.83 GB of 1,024 tokens.",
    "More than half of them (84 of 90) carry most of the energy.",
    "The copies are 4.00x the cache.",  # printed as a multiple
    "int4 costs 0.0107 against 0.1348, less than a tenth.",
    "A kernel that skips the masked half does about half the work.",  # figures of speech: no number
    "Half a byte a number, twice the last-level cache, the second half of each text.",
])
def test_readings_that_hold_pass(prose):
    assert _flags(prose) == []


@pytest.mark.parametrize(("prose", "why"), [
    ("Mistral keeps half of what all-global layers would keep (4.00×).", "'half' means a ratio of 0.5"),
    ("By the end attention is a fifth of the arithmetic.", "carries no number"),
    ("GPT-3 caches 9.66 GB, three times as much as the 4.83 GB of 1,024 tokens.", "ratio of 3"),
    ("The multiply-adds differ 202-fold (1,101,824 against 899,072).", "'202-fold'"),
    ("Exactly half of 0.4 and 1.0 survive.", "'Exactly half'"),
    ("Models released with a long context have the largest caches.", "'largest' reads the output above"),
    ("The effect fades with depth.", "'fades'"),
    ("The two overlap only in part.", "'only in part'"),
])
def test_readings_that_do_not_hold_are_caught(prose, why):
    bad = _flags(prose)
    assert len(bad) == 1 and why in bad[0].why, bad


def test_size_claims_are_read_only_in_readings_and_statements():
    assert _flags("The three largest caches belong to Llama-3.1 405B (63 GiB) and Qwen2.5-72B (40 GiB).") == []
    assert _flags("Which caches are largest at the released context?") == []  # a question
    assert _flags("Move the KV heads to the largest value.") == []  # an instruction
    nb = _notebook("Intro.")
    nb.cells.append(nbformat.v4.new_markdown_cell("The readout shows the largest difference."))  # not a reading
    assert flags(nb, "09_tiny", model_names()) == []


def test_a_pending_entry_matches_only_its_own_flagged_sentence(monkeypatch):
    monkeypatch.setitem(globals(), "PENDING", {("09_tiny", "By the end attention")})
    flag = Flag("09_tiny", 2, "By the end attention is a fifth of the arithmetic.", "why")
    assert _pending(flag) == ("09_tiny", "By the end attention")
    assert _pending(Flag("09_tiny", 2, "Another sentence.", "why")) is None
    assert _pending(Flag("10_other", 2, flag.sentence, "why")) is None
