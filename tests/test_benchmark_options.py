"""Benchmark commands check every option before any work (issue 16).

Each bad option must stop the command while it parses its arguments, with argparse's usage error
(exit status 2) naming the option, the value and what is valid, and before the corpus or the model
is loaded: the commands' loaders are replaced by functions that fail the test if called. Before this
was fixed, ``--window 1`` and ``--lr -1`` were found after the model had loaded (or after minutes of
measuring, with a traceback), and an ``--out`` that was a folder lost the measured rows at the end.

Issue 25, the same rule for every command and every bound (a window past SmolLM2's context, a latent rank past
its full rank, a KIVI row that would never be quantized, a nan factor, a value given twice), each refused in
under a second through tests/command_probe.py; and the end of every command: its CSV saved before any summary
is printed, only ASCII printed (a latin-1 or cp437 stdout cannot encode 'Δ'), and a table holding a nan loss
or timing never written.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import inspect
import io
import os
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from command_probe import run_mains

from gqa_lib.experiments import bench_cli, results

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def torch_state_kept():
    """A command's main() sets process-wide torch state (grad mode off, thread count), as an entry point may;
    run in this process, it must not leak into the tests that follow in the same worker (it turned training
    tests' gradients off)."""
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    yield
    torch.set_grad_enabled(grad)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sweep():
    return _load("train_kv_sweep")


@pytest.fixture(scope="module")
def conversion():
    return _load("convert_smollm")


@pytest.fixture
def no_work(monkeypatch, sweep, conversion):
    """Loading the corpus or the model fails the test: bad options must be refused before either."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the bad option was refused")

    import gqa_lib.models.smollm

    for module in (sweep, conversion):
        monkeypatch.setattr(module, "load_corpus", refuse)
    monkeypatch.setattr(sweep, "run_sweep", refuse)
    monkeypatch.setattr(gqa_lib.models.smollm, "load_smollm", refuse)


def _refused(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2, f"exit status {info.value.code}"
    return capsys.readouterr().err


# (command, its bad option as typed, what the usage error must say): 8 of train_kv_sweep, 13 of convert_smollm
BAD_NUMBERS = [
    ("sweep", "--seeds -1", ["argument --seeds", "-1", "1 or more"]),
    ("sweep", "--seeds 0", ["argument --seeds", "0", "1 or more"]),
    ("sweep", "--steps 0", ["argument --steps", "0", "1 or more"]),
    ("sweep", "--steps 1e3", ["argument --steps", "'1e3'", "whole number"]),
    ("sweep", "--workers -2", ["argument --workers", "-2", "1 or more"]),
    ("sweep", "--threads 2.5", ["argument --threads", "'2.5'", "whole number"]),
    ("sweep", "--kv-heads 0", ["argument --kv-heads", "0", "1 or more"]),
    ("sweep", "--kv-heads 4 3", ["--kv-heads 3", "n_heads=8", "valid: 1, 2, 4, 8"]),
    ("conversion", "--window 1", ["argument --window", "1", "2 or more"]),
    ("conversion", "--window -5", ["argument --window", "-5", "2 or more"]),
    ("conversion", "--eval-windows 0", ["argument --eval-windows", "0", "1 or more"]),
    ("conversion", "--uptrain-steps -1", ["argument --uptrain-steps", "-1", "1 or more"]),
    ("conversion", "--eval-every 0", ["argument --eval-every", "0", "1 or more"]),
    ("conversion", "--batch 0", ["argument --batch", "0", "1 or more"]),
    ("conversion", "--lr -1", ["argument --lr", "-1", "finite number above 0"]),
    ("conversion", "--lr 0", ["argument --lr", "0", "finite number above 0"]),
    ("conversion", "--lr nan", ["argument --lr", "nan", "finite number above 0"]),
    ("conversion", "--lr inf", ["argument --lr", "inf", "finite number above 0"]),
    ("conversion", "--lr fast", ["argument --lr", "'fast'", "finite number above 0"]),
    ("conversion", "--seed -3", ["argument --seed", "-3", "0 or more"]),
    ("conversion", "--threads 0", ["argument --threads", "0", "1 or more"]),
]


@pytest.mark.parametrize(("command", "option", "needles"), BAD_NUMBERS, ids=[f"{c} {o}" for c, o, _ in BAD_NUMBERS])
def test_bad_numbers_are_refused_before_any_work(command, option, needles, request, no_work, capsys, tmp_path):
    main = request.getfixturevalue(command).main
    err = _refused(main, [*option.split(), "--out", str(tmp_path / "r.csv")], capsys)
    assert all(n in err for n in needles), err


def _out_cases(tmp_path):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    a_file = tmp_path / "a_file.csv"
    a_file.write_text("x\n1\n")
    return [
        (["--out", str(folder)], [f"--out={folder} is a folder", "name a file"]),
        (["--out", str(folder), "--overwrite"], [f"--out={folder} is a folder", "--overwrite replaces files only"]),
        (["--out", str(a_file / "r.csv")], [f"{a_file} is a file, not a folder"]),
        (["--out", str(a_file / "deeper" / "r.csv")], [f"{a_file} is a file, not a folder"]),
        (["--out", str(a_file)], [f"--out={a_file} exists", "--overwrite"]),
    ]


@pytest.mark.parametrize("command", ["sweep", "conversion"])
def test_bad_out_paths_are_refused_before_any_work(command, request, no_work, capsys, tmp_path):
    main = request.getfixturevalue(command).main
    for argv, needles in _out_cases(tmp_path):
        err = _refused(main, argv, capsys)
        assert all(n in err for n in needles), (argv, err)
        assert "Traceback" not in err
    assert (tmp_path / "a_file.csv").read_text() == "x\n1\n"


def test_a_folder_named_as_out_never_advises_overwrite(tmp_path):
    """Before: '--out exists; pass --overwrite', and --overwrite then failed at the end of the run."""
    problem = bench_cli.output_problem(tmp_path, overwrite=False)
    assert "is a folder" in problem and "pass --overwrite" not in problem


def test_good_options_pass_the_checks(sweep, conversion, tmp_path):
    out = str(tmp_path / "new" / "r.csv")  # a folder that does not exist yet is made at the end
    args = sweep.parse_args(["--seeds", "2", "--steps", "5", "--kv-heads", "1", "8", "--out", out])
    assert (args.seeds, args.steps, args.kv_heads) == (2, 5, [1, 8])
    args = conversion.parse_args(["--window", "2", "--lr", "1e-4", "--seed", "0", "--out", out])
    assert (args.window, args.lr, args.seed) == (2, 1e-4, 0)


@pytest.mark.parametrize(("kind", "text", "value"), [
    (bench_cli.positive_int, "3", 3), (bench_cli.non_negative_int, "0", 0),
    (bench_cli.positive_float, "2.5e-3", 2.5e-3), (bench_cli.int_at_least(2), "2", 2),
])
def test_validators_accept_what_is_valid(kind, text, value):
    assert kind(text) == value


@pytest.mark.parametrize(("kind", "text", "needle"), [
    (bench_cli.positive_int, "0", "0 is not valid: must be a whole number, 1 or more"),
    (bench_cli.positive_int, "-1", "-1 is not valid"),
    (bench_cli.positive_int, "1.5", "'1.5' is not valid: must be a whole number"),
    (bench_cli.non_negative_int, "-3", "-3 is not valid: must be a whole number, 0 or more"),
    (bench_cli.positive_float, "-1", "-1 is not valid: must be a finite number above 0"),
    (bench_cli.positive_float, "nan", "nan is not valid"),
    (bench_cli.positive_float, "1e999", "1e999 is not valid"),
    (bench_cli.int_at_least(2), "1", "1 is not valid: must be a whole number, 2 or more"),
])
def test_validators_refuse_with_the_value_and_the_valid_range(kind, text, needle):
    with pytest.raises(argparse.ArgumentTypeError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        kind(text)


def test_a_parser_using_the_validators_names_the_option(capsys):
    p = argparse.ArgumentParser(prog="bench")
    p.add_argument("--warmup", type=bench_cli.non_negative_int, default=3)
    with pytest.raises(SystemExit):
        p.parse_args(["--warmup", "-3"])
    assert "argument --warmup: -3 is not valid: must be a whole number, 0 or more" in capsys.readouterr().err


def test_rows_are_saved_elsewhere_when_out_cannot_be_written(tmp_path, capsys, monkeypatch):
    """The run is over and --out has become unwritable meanwhile: the rows go to a temporary file."""
    monkeypatch.setattr(results.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder was expected")
    rows = [{"n_kv_heads": 8, "loss": 1.5}]
    assert results.save_rows(blocker / "r.csv", rows, {"command": "test"}) is None
    err = capsys.readouterr().err
    assert f"could not write {blocker / 'r.csv'}" in err and "rows are saved in" in err
    rescued = list((tmp_path / "tmp").glob("r-*.csv"))
    assert len(rescued) == 1 and results.read_results(rescued[0])["loss"].tolist() == [1.5]


# ---- issue 25: every bound refused at parse time, in well under a second ---------------------------------------

BENCH = ROOT / "benchmarks"
CPUS = os.cpu_count() or 1
AT_ONCE_S = 1.0  # a refusal parses and checks: milliseconds; loading the corpus and SmolLM2 takes seconds
# (command, its bad options as typed, what the refusal must say). Before issue 25 every one of these was accepted
# and went on to load the model (or to measure): a 1-token window's losses were all nan, a window past SmolLM2's
# context ran on positions it was never trained on, rank 0 or 500 failed after the model had loaded, rank 384 and
# a repeated rank silently gave fewer rows, --seed -1 failed at the very end, a nan --flush-factor failed when the
# buffer was made, and the KIVI rows scored caches that were never quantized. 24 cases.
PROBED = [
    ("mla_smollm", "--window 1", ["--window 1 is not valid", "2 or more and 8192 or less", "context"]),
    ("mla_smollm", "--window 8193", ["--window 8193 is not valid", "8192 or less"]),
    ("mla_smollm", "--ranks 0", ["--ranks 0 is not valid", "1 or more and 383 or less"]),
    ("mla_smollm", "--ranks 500", ["--ranks 500 is not valid", "383 or less", "rank 384 is the full rank"]),
    ("mla_smollm", "--ranks 128 384", ["--ranks 384 is not valid", "checked for exactness, not scored"]),
    ("mla_smollm", "--ranks 128 128", ["--ranks 128 is given twice"]),
    ("mla_smollm", "--seed -1", ["--seed -1 is not valid", "0 or more"]),
    ("mla_smollm", "--eval-windows 64 --window 8192 --allow-other-corpus",
     ["64 validation windows of 8192 tokens", "lower --window or --eval-windows"]),
    ("cache_pareto", "--window 64 --score-from 32",
     ["argument --window", "64 is not valid", "66 or more", "KIVI block of 64"]),
    ("cache_pareto", "--window 8193", ["argument --window", "8193 is not valid", "8192 or less"]),
    ("cache_pareto", "--window 256 --score-from 32", ["--score-from 32", "smallest valid --score-from is 64"]),
    ("cache_pareto", "--sliding 32", ["--sliding 32 with --sinks 4", "one KIVI block of 64", "at least 61"]),
    ("cache_pareto", "--sliding 256 2048", ["--sliding 2048", "--score-from=512", "largest valid --sliding is 512"]),
    ("cache_pareto", "--budget 600", ["--budget 600", "--score-from=512", "largest valid --budget is 512"]),
    ("cache_pareto", "--ranks 385", ["argument --ranks", "385 is not valid", "1 or more and 384 or less"]),
    ("cache_pareto", "--ranks 64 64", ["--ranks 64 is given twice"]),
    ("cache_pareto", "--eval-windows 40 --window 8192 --allow-other-corpus", ["40 validation windows of 8192 tokens"]),
    ("convert_smollm", "--eval-windows 2 --window 8193",
     ["argument --window", "8193 is not valid", "8192 or less", "context"]),
    ("decode_attention", "--rotate-factor nan", ["argument --rotate-factor", "nan is not valid", "finite number"]),
    ("decode_attention", "--bandwidth-factor inf", ["argument --bandwidth-factor", "inf is not valid"]),
    ("decode_attention", "--seq-lens 1024 1024 --threads 1", ["--seq-lens 1024 is given twice"]),
    ("decode_attention", "--threads 1 1", ["--threads 1 is given twice"]),
    ("decode_attention", "--seq-lens 10000000000 --threads 1", ["--seq-lens 10000000000", "GB", "lower --seq-lens"]),
    ("decode_smollm", f"--threads {CPUS + 1}", [f"--threads {CPUS + 1} is more than the {CPUS} CPUs"]),
    ("decode_smollm", "--seq-lens 1000 1000", ["--seq-lens 1000 is given twice"]),
]


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """What each command did with each bad option: one fresh process runs its main() for all of them."""
    out = str(tmp_path_factory.mktemp("probed") / "r.csv")
    return run_mains([(BENCH / f"{command}.py", [*option.split(), "--out", out]) for command, option, _ in PROBED])


@pytest.mark.parametrize("case", range(len(PROBED)), ids=[f"{c} {o}" for c, o, _ in PROBED])
def test_bounds_are_refused_before_any_work_in_well_under_a_second(case, probed):
    command, option, needles = PROBED[case]
    result = probed[case]
    assert result["code"] == 2, f"{command} {option}: exit {result['code']}\n{result['stdout'][-2000:]}"
    missing = [n for n in needles if n not in result["stderr"]]
    assert not missing, f"the refusal lacks {missing}: {result['stderr']!r}"
    for work in ("corpus:", "SmolLM2 loaded", "last-level cache", "ceilings"):
        assert work not in result["stdout"], f"work started before the refusal: {result['stdout'][-500:]}"
    assert result["seconds"] < AT_ONCE_S, f"refused only after {result['seconds']:.1f} s"


def test_good_bounds_pass(tmp_path):
    """The controls: the largest window SmolLM2 was trained on, and the smallest the KIVI rows allow."""
    out = ["--out", str(tmp_path / "r.csv")]
    mla, pareto, conversion = _load("mla_smollm"), _load("cache_pareto"), _load("convert_smollm")
    assert mla.parse_args(["--window", "8192", "--ranks", "1", "383", "--seed", "0", *out]).ranks == [1, 383]
    args = pareto.parse_args(["--window", "66", "--score-from", "64", "--sliding", "61", "64", "--ranks", "384",
                              "--budget", "64", *out])
    assert (args.window, args.score_from, args.ranks) == (66, 64, [384])
    assert conversion.parse_args(["--window", "8192", *out]).window == 8192
    assert _load("decode_attention").parse_args(["--rotate-factor", "2.5", "--threads", "1", *out]).rotate_factor == 2.5


@pytest.mark.parametrize(("kind", "text", "needle"), [
    (bench_cli.int_at_least(2, 8192, "the context"), "8193",
     "8193 is not valid: must be a whole number, 2 or more and 8192 or less (the context)"),
    (bench_cli.int_at_least(2, 8192), "1", "1 is not valid: must be a whole number, 2 or more and 8192 or less"),
    (bench_cli.finite_float, "nan", "nan is not valid: must be a finite number"),
    (bench_cli.finite_float, "-inf", "-inf is not valid: must be a finite number"),
])
def test_bounded_validators_name_the_whole_range(kind, text, needle):
    with pytest.raises(argparse.ArgumentTypeError) as info:
        kind(text)
    assert needle in str(info.value)


def test_smollm_bounds_are_read_from_the_package():
    """8192 and 384 come from data/models.json through the catalog, not typed into the commands."""
    from gqa_lib.models.catalog import get_model

    spec = get_model("SmolLM2-135M")
    assert bench_cli.SMOLLM2_CONTEXT == spec.context == 8192
    assert bench_cli.SMOLLM2_FULL_RANK == 2 * spec.n_kv_heads * spec.head_dim == 384
    for script in BENCH.glob("*.py"):
        facts = (8192, 384, 383) if script.stem in ("mla_smollm", "cache_pareto") else (8192,)
        typed = [n.value for n in ast.walk(ast.parse(script.read_text())) if isinstance(n, ast.Constant)
                 and not isinstance(n.value, bool) and n.value in facts]
        assert not typed, f"{script.name} types SmolLM2's context or full rank: {typed}"


# ---- issue 25: saved before anything is printed of it, and only ASCII printed --------------------------------

def _string_constants(source: str, docstrings: bool) -> list[str]:
    """Every string literal of ``source`` (f-string parts included); without the docstrings if ``docstrings`` is
    False (a function's docstring is never printed; a command's module docstring is its --help)."""
    tree = ast.parse(source)
    skip = set()
    if not docstrings:
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and node.body \
                    and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
                skip.add(id(node.body[0].value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip]


def _printed_helpers():
    """The functions of other modules whose text the commands print."""
    from gqa_lib.experiments import attention_roofline, corpus, model_decode_speed, smollm_conversion

    return [smollm_conversion.ranking_line, smollm_conversion.rank_methods, attention_roofline.check_targets,
            attention_roofline.pick, model_decode_speed.speedup, corpus.Corpus.describe, corpus.load_corpus]


def test_no_string_a_command_prints_holds_a_non_ascii_character():
    """Statically: every literal of benchmarks/*.py (their docstrings are their --help), of bench_cli and of
    results' writers, and of the helpers whose text they print. 'Δ' and '±' were printed before (issue 25)."""
    sources = {p.name: (p.read_text(), True) for p in sorted(BENCH.glob("*.py"))}
    sources["bench_cli.py"] = (Path(bench_cli.__file__).read_text(), True)
    sources["results.py"] = (Path(results.__file__).read_text(), False)
    for fn in _printed_helpers():
        sources[fn.__qualname__] = (textwrap.dedent(inspect.getsource(fn)), False)
    for name, (source, docstrings) in sources.items():
        bad = [s for s in _string_constants(source, docstrings) if not s.isascii()]
        assert not bad, f"{name} prints non-ASCII text: {bad}"


class AsciiOnly(io.TextIOBase):
    """A stdout that cannot encode anything but ASCII, as a latin-1 locale cannot encode 'Δ' or a redirected
    Windows console most of Unicode; it records each write with whether the results file existed then."""

    def __init__(self, out: Path):
        self.out, self.writes = out, []

    @property
    def encoding(self):
        return "ascii"

    def writable(self):
        return True

    def write(self, text):
        text.encode("ascii")  # UnicodeEncodeError, as print() to such a stdout raises
        self.writes.append((text, self.out.exists()))
        return len(text)

    def text(self, saved: bool | None = None) -> str:
        return "".join(t for t, s in self.writes if saved is None or s == saved)


def _corpus():
    return SimpleNamespace(val=range(300_000), train=range(4_000_000), python="3.11.7", sha256="ab",
                           matches_shipped=True, describe=lambda: "a stand-in corpus")


def _shipped(name: str) -> list[dict]:
    """The shipped rows of ``name``; decode_attention's of 1 thread (the stand-in run uses one: CI may have one CPU)."""
    return results.load(name).records(**({"threads": 1} if name == "decode_attention_cpu" else {}))


def _stand_ins(command: str, module, monkeypatch, rows: list[dict]) -> list[str]:
    """Replace the command's model, corpus and measuring with stand-ins that give ``rows``; its extra options."""
    import gqa_lib.models.smollm

    monkeypatch.setattr(gqa_lib.models.smollm, "load_smollm",
                        lambda: (SimpleNamespace(config=SimpleNamespace(vocab_size=49152)), None))
    monkeypatch.setattr(bench_cli, "load_corpus", lambda strict: _corpus())
    if command == "cache_pareto":
        # An older shipped table lacks the eviction columns; a row that evicts nothing reads what it stores.
        rows = [{"read_bytes_per_token": r["kv_bytes_per_token"], "newest_bf16": False, "fp8": "", "fp8_scale": "",
                 "evicts": False, "score_from": r["context"] // 2, "data": "none", "data_tokens": 0, **r} for r in rows]
    if command in ("mla_smollm", "cache_pareto"):
        monkeypatch.setattr(module, "run", lambda args, model, tok, corpus: rows)
    elif command == "convert_smollm":
        monkeypatch.setattr(module, "load_corpus", lambda strict: _corpus())
        monkeypatch.setattr(module, "kv_heads_of", lambda model: [3] * 30)
        monkeypatch.setattr(module, "run", lambda args, model, tok, corpus: rows)
    elif command == "train_kv_sweep":
        monkeypatch.setattr(module, "load_corpus", lambda strict: _corpus())
        monkeypatch.setattr(module, "run_sweep", lambda args: (rows, 12.0))
    elif command == "decode_smollm":
        monkeypatch.setattr(module, "last_level_cache", lambda: {"bytes": 2 ** 25, "source": "stand-in"})
        monkeypatch.setattr(module, "measure_bandwidth", lambda llc: {"bytes_per_s": 8e9, "cpu_bytes_per_s": 8e9,
                                                                      "bytes": 2 ** 27, "reps": 3})
        monkeypatch.setattr(module, "run_decode_speed", lambda *a, **k: rows)
    elif command == "decode_attention":
        names = {dtype: name for name, dtype in module.DTYPES.items()}
        monkeypatch.setattr(module, "last_level_cache", lambda: {"bytes": 2 ** 25, "level": 3, "source": "stand-in"})

        def ceilings(threads, dtypes, *rest):
            return {"threads": threads, "clock": "cpu", "read_bytes_per_s": 9e9, "sum_read_bytes_per_s": 8e9,
                    "bandwidth_bytes": 2 ** 27, "gemm_shape": "2048^3", "peak": {names[d]: 1e11 for d in dtypes},
                    "decode_gemm": {(names[d], g): 1e10 for d in dtypes for g in (1, 4, 32)},
                    "kernel_in_cache": {(names[d], g): 1e10 for d in dtypes for g in (1, 4, 32)},
                    "decode_gemm_shape": "(rows x 128) @ (128 x 512)"}

        monkeypatch.setattr(module, "measure_ceilings", ceilings)
        monkeypatch.setattr(module, "run_decode_benchmark", lambda *a: [
            r for r in rows if r["threads"] == a[10]["threads"] and r["dtype"] == names[a[4]]])
        return ["--threads", "1"]
    return []


# (command, its shipped results file, a line only its summary prints, the column that names a row)
COMMANDS = [
    ("mla_smollm", "mla_smollm", "95% CI of delta", "method"),
    ("cache_pareto", "cache_pareto", "pareto", "method"),
    ("convert_smollm", "smollm_conversion", "recovered", "condition"),
    ("train_kv_sweep", "kv_sweep", "Paired t-tests", "n_kv_heads"),
    ("decode_smollm", "decode_smollm_cpu", "Target at", "variant"),
    ("decode_attention", "decode_attention_cpu", "Targets at", "impl"),
]


def _run_command(command, rows, monkeypatch, tmp_path):
    module = _load(command)
    out = tmp_path / "r.csv"
    argv = [*_stand_ins(command, module, monkeypatch, rows), "--out", str(out)]
    stdout = AsciiOnly(out)
    monkeypatch.setattr(sys, "stdout", stdout)
    code = module.main(argv)
    monkeypatch.undo()
    return code, out, stdout


@pytest.mark.parametrize(("command", "shipped", "summary", "label"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_the_csv_is_saved_before_the_summary_on_a_stdout_that_only_takes_ascii(command, shipped, summary, label,
                                                                               monkeypatch, tmp_path):
    """Each command's end, from its rows to its printed summary, run with the shipped rows standing in for the
    measurement. Before issue 25 three commands printed 'Δ' before saving (a UnicodeEncodeError and no CSV after a
    17-minute run), one printed '±', and three printed their summary before saving."""
    rows = _shipped(shipped)
    code, out, stdout = _run_command(command, rows, monkeypatch, tmp_path)
    assert code == 0
    assert len(results.read_results(out)) == len(rows)
    assert summary in stdout.text(saved=True) and summary not in stdout.text(saved=False)
    assert "wrote" in stdout.text(saved=True) or "wrote" in stdout.text()


@pytest.mark.parametrize(("command", "shipped", "summary", "label"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_a_table_with_a_nan_loss_is_never_written(command, shipped, summary, label, monkeypatch, tmp_path, capsys):
    """The safety net behind the refusals: a nan in a loss or a timing stops the command before it writes, naming
    the row and the column (before issue 25 the table was written, and read as complete)."""
    rows = _shipped(shipped)
    column = {"mla_smollm": "val_nll", "cache_pareto": "delta_nll", "convert_smollm": "ci_high",
              "train_kv_sweep": "val_loss", "decode_smollm": "tokens_per_s", "decode_attention": "median_ms"}[command]
    victim = 1
    rows[victim][column] = float("nan")
    code, out, stdout = _run_command(command, rows, monkeypatch, tmp_path)
    err = capsys.readouterr().err
    assert code == 1 and not out.exists()
    assert f"refusing to write {out}" in err and f"row {victim} (" in err and f"{column}=nan" in err, err
    assert str(rows[victim][label]) in err and summary not in stdout.text()


def test_every_command_that_writes_checks_its_numbers_are_finite():
    """Guards the test above: a new command that writes results must name its losses or timings too."""
    for script in BENCH.glob("*.py"):
        text = script.read_text()
        if "results.save_and_report" in text:
            assert "finite=" in text, f"{script.name} writes without checking its numbers are finite"
        if "results.save_rows" in text:
            assert "results.refuse_non_finite" in text, script.name


def test_the_widget_latency_table_prints_on_a_stdout_that_only_takes_ascii(monkeypatch, tmp_path):
    """widget_latency writes no file; its whole output must still print on any terminal."""
    module = _load("widget_latency")
    name = next(n for n in module.widgets.__all__ if n not in module.MODEL_WIDGETS)
    monkeypatch.setattr(module, "measure", lambda n, repeats: (0.5, {"slider": [(0.012, 0.010), (0.020, 0.015)]}))
    stdout = AsciiOnly(tmp_path / "none.csv")
    monkeypatch.setattr(sys, "stdout", stdout)
    assert module.main(["--widgets", name, "--repeats", "1"]) == 0
    monkeypatch.undo()
    assert name in stdout.text() and "slider" in stdout.text()


def test_non_finite_cells_name_row_column_and_value():
    rows = [{"m": "a", "loss": 1.0, "rec": float("nan")}, {"m": "b", "loss": float("inf"), "rec": ""},
            {"m": "c", "loss": None, "rec": 0.5}]
    got = results.non_finite_cells(rows, ["loss"], "m", {"rec": lambda r: r["m"] != "a"})
    assert got == ["row 1 (m='b'): loss=inf, rec=''", "row 2 (m='c'): loss=None"]
    assert results.non_finite_cells(rows[:1], ["loss"], "m", {"rec": lambda r: r["m"] != "a"}) == []
