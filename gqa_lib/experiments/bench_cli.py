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


def int_at_least(minimum: int):
    """An argparse ``type`` that accepts whole numbers >= ``minimum`` (written as digits, e.g. '256').

    The returned function raises argparse.ArgumentTypeError naming the value and the valid range for anything
    else ('2.5', '1e3', a number below ``minimum``); argparse turns that into a usage error naming the option.
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not valid: must be a whole number, "
                                             f"{minimum} or more") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is not valid: must be a whole number, {minimum} or more")
        return value

    parse.__name__ = f"int_at_least_{minimum}"
    return parse


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


def load_corpus_and_smollm(args):
    """(corpus, model, tokenizer): the corpus of ``gqa_lib.experiments.corpus`` and SmolLM2-135M, in that order,
    so that a corpus that is not the shipped one stops the run before the model's seconds of loading.

    Prints the corpus's one-line description. ``args.allow_other_corpus`` False: raises CorpusMismatchError
    when this Python's standard library is not the shipped corpus; True: goes on with it. Raises the model
    loader's ModelFileError when the model file is missing or damaged.
    """
    corpus = load_corpus(strict=not args.allow_other_corpus)
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
