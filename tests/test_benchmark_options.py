"""Benchmark commands check every option before any work (issue 16).

Each bad option must stop the command while it parses its arguments, with argparse's usage error
(exit status 2) naming the option, the value and what is valid, and before the corpus or the model
is loaded: the commands' loaders are replaced by functions that fail the test if called. Before this
was fixed, ``--window 1`` and ``--lr -1`` were found after the model had loaded (or after minutes of
measuring, with a traceback), and an ``--out`` that was a folder lost the measured rows at the end.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from gqa_lib.experiments import bench_cli, results

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
