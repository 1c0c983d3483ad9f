"""benchmarks/convert_smollm.py: every conversion and the control are uptrained alike, and the table says so.

The command's run is tested end to end on a small random Llama with SmolLM2's head layout and a byte
"tokenizer", so it takes seconds; the real model's run is the shipped CSV (benchmarks/README.md).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from gqa_lib.experiments.smollm_conversion import recovered_fraction

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def command():
    spec = importlib.util.spec_from_file_location("bench_convert_smollm_run", ROOT / "benchmarks" / "convert_smollm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("argv", "needles"), [
    (["--random-draws", "0"], ["argument --random-draws", "0", "1 or more"]),
    (["--random-draws", "two"], ["argument --random-draws", "'two'", "whole number"]),
    (["--eval-windows", "1"], ["--eval-windows=1", "at least 2", "bootstrap"]),
    (["--eval-every", "-1"], ["argument --eval-every", "-1", "1 or more"]),
])
def test_new_options_are_refused_before_any_work(command, monkeypatch, capsys, tmp_path, argv, needles):
    def refuse(*args, **kwargs):
        raise AssertionError("work started before the bad option was refused")

    monkeypatch.setattr(command, "load_corpus", refuse)
    with pytest.raises(SystemExit) as info:
        command.main([*argv, "--out", str(tmp_path / "r.csv")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert all(n in err for n in needles), err


def test_defaults_score_at_least_16k_held_out_tokens(command, tmp_path):
    args = command.parse_args(["--out", str(tmp_path / "r.csv")])
    assert args.eval_windows * (args.window - 1) >= 16_000
    assert (args.random_draws, args.uptrain_steps, args.batch, args.window) == (3, 30, 2, 256)
    assert command.uptrain_tokens(args) == 15_360


class ByteTokenizer:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [b % 64 for b in text.encode()]}


@pytest.fixture(scope="module")
def small_run(command, tmp_path_factory):
    """run() on a small Llama (9 query heads, 3 KV heads), recording every uptraining call."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=36, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=9, num_key_value_heads=3, head_dim=4, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    corpus = SimpleNamespace(val=torch.randint(97, 123, (400,), generator=g, dtype=torch.uint8),
                             train=torch.randint(97, 123, (5000,), generator=g, dtype=torch.uint8))
    out = str(tmp_path_factory.mktemp("c") / "c.csv")
    args = command.parse_args(["--eval-windows", "4", "--window", "8", "--uptrain-steps", "2", "--random-draws", "2",
                               "--eval-every", "1", "--lr", "1e-2", "--out", out])
    calls = []
    real = command.uptrain

    def recording(m, train, steps, batch, lr, seed=0, progress=None):
        calls.append({"train": train, "steps": steps, "batch": batch, "lr": lr, "seed": seed,
                      "kv_heads": m.config.num_key_value_heads})
        return real(m, train, steps, batch, lr, seed=seed, progress=progress)

    command.uptrain = recording
    try:
        rows = command.run(args, model, ByteTokenizer(), corpus)
    finally:
        command.uptrain = real
    return args, rows, calls


def test_every_model_is_uptrained_with_the_same_steps_rate_and_batches(small_run):
    _, _, calls = small_run
    assert [c["kv_heads"] for c in calls] == [3, 1, 1, 1, 1]  # control, mean, first, random draws 0 and 1
    first = calls[0]
    for c in calls:
        assert c["train"] is first["train"]  # the same windows, drawn by the same seeded generator
        assert (c["steps"], c["batch"], c["lr"], c["seed"]) == (2, 2, 1e-2, 0)


def test_the_table_has_every_condition_with_its_budget(small_run):
    args, rows, _ = small_run
    by_name = {(r["condition"], r["uptrain_steps"]): r for r in rows}
    expected = ["original (3 KV heads)", "expanded to MHA (9 KV heads)", "MQA by mean", "MQA by first",
                "MQA by random, draw 0", "MQA by random, draw 1"]
    for name in expected:
        assert by_name[(name, 0)]["uptrain_tokens"] == 0
    for name in expected[2:]:
        assert by_name[(f"{name}, uptrained", 2)]["uptrain_tokens"] == 2 * 2 * 8
    assert ("MQA by mean, uptrained", 1) in by_name and ("original, uptrained the same way (control)", 1) in by_name
    assert by_name[("MQA by random, draw 1", 0)]["draw"] == 1 and by_name[("MQA by mean", 0)]["draw"] == ""
    assert by_name[("expanded to MHA (9 KV heads)", 0)]["max_abs_logit_diff"] < 1e-5
    assert all(r["eval_tokens"] == 4 * 7 for r in rows)
    for r in rows:
        assert r["ci_low"] <= r["val_nll"] <= r["ci_high"] and r["se"] >= 0


def test_recovered_fractions_subtract_the_control_at_the_same_step(small_run):
    _, rows, _ = small_run
    by_name = {(r["condition"], r["uptrain_steps"]): r for r in rows}
    original = by_name[("original (3 KV heads)", 0)]["val_nll"]
    checked = 0
    for (name, steps), r in by_name.items():
        if steps == 0 or r["method"] == "none":
            assert r["recovered_fraction"] != r["recovered_fraction"]  # NaN: nothing to recover
            continue
        before = by_name[(name.removesuffix(", uptrained"), 0)]["val_nll"]
        control = by_name[("original, uptrained the same way (control)", steps)]["val_nll"]
        tol = 1e-4 + 4e-5 / abs(before - original)  # the table's losses are rounded to 5 decimals
        assert r["recovered_fraction"] == pytest.approx(recovered_fraction(before, r["val_nll"], original, control),
                                                        abs=tol)
        checked += 1
    assert checked == 5  # mean at steps 1 and 2, first, two random draws


def test_summary_states_the_budget_against_the_papers(command, small_run, capsys):
    args, rows, _ = small_run
    command.print_summary(rows, args)
    out = capsys.readouterr().out
    assert "2 steps x 2 x 8 tokens = 32 tokens per model" in out
    assert "is 100,000,000,000" in out and "(1 / 3,125,000,000)" in out
    assert "after uptraining, loss (nats per token), best first:" in out and "mean of 2 draws" in out
