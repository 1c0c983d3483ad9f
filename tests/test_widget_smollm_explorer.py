"""Notebook 05's widget, driven headlessly: set the controls' values, read what the reader would see."""

import pytest
from widget_checks import not_offered, one_token_is_explained, paste_long_pages, refused_not_clamped

from gqa_lib import widgets
from gqa_lib.core.diversity import within_across_diversity
from gqa_lib.models import smollm
from gqa_lib.widgets.smollm_explorer import MAX_TOKENS

SENTENCE = smollm.PROMPTS["sentences"]["store"]


@pytest.fixture(scope="module")
def explorer():
    return widgets.smollm_group_explorer()


def test_controls_offer_only_real_layers_and_kv_heads(explorer):
    assert (explorer.layer.min, explorer.layer.max) == (0, 29)
    assert [value for _, value in explorer.group.options] == [0, 1, 2]  # SmolLM2 has 3 KV heads = groups
    assert "query heads 3-5" in explorer.group.options[1][0]


def test_first_view_shows_a_picture_and_the_readout(explorer):
    assert bytes(explorer.image.value).startswith(b"\x89PNG")
    assert "Layer 3" in explorer.readout.value and "identical" in explorer.readout.value


def test_readout_numbers_come_from_the_series_diversity_measure(explorer):
    explorer.text.value = SENTENCE
    explorer.layer.value = 11
    explorer.group.value = 2
    v = explorer.readout_values()
    assert v["layer"] == 11 and v["group"] == 2 and v["query_heads"] == [6, 7, 8] and v["n_tokens"] == 20
    within, across = within_across_diversity(smollm.capture(SENTENCE, 11).weights, 3)
    assert v["within"] == pytest.approx(within, abs=1e-12) and v["across"] == pytest.approx(across, abs=1e-12)
    assert f"{within:.3f}" in explorer.readout.value and f"{across:.3f}" in explorer.readout.value
    assert 0 < v["group_within"] < 1


def test_query_heads_of_a_group_read_identical_k_and_v_in_every_view(explorer):
    for layer in (0, 15, 29):
        for group in (0, 1, 2):
            explorer.layer.value, explorer.group.value = layer, group
            assert explorer.readout_values()["kv_identical_in_group"]


def test_changing_the_layer_redraws_quickly(explorer):
    explorer.text.value = SENTENCE
    before = explorer.image.value
    explorer.layer.value = 4 if explorer.layer.value != 4 else 5
    assert bytes(explorer.image.value) != bytes(before)
    assert f"Layer {explorer.layer.value}," in explorer.readout.value
    assert explorer.last_update_s < 2.0  # about 0.1 s on a laptop; generous for a shared machine


def test_empty_text_is_explained_not_raised_and_a_good_text_recovers(explorer):
    explorer.text.value = "   "
    assert "Cannot draw" in explorer.readout.value and "non-empty string" in explorer.readout.value
    explorer.text.value = "Keys and values are shared."
    assert "Cannot draw" not in explorer.readout.value


def test_long_text_is_cut_to_the_first_tokens(explorer):
    explorer.text.value = " ".join(["word"] * 50)
    assert explorer.readout_values()["n_tokens"] == MAX_TOKENS
    assert f"the text has 50 tokens; only its first {MAX_TOKENS} are analysed and shown" in explorer.readout.value


@pytest.mark.parametrize("kwargs, message", [({"layer": 30}, "layer=30"), ({"group": 3}, "group=3"),
                                             ({"text": ""}, "non-empty")])
def test_builder_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        widgets.smollm_group_explorer(**kwargs)


def test_one_token_says_two_are_needed_instead_of_nan(explorer):
    one_token_is_explained(explorer, "Head diversity needs at least two tokens (this text has 1 token)", "within")
    explorer.text.value = SENTENCE


def test_a_pasted_page_is_cut_before_the_model_and_memory_stays_bounded(explorer, monkeypatch):
    """Memory at the cap: the model sees at most MAX_TOKENS tokens; the widget keeps at most 4 texts'
    captures without the layers' inputs and outputs (4.8 MB each at the cap: 30 layers of q, k, v and
    weights in float32) and their distance matrices, and the process's peak resident memory grows by less
    than 200 MB while 1,500-token texts are shown (uncapped, one such text needs a few GB)."""
    paste_long_pages(explorer, monkeypatch, MAX_TOKENS, max_growth_mb=200)
    per_layer = (9 * MAX_TOKENS * 64 + 2 * 3 * MAX_TOKENS * 64 + 9 * MAX_TOKENS * MAX_TOKENS) * 4 + 9 * 9 * 8
    assert explorer.kept_bytes() <= 4 * 30 * per_layer
    explorer.text.value = SENTENCE


def test_controls_refuse_values_they_do_not_offer(explorer):
    for control, value, message in not_offered(sliders={"layer": (0, 29)}, choices={"group": (3, "0, 1, 2")}):
        refused_not_clamped(explorer, control, value, message)


@pytest.mark.parametrize("text", ["Hello", "Hello there", " ".join(["word"] * (MAX_TOKENS + 1))],
                         ids=["1 token", "2 tokens", "past the cap"])
def test_every_control_at_its_ends_reads_as_sentences(explorer, text):
    """Each control at its first and last value, with the shortest texts and one just past the cap: the readout
    and the buttons read as sentences ('1 token', never '1 tokens'), with no nan or a ratio of nothing."""
    explorer.text.value = text
    for layer in (explorer.layer.min, explorer.layer.max):
        for group in (0, len(explorer.group.options) - 1):
            explorer.layer.value, explorer.group.value = layer, group
            shown = explorer.readout.value + " ".join(label for label, _ in explorer.group.options)
            for wrong in ("1 tokens", "1 layers", "1 KV heads", "1 query heads", "nan", "inf"):
                assert wrong not in shown, (text, layer, group, wrong, shown)
            assert f"Layer {layer}, " in shown
    explorer.text.value = SENTENCE
