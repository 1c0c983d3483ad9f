"""The results writer: metadata header, atomic replace, and no silent overwrite of shipped results."""

import os

import pytest

from gqa_lib.experiments import results
from gqa_lib.experiments.results import ResultsExistError, read_metadata, read_results, write_results

ROWS = [{"impl": "gqa_lib", "median_ms": 1.5, "note": "has # and , inside"}, {"impl": "sdpa", "median_ms": 2.0,
                                                                              "note": ""}]


def test_round_trip_keeps_metadata_and_table(tmp_path):
    path = write_results(tmp_path / "r.csv", ROWS, {"command": "python x.py --flag", "torch": "2.13"})
    assert read_metadata(path) == {"command": "python x.py --flag", "torch": "2.13"}
    df = read_results(path)
    assert list(df.columns) == ["impl", "median_ms", "note"]
    assert df["median_ms"].tolist() == [1.5, 2.0]
    assert df["note"][0] == "has # and , inside"  # a '#' in a cell is data, not a comment


def test_written_file_is_readable_by_everyone(tmp_path):
    path = write_results(tmp_path / "r.csv", ROWS, {"run": "first"})
    assert path.stat().st_mode & 0o777 == 0o644


def test_refuses_to_replace_existing_results_without_overwrite(tmp_path):
    path = write_results(tmp_path / "r.csv", ROWS, {"run": "first"})
    with pytest.raises(ResultsExistError, match="--overwrite"):
        write_results(path, ROWS[:1], {"run": "second"})
    assert read_metadata(path) == {"run": "first"} and len(read_results(path)) == 2
    write_results(path, ROWS[:1], {"run": "second"}, overwrite=True)
    assert read_metadata(path) == {"run": "second"} and len(read_results(path)) == 1


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = write_results(tmp_path / "r.csv", ROWS, {"run": "first"})

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_results(path, ROWS[:1], {"run": "second"}, overwrite=True)
    assert read_metadata(path) == {"run": "first"}
    assert os.listdir(tmp_path) == ["r.csv"]  # the temporary file was removed


def test_bad_rows_and_metadata_fail_early(tmp_path):
    with pytest.raises(ValueError, match="rows is empty"):
        write_results(tmp_path / "r.csv", [], {})
    with pytest.raises(ValueError, match="row 1 has columns"):
        write_results(tmp_path / "r.csv", [{"a": 1}, {"b": 2}], {})
    with pytest.raises(ValueError, match="newlines"):
        write_results(tmp_path / "r.csv", ROWS, {"command": "two\nlines"})
    assert not (tmp_path / "r.csv").exists()


def test_missing_results_file_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="benchmarks/README.md"):
        read_results(tmp_path / "nope.csv")


def test_shipped_results_record_how_they_were_made():
    shipped = sorted(results.RESULTS_DIR.glob("*.csv"))
    assert shipped, "data/results/ holds no CSV"
    for path in shipped:
        meta = read_metadata(path)
        for key in ("command", "python", "torch", "date_utc"):
            assert meta.get(key), f"{path.name} lacks '# {key}:' in its header"


def test_benchmark_options_default_to_the_shipped_file_and_check_counts(tmp_path, capsys):
    import argparse

    p = argparse.ArgumentParser(prog="bench")
    p.add_argument("--reps", type=int, default=3)
    results.add_output_options(p, "x.csv")
    args = p.parse_args([])
    assert args.out == results.RESULTS_DIR / "x.csv" and args.overwrite is False
    results.require_at_least_one(p, args, ("reps",))  # 3 is fine
    with pytest.raises(SystemExit):
        results.require_at_least_one(p, p.parse_args(["--reps", "0"]), ("reps",))
    assert "--reps=0 must be at least 1" in capsys.readouterr().err


def test_output_blocked_only_for_an_existing_file_without_overwrite(tmp_path, capsys):
    path = tmp_path / "r.csv"
    assert not results.output_blocked(path, overwrite=False)
    path.write_text("old")
    assert results.output_blocked(path, overwrite=False)
    assert "pass --overwrite" in capsys.readouterr().err
    assert not results.output_blocked(path, overwrite=True)
    assert path.read_text() == "old"  # checking never touches the file


def test_run_metadata_helpers_name_the_model_corpus_and_end(tmp_path, capsys):
    import time
    from types import SimpleNamespace

    from gqa_lib.experiments import results
    from gqa_lib.models.smollm import MODEL_FILE_INFO

    meta = {**results.model_metadata(MODEL_FILE_INFO),
            **results.corpus_metadata(SimpleNamespace(python="3.11.7", sha256="ab", matches_shipped=True)),
            **results.end_metadata(time.perf_counter() - 2)}
    assert meta["model_sha256"] == MODEL_FILE_INFO["sha256"] and MODEL_FILE_INFO["file"] in meta["model_file"]
    assert meta["corpus_matches_shipped"] == "True" and meta["wall_seconds"] == "2"
    assert len(meta["loadavg_after"].split()) == 3
    args = SimpleNamespace(out=tmp_path / "r.csv", overwrite=False)
    assert results.save_and_report(args, [{"a": 1}], meta) == 0 and "wrote" in capsys.readouterr().out
    assert results.read_metadata(args.out)["model_sha256"] == MODEL_FILE_INFO["sha256"]
    assert results.save_and_report(args, [{"a": 2}], meta) == 1  # exists, no --overwrite: refused, file kept
