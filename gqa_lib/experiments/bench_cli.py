"""What every benchmark command (``benchmarks/*.py``) shares: its parser, the argparse types of its numbers,
``--out`` and ``--overwrite`` with their checks, ``--allow-other-corpus``, loading the corpus and SmolLM2, and
printing a table of rows.

One home, so that the commands agree: an option means the same thing in each and a bad value is refused in
the same words, and the two rules every command keeps are written once. Writing the CSV itself is
``results``'s (``results.save_and_report`` ends a command); this module is only the command line around it.

Rule one: a command checks every option while parsing, before any work, so a typing mistake costs a second,
not a run. Use the argparse types below for numbers and check_output_option for --out:

    p = bench_cli.command_parser(__doc__)
    p.add_argument("--reps", type=bench_cli.positive_int, default=5)
    p.add_argument("--seq-lens", type=bench_cli.positive_int, nargs="+")
    p.add_argument("--warmup", type=bench_cli.non_negative_int, default=3)
    p.add_argument("--window", type=bench_cli.int_at_least(2), default=256)
    p.add_argument("--lr", type=bench_cli.positive_float, default=1e-3)
    args = bench_cli.parse_options(p, argv, "name.csv")  # adds --out data/results/name.csv and --overwrite
    bench_cli.check_output_option(p, args)  # stops with a usage error naming the problem with --out

A bad value stops the command with argparse's usage error, exit status 2, naming the option as typed, the
value, and what is valid:  "argument --lr: -1 is not valid: must be a finite number above 0".

Rule two: a command never replaces a results file unless given ``--overwrite`` (``--out`` writes elsewhere).

Rule three: a command saves its CSV before it prints any summary of it (``results.save_and_report(...,
summary=...)``), and prints only ASCII: a stdout that cannot encode a character (a latin-1 locale, a
redirected Windows console) must not end a long run without its results. Write 'delta', '+/-', 'x'.

Bounds that come from SmolLM2-135M (its 8,192-token context, its full latent rank) are read from
``gqa_lib.models.catalog`` (data/models.json), never typed: ``SMOLLM2_CONTEXT``, ``SMOLLM2_FULL_RANK``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from gqa_lib.experiments.corpus import load_corpus
from gqa_lib.experiments.results import RESULTS_DIR
from gqa_lib.models import smollm
from gqa_lib.models.catalog import get_model

SMOLLM2 = get_model("SmolLM2-135M")  # shapes and context from data/models.json
SMOLLM2_CONTEXT = SMOLLM2.context  # 8192: the positions SmolLM2 was trained on; a window past it runs on untrained ones
# The rank of a layer's [W_k; W_v] (384 = 2 x 3 KV heads x 64): a latent of this rank is the original model
SMOLLM2_FULL_RANK = min(2 * SMOLLM2.n_kv_heads * SMOLLM2.head_dim, SMOLLM2.d_model)
CONTEXT_WHY = "SmolLM2-135M's context: positions past it were never trained"


def command_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark command's parser, with ``doc`` (the command's docstring) as its help, line breaks kept.

    The command adds its own options, then parses with :func:`parse_options`, which adds the shared ones.
    Raises nothing itself; the parser stops with a usage error (SystemExit, exit status 2) on a bad option.
    """
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def parse_options(parser: argparse.ArgumentParser, argv: list[str] | None, results_name: str | None = None,
                  corpus: bool = False) -> argparse.Namespace:
    """Add the options the commands share after ``parser``'s own, then parse ``argv`` (None: the command line).

    ``results_name``: the command writes ``data/results/<results_name>``; adds ``--out`` and ``--overwrite``
    (:func:`add_output_options`), and the help says the file is never replaced without ``--overwrite``.
    Check ``--out`` with :func:`check_output_option` after the command's own checks. ``corpus``: adds
    ``--allow-other-corpus`` (go on with another Python's standard library than the shipped results were made
    from; :func:`load_corpus_and_smollm`). Raises SystemExit (exit status 2, argparse's usage error) on a bad
    option, and SystemExit(0) after printing the help for ``--help``.
    """
    # Added last, so the usage line and the help list them after the command's own options.
    if results_name is not None:
        add_output_options(parser.add_argument_group(
            "results file", f"Writes data/results/{results_name}; refuses to replace it without --overwrite."),
            results_name)
    if corpus:
        parser.add_argument_group("corpus").add_argument(
            "--allow-other-corpus", action="store_true",
            help="run even if this Python's standard library differs from the shipped corpus")
    return parser.parse_args(argv)


def valid_range(minimum: int, maximum: int | None = None, why: str = "") -> str:
    """How a refusal states the valid whole numbers: 'a whole number, 2 or more' or
    'a whole number, 2 or more and 8192 or less (why)'."""
    text = f"a whole number, {minimum} or more"
    if maximum is not None:
        text += f" and {maximum} or less"
    return text + (f" ({why})" if why else "")


def int_at_least(minimum: int, maximum: int | None = None, why: str = ""):
    """An argparse ``type`` that accepts whole numbers >= ``minimum`` (written as digits, e.g. '256'), and
    <= ``maximum`` when one is given (``why`` says where that bound comes from, such as a model's context).

    The returned function raises argparse.ArgumentTypeError naming the value and the valid range for anything
    else ('2.5', '1e3', a number outside the range); argparse turns that into a usage error naming the option.
    """
    valid = valid_range(minimum, maximum, why)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not valid: must be {valid}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"{value} is not valid: must be {valid}")
        return value

    parse.__name__ = f"int_at_least_{minimum}" + (f"_at_most_{maximum}" if maximum is not None else "")
    return parse


def smollm_window(minimum: int):
    """argparse ``type``: tokens per window of SmolLM2, ``minimum`` to SmolLM2's context (``SMOLLM2_CONTEXT``)."""
    return int_at_least(minimum, SMOLLM2_CONTEXT, CONTEXT_WHY)


positive_int = int_at_least(1)
positive_int.__doc__ = "argparse ``type``: a whole number 1 or more (counts, sizes, repetitions)."
non_negative_int = int_at_least(0)
non_negative_int.__doc__ = "argparse ``type``: a whole number 0 or more (seeds, warm-up runs)."


def positive_float(text: str) -> float:
    """argparse ``type``: a finite number above 0 (learning rates, durations); 'nan' and 'inf' are refused.

    Raises argparse.ArgumentTypeError naming the value and what is valid.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid: must be a finite number above 0, "
                                         "such as 1e-3") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not valid: must be a finite number above 0, such as 1e-3")
    return value


def finite_float(text: str) -> float:
    """argparse ``type``: any finite number; 'nan', 'inf' and '1e999' are refused (a comparison such as
    ``value < 2`` is False for nan, so a check after parsing lets it through).

    Raises argparse.ArgumentTypeError naming the value and what is valid.
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid: must be a finite number, such as 2.5") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not valid: must be a finite number, such as 2.5")
    return value


def check_range(parser, option: str, values, minimum: int, maximum: int | None = None, why: str = "") -> None:
    """Stop with argparse's usage error (exit 2) if a value of ``option`` (one number or a list) is outside
    ``minimum``..``maximum``, naming the option as typed, the value and the valid range. For options whose type
    is plain ``int`` (their older refusals keep their words); a new option should use :func:`int_at_least`."""
    for value in values if isinstance(values, list | tuple) else [values]:
        if value < minimum or (maximum is not None and value > maximum):
            parser.error(f"{option} {value} is not valid: must be {valid_range(minimum, maximum, why)}")


def refuse_repeats(parser, args, names) -> None:
    """Stop with argparse's usage error if a list option among ``names`` (attribute names of ``args``) holds a
    value twice: each value makes its own rows, and a repeated one would give two rows of one case (or one row
    where two were counted)."""
    for name in names:
        values = getattr(args, name) or []
        seen = set()
        for value in values:
            if value in seen:
                parser.error(f"--{name.replace('_', '-')} {value} is given twice; give each value once "
                             f"(each makes its own rows)")
            seen.add(value)


def check_cpu_count(parser, option: str, values) -> None:
    """Stop with argparse's usage error if a thread count of ``option`` is more than this machine's CPUs: a
    timing with more threads than cores measures the scheduler, not the code."""
    cpus = os.cpu_count() or 1
    for t in values if isinstance(values, list | tuple) else [values]:
        if t > cpus:
            parser.error(f"{option} {t} is more than the {cpus} CPUs this machine has")


def text_problem(corpus, needs) -> str | None:
    """Why the corpus cannot give the token windows asked for, or None. ``needs``: (what, n_windows, window,
    options) for each text, ``what`` 'validation' or 'training' (``corpus.val``, ``corpus.train``) and
    ``options`` the options to lower. A token spans at least one byte, so the byte counts bound the token counts:
    this catches impossible sizes right after the corpus is read (milliseconds), before the model is loaded."""
    for what, n_windows, window, options in needs:
        n_bytes = len(corpus.val if what == "validation" else corpus.train)
        if n_windows * window > n_bytes:
            return (f"{n_windows} {what} windows of {window} tokens need more tokens than the corpus's {what} text "
                    f"has bytes ({n_bytes:,}); lower {options}")
    return None


def output_problem(path: str | Path, overwrite: bool, option: str = "--out",
                   file_name: str = "results.csv") -> str | None:
    """Why results could not be written to ``path`` at the end of a run, or None if they can.

    Checked: ``path`` is a folder (``--overwrite`` does not help: it replaces files only); a folder
    above it is a file; the nearest existing folder above it is not writable; it exists and
    ``overwrite`` is False. Only looks: creates and changes nothing. ``file_name`` is the example a
    message suggests for a folder.
    """
    path = Path(path)
    if path.is_dir():
        return (f"{option}={path} is a folder; name a file in it, such as {option} {path / file_name} "
                "(--overwrite replaces files only)")
    if path.exists() and not path.is_file():
        return f"{option}={path} exists and is not a regular file; name a file"
    if path.exists() and not overwrite:
        return f"{option}={path} exists; pass --overwrite to replace it, or {option} to write elsewhere"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{option}={path} cannot be made: {parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{option}={path} cannot be written: no permission to write in {parent}"
    return None


def add_output_options(parser, default_name: str) -> None:
    """Add ``--out`` (default ``data/results/<default_name>``) and ``--overwrite`` to an argparse parser (or an
    argument group). Raises argparse.ArgumentError if the parser already has either option."""
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / default_name,
                        help=f"CSV to write (default data/results/{default_name})")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def check_output_option(parser, args) -> None:
    """Stop with argparse's usage error (exit 2) if ``args.out`` could not be written (see output_problem)."""
    problem = output_problem(args.out, args.overwrite, file_name=Path(parser.get_default("out") or "results.csv").name)
    if problem:
        parser.error(problem)


def require_at_least_one(parser, args, names) -> None:
    """Stop with argparse's usage error if any of ``names`` (attribute names of ``args``) is below 1.

    Prefer ``type=positive_int`` in add_argument, which also refuses '2.5' and names the option.
    """
    for name in names:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be at least 1")


def output_blocked(path: Path, overwrite: bool) -> bool:
    """True (after saying why on stderr) when results could not be written to ``path``: check before a long run.

    The same checks as output_problem; check_output_option does this as part of parsing.
    """
    problem = output_problem(path, overwrite)
    if problem:
        print(problem, file=sys.stderr)
        return True
    return False


def load_corpus_and_smollm(args, needs=()):
    """(corpus, model, tokenizer): the corpus of ``gqa_lib.experiments.corpus`` and SmolLM2-135M, in that order,
    so that a corpus that is not the shipped one, or too short, stops the run before the model's seconds of loading.

    ``needs``: the token windows the command will cut from the corpus, as :func:`text_problem` takes them; when
    the text is too short for them, says why on stderr and raises SystemExit(2) before the model is loaded.
    Prints the corpus's one-line description. ``args.allow_other_corpus`` False: raises CorpusMismatchError
    when this Python's standard library is not the shipped corpus; True: goes on with it. Raises the model
    loader's ModelFileError when the model file is missing or damaged.
    """
    corpus = load_corpus(strict=not args.allow_other_corpus)
    problem = text_problem(corpus, needs)
    if problem:
        print(problem, file=sys.stderr)
        raise SystemExit(2)
    model, tok = smollm.load_smollm()  # looked up at each call: tests replace it with one that refuses to load
    print(f"corpus: {corpus.describe()}")
    return corpus, model, tok


def print_table(rows: list[dict], columns: dict[str, int], cells: Callable[[dict], tuple]) -> None:
    """Print ``rows`` after a blank line as a table of right-aligned columns under their titles.

    ``columns``: each column's title and width, in order. ``cells(row)``: the row's cells in the same order,
    each as it should read (a number formatted as the command wants it; anything else goes through ``str``).
    Raises ValueError when ``cells`` gives a row more or fewer cells than there are columns.
    """
    print("\n" + " ".join(f"{title:>{width}}" for title, width in columns.items()))
    for row in rows:
        values = cells(row)
        if len(values) != len(columns):
            raise ValueError(f"cells() gave {len(values)} cells for a row of {len(columns)} columns "
                             f"({', '.join(columns)})")
        print(" ".join(f"{value!s:>{width}}" for value, width in zip(values, columns.values(), strict=True)))
