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


# ---- results.load: one results file as rows, header and ceilings -------------------------------------

def _shipped():
    return sorted(results.RESULTS_DIR.glob("*.csv"))


def test_load_of_a_missing_name_lists_the_files_that_exist(tmp_path):
    write_results(tmp_path / "kv_sweep.csv", ROWS, {"command": "a"})
    write_results(tmp_path / "decode_attention_cpu.csv", ROWS, {"command": "b"})
    with pytest.raises(FileNotFoundError, match=r"no results file decode_smollm\.csv .*there are: "
                                                r"decode_attention_cpu, kv_sweep \(the commands"):
        results.load("decode_smollm", folder=tmp_path)
    with pytest.raises(FileNotFoundError, match="there are: none"):
        results.load("kv_sweep", folder=tmp_path / "empty")
    with pytest.raises(FileNotFoundError) as shipped:
        results.load("no_such_results")
    assert all(path.stem in str(shipped.value) for path in _shipped())


def test_load_takes_a_stem_or_a_file_name_but_not_a_path():
    by_stem, by_name = results.load("decode_attention_cpu"), results.load("decode_attention_cpu.csv")
    assert by_stem.path == by_name.path == results.RESULTS_DIR / "decode_attention_cpu.csv"
    assert by_stem.name == "decode_attention_cpu"
    with pytest.raises(ValueError, match="is a path"):
        results.load("data/results/decode_attention_cpu")


@pytest.mark.parametrize("path", _shipped(), ids=lambda p: p.stem)
def test_loaded_rows_and_header_equal_read_results_and_read_metadata(path):
    import pandas as pd

    loaded = results.load(path.stem)
    pd.testing.assert_frame_equal(loaded.rows, read_results(path))
    assert loaded.meta == read_metadata(path)
    assert len(loaded.records()) == len(loaded.rows) > 0
    pd.testing.assert_frame_equal(pd.DataFrame(loaded.records()), read_results(path))


def test_ceilings_are_numbers_equal_to_the_header():
    attention, smollm = results.load("decode_attention_cpu"), results.load("decode_smollm_cpu")
    for loaded in (attention, smollm):
        meta = read_metadata(loaded.path)
        expected = {k: float(v) for k, v in meta.items() if k.startswith(("read_bandwidth_", "gemm_peak_",
                                                                           "decode_gemm_GFLOPs_",
                                                                           "kernel_in_cache_GFLOPs_"))}
        assert expected and loaded.ceilings == expected
        assert all(type(v) is float for v in loaded.ceilings.values())
    meta = read_metadata(attention.path)
    assert attention.kernel_in_cache_GFLOPs("bf16", 1, 1) == float(meta["kernel_in_cache_GFLOPs_bf16_1rows_1t"])
    assert attention.read_GBps(1) == float(meta["read_bandwidth_GBps_1t"]) == attention.ceiling(
        "read_bandwidth_GBps_1t")
    assert attention.read_GBps(1) > attention.ceiling("read_bandwidth_sum_GBps_1t")  # two streams beat one
    assert attention.gemm_GFLOPs("bf16", 1) == float(meta["gemm_peak_GFLOPs_bf16_1t"])
    assert attention.gemm_GFLOPs("fp32", 1, rows=32) == float(meta["decode_gemm_GFLOPs_fp32_32rows_1t"])
    assert smollm.read_GBps() == float(read_metadata(smollm.path)["read_bandwidth_GBps"])
    assert results.load("kv_sweep").ceilings == {}  # a training run measures no ceiling


def test_a_missing_or_unreadable_ceiling_fails_naming_what_there_is(tmp_path):
    attention = results.load("decode_attention_cpu")
    with pytest.raises(KeyError, match="has no ceiling 'read_bandwidth_GBps_4t'; its ceilings: read_bandwidth_GBps_1t"):
        attention.read_GBps(4)
    with pytest.raises(KeyError, match="has no ceiling 'gemm_shape'"):  # in the header, but not a ceiling
        attention.ceiling("gemm_shape")
    with pytest.raises(KeyError, match="its ceilings: none"):
        results.load("kv_sweep").ceiling("read_bandwidth_GBps")
    write_results(tmp_path / "odd.csv", ROWS, {"command": "x", "read_bandwidth_GBps": "fast"})
    with pytest.raises(ValueError, match="read_bandwidth_GBps='fast' is not a finite number"):
        results.load("odd", folder=tmp_path).read_GBps()


def test_records_filter_by_column_and_name_the_columns_on_a_typo():
    attention = results.load("decode_attention_cpu")
    part = attention.records(n_kv_heads=8, dtype="bf16")
    table = read_results(attention.path)
    assert len(part) == ((table.n_kv_heads == 8) & (table.dtype == "bf16")).sum() > 0
    assert {(r["n_kv_heads"], r["dtype"]) for r in part} == {(8, "bf16")}
    with pytest.raises(KeyError, match="has no column 'thread'; its columns: impl, n_heads"):
        attention.records(thread=2)


def test_describe_prints_one_line_of_provenance_then_the_keys_asked_for(capsys):
    sweep = results.load("kv_sweep")
    meta = read_metadata(sweep.path)
    sweep.describe()
    lines = capsys.readouterr().out.splitlines()
    assert lines == [sweep.provenance]
    assert lines[0].startswith(f"kv_sweep.csv ({len(sweep.rows)} rows): {meta['command']}; ")
    assert meta["processor"] in lines[0] and f"{meta['wall_seconds']} s" in lines[0]
    sweep.describe(["corpus_sha256"])
    assert capsys.readouterr().out.splitlines()[1:] == [f"  corpus_sha256: {meta['corpus_sha256']}"]
    with pytest.raises(KeyError, match="no header key 'corpus_hash'; its keys: what, command"):
        sweep.describe(["corpus_hash"])
    assert capsys.readouterr().out == ""  # nothing printed before the error
