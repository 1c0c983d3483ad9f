"""What every benchmark command shares (gqa_lib/experiments/bench_cli.py): the parser and its shared options, the
--out checks, loading the corpus before the model, and the printed table. The argparse types of numbers and the
commands' refusals are tested in test_benchmark_options.py."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest

from gqa_lib.experiments import bench_cli, results


def test_benchmark_options_default_to_the_shipped_file_and_check_counts(tmp_path, capsys):
    p = argparse.ArgumentParser(prog="bench")
    p.add_argument("--reps", type=int, default=3)
    bench_cli.add_output_options(p, "x.csv")
    args = p.parse_args([])
    assert args.out == results.RESULTS_DIR / "x.csv" and args.overwrite is False
    bench_cli.require_at_least_one(p, args, ("reps",))  # 3 is fine
    with pytest.raises(SystemExit):
        bench_cli.require_at_least_one(p, p.parse_args(["--reps", "0"]), ("reps",))
    assert "--reps=0 must be at least 1" in capsys.readouterr().err


def test_output_blocked_only_for_an_existing_file_without_overwrite(tmp_path, capsys):
    path = tmp_path / "r.csv"
    assert not bench_cli.output_blocked(path, overwrite=False)
    path.write_text("old")
    assert bench_cli.output_blocked(path, overwrite=False)
    assert "pass --overwrite" in capsys.readouterr().err
    assert not bench_cli.output_blocked(path, overwrite=True)
    assert path.read_text() == "old"  # checking never touches the file


def test_the_shared_options_come_after_the_commands_own(capsys):
    p = bench_cli.command_parser("Time something.\n\n    a line kept as written")
    p.add_argument("--reps", type=bench_cli.positive_int, default=5, help="timed reps")
    args = bench_cli.parse_options(p, [], "x.csv", corpus=True)
    assert (args.reps, args.out, args.overwrite, args.allow_other_corpus) == (5, results.RESULTS_DIR / "x.csv",
                                                                               False, False)
    text = p.format_help()
    assert "    a line kept as written" in text
    for listing in (p.format_usage(), text):  # the usage line a refusal prints, and the help
        assert listing.index("--reps") < listing.index("--out") < listing.index("--overwrite") \
            < listing.index("--allow-other-corpus"), listing
    assert "Writes data/results/x.csv; refuses to replace it without --overwrite." in text


def test_a_command_that_writes_no_file_gets_no_shared_options():
    p = bench_cli.command_parser("Measure and print.")
    bench_cli.parse_options(p, [])
    text = p.format_help()
    assert "--out" not in text and "--overwrite" not in text and "--allow-other-corpus" not in text


def test_the_output_check_suggests_the_commands_own_file_name_for_a_folder(tmp_path, capsys):
    p = bench_cli.command_parser("Doc.")
    args = bench_cli.parse_options(p, ["--out", str(tmp_path)], "kv_sweep.csv")
    with pytest.raises(SystemExit) as info:
        bench_cli.check_output_option(p, args)
    assert info.value.code == 2
    assert f"--out {tmp_path / 'kv_sweep.csv'}" in capsys.readouterr().err


@pytest.mark.parametrize("allow_other", [False, True])
def test_the_corpus_is_loaded_before_the_model(monkeypatch, capsys, allow_other):
    calls = []
    corpus = SimpleNamespace(describe=lambda: "1 file, shipped")
    monkeypatch.setattr(bench_cli, "load_corpus", lambda strict: calls.append(("corpus", strict)) or corpus)
    monkeypatch.setattr(bench_cli.smollm, "load_smollm", lambda: calls.append(("model",)) or ("model", "tok"))
    got = bench_cli.load_corpus_and_smollm(SimpleNamespace(allow_other_corpus=allow_other))
    assert got == (corpus, "model", "tok")
    assert calls == [("corpus", not allow_other), ("model",)]
    assert capsys.readouterr().out == "corpus: 1 file, shipped\n"


def test_a_corpus_refused_stops_before_the_model(monkeypatch):
    def mismatch(strict):
        raise ValueError("not the shipped corpus")

    def load_smollm():
        raise AssertionError("the model was loaded after the corpus was refused")

    monkeypatch.setattr(bench_cli, "load_corpus", mismatch)
    monkeypatch.setattr(bench_cli.smollm, "load_smollm", load_smollm)
    with pytest.raises(ValueError, match="not the shipped corpus"):
        bench_cli.load_corpus_and_smollm(SimpleNamespace(allow_other_corpus=False))


def test_the_table_right_aligns_titles_and_cells(capsys):
    rows = [{"impl": "gqa_lib", "ms": 1.234, "same": True}, {"impl": "sdpa", "ms": 10.5, "same": False}]
    bench_cli.print_table(rows, {"impl": 8, "median ms": 9, "same": 5},
                          lambda r: (r["impl"], f"{r['ms']:.2f}", r["same"]))
    assert capsys.readouterr().out == ("\n"
                                       "    impl median ms  same\n"
                                       " gqa_lib      1.23  True\n"
                                       "    sdpa     10.50 False\n")


def test_a_row_with_the_wrong_number_of_cells_is_refused(capsys):
    with pytest.raises(ValueError, match="2 cells for a row of 3 columns"):
        bench_cli.print_table([{"a": 1}], {"a": 3, "b": 3, "c": 3}, lambda r: (r["a"], 2))


def test_a_corpus_too_short_for_the_windows_stops_before_the_model(monkeypatch, capsys):
    """Issue 25: a window count the text cannot give is refused right after the corpus is read (milliseconds),
    not after the model's seconds of loading."""
    corpus = SimpleNamespace(val=range(1000), train=range(5000), describe=lambda: "short")

    def load_smollm():
        raise AssertionError("the model was loaded for windows the text cannot give")

    monkeypatch.setattr(bench_cli, "load_corpus", lambda strict: corpus)
    monkeypatch.setattr(bench_cli.smollm, "load_smollm", load_smollm)
    with pytest.raises(SystemExit) as info:
        bench_cli.load_corpus_and_smollm(SimpleNamespace(allow_other_corpus=True), needs=[
            ("validation", 4, 256, "--window or --eval-windows"), ("training", 1, 256, "--calib-windows")])
    assert info.value.code == 2
    assert capsys.readouterr().err == ("4 validation windows of 256 tokens need more tokens than the corpus's "
                                       "validation text has bytes (1,000); lower --window or --eval-windows\n")
    assert bench_cli.text_problem(corpus, [("validation", 3, 256, "x"), ("training", 19, 256, "y")]) is None


def _stopped(check, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        check()
    assert info.value.code == 2
    return capsys.readouterr().err


def test_checks_after_parsing_name_the_option_the_value_and_the_range(capsys):
    p = bench_cli.command_parser("Doc.")
    p.add_argument("--ranks", type=int, nargs="+", default=[1])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(["--ranks", "1", "400", "--seed", "-1"])
    err = _stopped(lambda: bench_cli.check_range(p, "--ranks", args.ranks, 1, 383, "rank 384 is the full rank"),
                   capsys)
    assert "--ranks 400 is not valid: must be a whole number, 1 or more and 383 or less (rank 384 is the full rank)" \
        in err
    assert "--seed -1 is not valid: must be a whole number, 0 or more" in _stopped(
        lambda: bench_cli.check_range(p, "--seed", args.seed, 0), capsys)
    bench_cli.check_range(p, "--ranks", [1, 383], 1, 383)  # the bounds themselves are valid


def test_a_value_given_twice_and_more_threads_than_cpus_are_refused(capsys, monkeypatch):
    p = bench_cli.command_parser("Doc.")
    p.add_argument("--seq-lens", type=int, nargs="+")
    p.add_argument("--kv-heads", type=int, nargs="+", default=None)
    args = p.parse_args(["--seq-lens", "8", "16", "8"])
    assert "--seq-lens 8 is given twice" in _stopped(lambda: bench_cli.refuse_repeats(p, args, ("seq_lens",)), capsys)
    bench_cli.refuse_repeats(p, args, ("kv_heads",))  # not given: nothing to refuse
    monkeypatch.setattr(bench_cli.os, "cpu_count", lambda: 2)
    assert "--threads 3 is more than the 2 CPUs this machine has" in _stopped(
        lambda: bench_cli.check_cpu_count(p, "--threads", [1, 3]), capsys)
    bench_cli.check_cpu_count(p, "--threads", 2)
