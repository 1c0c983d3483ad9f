"""Notebook 03's widget, headless: set controls, check the readout against the cache arithmetic."""

import random
import re
import statistics

import pytest
from widget_checks import not_offered, refused_not_clamped

from gqa_lib import auto_format_bytes, get_model, load_models
from gqa_lib.widgets import mqa_cache_comparison
from gqa_lib.widgets.mqa_cache import CUSTOM, cache_comparison, preset_names

pytestmark = pytest.mark.usefixtures("single_thread")  # as in the notebooks: see tests/conftest.py
MQA_MODELS = [s.name for s in load_models().values() if s.attention == "MQA"]


@pytest.fixture
def widget():
    return mqa_cache_comparison()


# Bytes of one cached vector of 64 and of 128 numbers, written out: int8/int4 add a 2-byte scale and a 2-byte
# minimum per group of 64 numbers (int4: two numbers a byte).
VECTOR_BYTES = {"fp32": {64: 256, 128: 512}, "fp16": {64: 128, 128: 256}, "bf16": {64: 128, 128: 256},
                "fp8": {64: 64, 128: 128}, "int8": {64: 64 + 4, 128: 128 + 2 * 4},
                "int4": {64: 32 + 4, 128: 64 + 2 * 4}}


def by_hand(n_heads, head_dim, n_layers, context, batch=1, bytes_per_number=2, bytes_per_vector=None):
    """Cache bytes written out: K and V, per KV head, a vector of head_dim numbers, per layer, token and sequence."""
    vector = head_dim * bytes_per_number if bytes_per_vector is None else bytes_per_vector
    mha = 2 * n_heads * vector * n_layers * context * batch
    mqa = 2 * 1 * vector * n_layers * context * batch
    return mha, mqa


def test_default_is_falcon_7b_with_71x_reduction(widget):
    v = widget.readout_values()
    assert v["preset"] == "Falcon-7B"
    assert (v["n_heads"], v["head_dim"], v["n_layers"], v["context"]) == (71, 64, 32, 2048)
    assert (v["mha_bytes"], v["mqa_bytes"]) == by_hand(71, 64, 32, 2048)
    assert v["reduction"] == 71
    assert v["mqa_bytes_per_token"] == 2 * 64 * 32 * 2  # 8,192 bytes a token in bf16


@pytest.mark.parametrize("name", MQA_MODELS)
def test_every_mqa_preset_matches_the_model_data(widget, name):
    widget.preset.value = name
    spec = get_model(name)
    v = widget.readout_values()
    assert v["mqa_bytes"] == spec.cache_bytes()  # the model's own (MQA) cache at its released context
    assert v["mha_bytes"] == spec.mha_cache_bytes()
    assert v["reduction"] == spec.n_heads == v["mha_bytes"] / v["mqa_bytes"]
    assert f"{spec.n_heads:g}x" in widget.readout.value


def test_mqa_presets_come_first_and_custom_last():
    names = preset_names()
    assert names[: len(MQA_MODELS)] == MQA_MODELS and names[-1] == CUSTOM
    assert {"Falcon-7B", "StarCoder 15.5B", "PaLM 540B", "Gemma 3 1B"} <= set(MQA_MODELS)


def test_moving_a_slider_leaves_the_preset(widget):
    widget.n_heads.value = 48
    assert widget.preset.value == CUSTOM
    v = widget.readout_values()
    assert v["reduction"] == 48 and (v["mha_bytes"], v["mqa_bytes"]) == by_hand(48, 64, 32, 2048)
    widget.preset.value = "PaLM 540B"
    assert (widget.n_heads.value, widget.head_dim.value, widget.n_layers.value, widget.context.value) == \
        (48, 256, 118, 2048)
    widget.batch.value = 4  # batch and dtype are not part of a model's shape: the preset stays
    assert widget.preset.value == "PaLM 540B"


def test_readout_shows_the_numbers_and_assumptions(widget):
    widget.preset.value = "StarCoder 15.5B"
    widget.dtype.value = "fp32"
    widget.batch.value = 2
    v = widget.readout_values()
    assert (v["mha_bytes"], v["mqa_bytes"]) == by_hand(48, 128, 40, 8192, batch=2, bytes_per_number=4)
    text = widget.readout.value
    for expected in (auto_format_bytes(v["mha_bytes"]), auto_format_bytes(v["mha_bytes"], binary=True),
                     auto_format_bytes(v["mqa_bytes"]), "48x", "8,192 tokens", "batch 2", "4 bytes per number (fp32)",
                     "GB = 10^9 bytes", "GiB = 2^30 bytes", "StarCoder 15.5B itself is MQA"):
        assert expected in text, expected


def test_gemma_note_says_layers_are_treated_as_global(widget):
    widget.preset.value = "Gemma 3 1B"
    assert "local" in widget.readout.value and "global" in widget.readout.value


def test_non_mqa_preset_says_what_the_real_model_is(widget):
    widget.preset.value = "Llama-3 8B"
    assert "Llama-3 8B itself is GQA with 8 KV heads" in widget.readout.value
    assert widget.readout_values()["reduction"] == 32


def test_picture_is_a_png_that_changes(widget):
    before = widget.image.value
    assert before[:8] == b"\x89PNG\r\n\x1a\n"
    widget.n_heads.value = 8
    assert widget.image.value != before


def test_random_changes_keep_the_arithmetic(widget):
    rng = random.Random(0)
    for _ in range(40):
        control = rng.choice([widget.preset, widget.n_heads, widget.head_dim, widget.n_layers, widget.context,
                              widget.batch, widget.dtype])
        if control is widget.n_heads or control is widget.n_layers or control is widget.batch:
            control.value = rng.randint(control.min, control.max)
        elif control is widget.context:
            control.value = rng.choice([value for _, value in control.options])
        else:
            control.value = rng.choice(list(control.options))
        v = widget.readout_values()
        assert v["mha_bytes"] == v["n_heads"] * v["mqa_bytes"]
        assert (v["mha_bytes"], v["mqa_bytes"]) == by_hand(v["n_heads"], v["head_dim"], v["n_layers"], v["context"],
                                                           v["batch"], bytes_per_vector=v["bytes_per_vector"])
        if v["head_dim"] in (64, 128):
            assert v["bytes_per_vector"] == VECTOR_BYTES[v["dtype"]][v["head_dim"]]


def test_int8_and_int4_count_a_scale_and_a_minimum_per_64_numbers(widget):
    widget.preset.value = "Falcon-7B"  # head_dim 64: one group per K or V vector
    for dtype, vector in (("int8", 64 + 2 + 2), ("int4", 32 + 2 + 2)):
        widget.dtype.value = dtype
        v = widget.readout_values()
        assert v["bytes_per_vector"] == vector and v["mqa_bytes_per_token"] == 2 * 32 * vector
        assert (v["mha_bytes"], v["mqa_bytes"]) == by_hand(71, 64, 32, 2048, bytes_per_vector=vector)
        assert (f"{dtype}: {'1 byte' if dtype == 'int8' else '0.5 bytes'} per number + one 2-byte scale and one "
                f"2-byte minimum per 64 channels ({vector} bytes per K or V vector of 64)") in widget.readout.value


def test_update_latency(widget):
    times = []
    for h in (8, 16, 32, 48, 64, 96, 128, 12, 71):
        widget.n_heads.value = h
        times.append(widget.last_update_s)
    median_ms = statistics.median(times) * 1000
    print(f"mqa_cache_comparison: median update {median_ms:.0f} ms over {len(times)} changes (shared CPU: noisy)")
    assert widget.readout_values()["n_heads"] == 71  # the last change was applied


def test_bad_preset_lists_valid_names():
    with pytest.raises(ValueError, match=r"preset='Falcon-8B' is not known \(valid: .*Falcon-7B, "):
        mqa_cache_comparison("Falcon-8B")


@pytest.mark.parametrize("kwargs, error, message", [
    ({"n_heads": 0}, ValueError, "n_heads=0 must be a positive integer"),
    ({"n_heads": 2.5}, TypeError, "n_heads=2.5 must be a positive integer"),
    ({"dtype": "fp64"}, ValueError, "dtype='fp64' is not known"),
    ({"context": 0}, ValueError, "context=0 must be a positive integer"),
])
def test_cache_comparison_bad_input(kwargs, error, message):
    args = {"n_heads": 8, "head_dim": 64, "n_layers": 2, "context": 16} | kwargs
    with pytest.raises(error, match=message):
        cache_comparison(**args)


@pytest.mark.parametrize("name", ["Llama-3 8B", "Qwen2.5-7B", "SmolLM2-135M"])
def test_a_gqa_preset_draws_the_model_as_released_between_mha_and_mqa(widget, name):
    spec = get_model(name)
    before = widget.image.value
    widget.preset.value = name
    v = widget.readout_values()
    gqa = v["released_gqa"]
    assert gqa["n_kv_heads"] == spec.n_kv_heads and gqa["bytes"] == spec.cache_bytes()
    assert v["mqa_bytes"] < gqa["bytes"] < v["mha_bytes"]
    text = widget.readout.value
    assert f"GQA as released ({spec.n_kv_heads} K/V heads a layer): <b>{auto_format_bytes(gqa['bytes'])}</b>" in text
    assert f"{spec.n_heads // spec.n_kv_heads}x smaller than MHA" in text
    assert widget.image.value != before
    widget.n_layers.value = spec.n_layers + 1  # no longer the released model: its bar goes
    assert widget.preset.value == CUSTOM and widget.readout_values()["released_gqa"] is None
    assert "GQA as released" not in widget.readout.value


def test_mqa_and_mha_presets_draw_no_gqa_bar(widget):
    for name in ("Falcon-7B", "Llama-2 7B"):
        widget.preset.value = name
        assert widget.readout_values()["released_gqa"] is None and "GQA as released" not in widget.readout.value


def test_one_query_head_says_mha_and_mqa_are_the_same_shape(widget):
    widget.n_heads.value = 1
    text = widget.readout.value
    assert "Reduction: none (1x): with one query head, MHA and MQA are the same shape" in text
    assert "1x smaller" not in text and "1 K/V heads" not in text
    assert widget.readout_values()["mha_bytes"] == widget.readout_values()["mqa_bytes"]


@pytest.mark.parametrize("control,value,message", not_offered(
    sliders={"n_heads": (1, 128), "n_layers": (1, 128), "batch": (1, 64)},
    choices={"head_dim": (100, "32, 64, 80, 96, 128, 160, 192, 256"), "preset": ("(custom)", ".*custom"),
             "dtype": ("fp64", ".*bf16.*")}))
def test_a_control_set_outside_what_it_offers_is_refused_not_clamped(widget, control, value, message):
    refused_not_clamped(widget, control, value, message)


# A count of one followed by a plural noun ("1 layers", "1 KV heads", "1 bytes"), once the HTML tags are gone.
ONE_AND_A_PLURAL = re.compile(r"(?<![\w.,^])1 (?:[A-Za-z/]+ )?(?:bytes|layers|heads|tokens|groups|numbers|sequences)\b")


@pytest.mark.parametrize("dtype", ["fp8", "int8"])  # the formats that store 1 byte a number
def test_every_control_at_one_reads_in_the_singular(widget, dtype):
    """Query heads, layers and batch at 1 (the controls that offer 1) and 1 byte a number: the readout and the
    picture's title say '1 query head', '1 layer', '1 byte', never '1 <plural>'."""
    widget.n_heads.value, widget.n_layers.value, widget.batch.value, widget.dtype.value = 1, 1, 1, dtype
    v = widget.readout_values()
    assert (v["n_heads"], v["n_layers"], v["batch"], v["dtype"]) == (1, 1, 1, dtype)
    text, title = re.sub(r"<[^>]+>", "", widget.readout.value), widget.title.get_text()
    for words in (text, title):
        assert not ONE_AND_A_PLURAL.search(words), ONE_AND_A_PLURAL.search(words).group(0)
    assert "MHA (1 K/V head a layer)" in text and "1 byte per number" in text
    assert "1 query head, 1 layer, head dim 64" in title


def test_a_gqa_preset_with_released_shape_names_its_kv_heads_once(widget):
    widget.preset.value = "Llama-3 8B"
    title = widget.title.get_text()
    assert "KV heads, MHA -> GQA as released -> MQA: 32 -> 8 -> 1 (4x, then 32x smaller than MHA)" in title
    assert not ONE_AND_A_PLURAL.search(title)


@pytest.mark.parametrize("name, layers", [("Gemma 3 1B", "22 of its 26 layers"), ("Mistral 7B", "every layer")])
def test_a_preset_with_a_window_gives_its_cache_as_built(widget, name, layers):
    spec = get_model(name)
    widget.preset.value = name
    built = widget.readout_values()["as_built"]
    assert built["bytes"] == spec.windowed_cache_bytes() < spec.cache_bytes()
    text = widget.readout.value
    window = f"{spec.sliding_window.window:,}"
    assert (f"As built, {name} keeps only the last {window} tokens in {layers} (sliding window): its own cache "
            f"({spec.n_kv_heads} K/V head{'s' if spec.n_kv_heads > 1 else ''} a layer) is "
            f"<b>{auto_format_bytes(built['bytes'])}</b>") in text
    widget.batch.value = 2  # batch and dtype are not the shape: the preset and its window stay
    assert widget.readout_values()["as_built"]["bytes"] == spec.windowed_cache_bytes(batch=2)
    widget.n_layers.value = spec.n_layers + 1  # another shape: no longer the model, no as-built line
    assert widget.readout_values()["as_built"] is None and "As built" not in widget.readout.value


def test_gemma_as_built_is_145_75_mb_at_its_context(widget):
    """Gemma 3 1B, bf16, 32,768 tokens: 4 global layers keep every token, 22 local layers 512, 1,024 bytes a token
    a layer (one K and one V of 256 numbers)."""
    widget.preset.value = "Gemma 3 1B"
    assert widget.readout_values()["as_built"]["bytes"] == (4 * 32768 + 22 * 512) * 1024 == 145_752_064
    assert "<b>145.75 MB</b>" in widget.readout.value
