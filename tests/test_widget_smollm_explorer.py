"""Notebook 05's widget, driven headlessly: set the controls' values, read what the reader would see."""

import pytest

from gqa_lib import smollm, widgets
from gqa_lib.diversity import within_across_diversity
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
    assert f"first {MAX_TOKENS} of 50" in explorer.readout.value


@pytest.mark.parametrize("kwargs, message", [({"layer": 30}, "layer=30"), ({"group": 3}, "group=3"),
                                             ({"text": ""}, "non-empty")])
def test_builder_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        widgets.smollm_group_explorer(**kwargs)
