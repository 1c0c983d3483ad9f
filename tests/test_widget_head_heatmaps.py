"""Notebook 02's widget, headless, on the real SmolLM2: the maps and the diversity it shows are the model's."""

import statistics

import pytest
import torch
from widget_checks import not_offered, one_token_is_explained, paste_long_pages, refused_not_clamped

from gqa_lib.core.diversity import head_diversity
from gqa_lib.models import smollm
from gqa_lib.widgets import head_heatmap_explorer
from gqa_lib.widgets.head_heatmaps import DEFAULT_TEXT, MAX_TOKENS, all_layer_maps

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: see tests/conftest.py
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def widget():
    return head_heatmap_explorer()  # loads SmolLM2 once for the module (about 20 s)


def test_maps_are_the_models_own(widget):
    tokens, weights = all_layer_maps(DEFAULT_TEXT)
    assert weights.shape == (30, 9, len(tokens), len(tokens))
    for layer in (0, 17, 29):
        cap = smollm.capture(DEFAULT_TEXT, layer)
        assert tokens == cap.tokens
        torch.testing.assert_close(weights[layer], cap.weights)


@pytest.mark.parametrize("layer", [3, 18])
def test_readout_diversity_is_gqa_lib_measure(widget, layer):
    widget.layer.value = layer
    expected = head_diversity(smollm.capture(widget.text.value, layer).weights)
    v = widget.readout_values()
    assert v["layer"] == layer and v["diversity"] == pytest.approx(expected, abs=1e-9)
    assert f"Head diversity of layer {layer}: <b>{expected:.3f}</b>" in widget.readout.value


def test_head_slider_names_its_kv_head(widget):
    widget.all_heads.value = False
    widget.head.value = 7
    v = widget.readout_values()
    assert v["head"] == 7 and v["kv_head"] == 2
    assert "query head 7 reads KV head 2, shared by query heads 6, 7, 8" in widget.readout.value


def test_all_heads_toggle_disables_head_slider_and_redraws(widget):
    widget.all_heads.value = False
    one = widget.image.value
    widget.all_heads.value = True
    assert widget.head.disabled and widget.image.value != one and widget.image.value[:8] == PNG
    widget.all_heads.value = False
    assert not widget.head.disabled


def test_typing_a_sentence_redraws_for_its_tokens(widget):
    text = "The keys to the cabinet are on the table."
    widget.text.value = text
    v = widget.readout_values()
    assert v["n_tokens"] == len(smollm.capture(text, 0).tokens)
    assert f"{v['n_tokens']} tokens" in widget.readout.value
    widget.text.value = DEFAULT_TEXT


def test_long_text_is_cut_to_the_first_tokens(widget):
    text = " ".join(["word"] * 60)
    tokens, weights = all_layer_maps(text)
    assert len(tokens) == MAX_TOKENS and weights.shape[-1] == MAX_TOKENS
    full = smollm.capture(text, 5).weights
    torch.testing.assert_close(weights[5], full[:, :MAX_TOKENS, :MAX_TOKENS])  # causal: the corner is exact
    widget.text.value = text
    assert f"the text has 60 tokens; only its first {MAX_TOKENS} are analysed and shown" in widget.readout.value
    assert widget.readout_values()["n_tokens_in_text"] == 60
    widget.text.value = DEFAULT_TEXT


def test_empty_text_says_why_and_keeps_the_picture(widget):
    before = widget.image.value
    widget.text.value = "   "
    assert "Cannot draw" in widget.readout.value and "text='   ' must be a non-empty string" in widget.readout.value
    assert widget.image.value == before
    widget.text.value = DEFAULT_TEXT
    assert "Head diversity" in widget.readout.value


@pytest.mark.parametrize("kwargs, message", [
    ({"layer": 30}, r"layer=30 must be an integer in 0\.\.29"),
    ({"layer": -1}, r"layer=-1 must be an integer in 0\.\.29"),
    ({"head": 9}, r"head=9 must be an integer in 0\.\.8"),
    ({"head": 1.0}, r"head=1\.0 must be an integer in 0\.\.8"),
    ({"text": ""}, r"text='' must be a non-empty string"),
])
def test_builder_bad_input_names_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        head_heatmap_explorer(**kwargs)


def test_sliders_cover_every_layer_and_head(widget):
    assert (widget.layer.min, widget.layer.max, widget.head.min, widget.head.max) == (0, 29, 0, 8)


def test_update_latency(widget):
    """Median time from a control change to the finished picture, after the model is loaded."""
    widget.text.value = DEFAULT_TEXT
    widget.all_heads.value = False
    results = {}
    for name, control, values in (("head", widget.head, [1, 2, 3, 4, 5, 6, 7, 8, 0]),
                                  ("layer", widget.layer, [1, 5, 9, 13, 17, 21, 25, 29, 0])):
        times = []
        for value in values:
            control.value = value
            times.append(widget.last_update_s)
        results[name] = statistics.median(times) * 1000
    widget.all_heads.value = True
    times = []
    for value in [2, 4, 6, 8, 10]:
        widget.layer.value = value
        times.append(widget.last_update_s)
    results["layer, all heads"] = statistics.median(times) * 1000
    widget.all_heads.value = False
    print("head_heatmap_explorer median update (ms, shared CPU: noisy): "
          + ", ".join(f"{k} {v:.0f}" for k, v in results.items()))
    assert all(t > 0 for t in results.values())  # each change was timed; speed is reported, not asserted


def test_one_token_says_two_are_needed_instead_of_nan(widget):
    one_token_is_explained(widget, "needs at least two tokens (this text has 1)", "diversity")
    widget.text.value = DEFAULT_TEXT
    assert widget.readout_values()["diversity"] > 0


def test_a_pasted_page_is_cut_before_the_model_and_memory_stays_bounded(widget, monkeypatch):
    """Memory at the cap: the model sees at most MAX_TOKENS tokens, the widget keeps at most 4 texts' maps
    (1.1 MB each: 30 layers x 9 heads x 32 x 32 float32), and the process's peak resident memory grows by
    less than 200 MB while a 1,500-token text is shown (uncapped, that text would need a few GB)."""
    paste_long_pages(widget, monkeypatch, MAX_TOKENS, max_growth_mb=200)
    assert widget.kept_bytes() <= 4 * 30 * 9 * MAX_TOKENS * MAX_TOKENS * 4
    widget.text.value = DEFAULT_TEXT


def test_sliders_refuse_values_outside_their_range(widget):
    for control, value, message in not_offered(sliders={"layer": (0, 29), "head": (0, 8)}):
        refused_not_clamped(widget, control, value, message)


def test_all_heads_view_describes_every_head_not_head_0(widget):
    widget.text.value, widget.layer.value = DEFAULT_TEXT, 0
    widget.all_heads.value = False
    widget.head.value = 0
    assert "query head 0 reads KV head 0, shared by query heads 0, 1, 2" in widget.readout.value
    widget.all_heads.value = True
    text = widget.readout.value
    assert "Layer 0, all 9 query heads" in text and "query head 0" not in text
    assert ("query heads 0, 1, 2 read KV head 0; query heads 3, 4, 5 read KV head 1; query heads 6, 7, 8 read "
            "KV head 2") in text
    widget.all_heads.value = False
