"""Notebook 04's group explorer, driven headlessly: its numbers are the cache arithmetic, its KV choices
divisors after any sequence of changes, and its K/V picture shows copies inside a group and nothing else."""

import random
import re
import statistics
import time

import pytest
import torch
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from traitlets import TraitError
from widget_checks import module_widget, not_offered, refused_not_clamped

from gqa_lib import widgets
from gqa_lib.core.cache_math import kv_cache_bytes
from gqa_lib.core.checks import closest_divisor, divisors
from gqa_lib.models.catalog import get_model
from gqa_lib.pictures.group_map import max_abs_diff_matrix, per_query_head
from gqa_lib.widgets.group_shapes import CONTEXTS, DIFF_LIMIT, HEAD_DIMS, KV_LIMIT, MAX_HEADS, random_kv

widget = module_widget(widgets.group_explorer)


def test_defaults_are_llama3_8b_and_match_data(widget):
    spec = get_model("Llama-3 8B")
    v = widget.readout_values()
    assert (v["n_heads"], v["n_kv_heads"], v["head_dim"], v["n_layers"], v["context"]) == (32, 8, 128, 32, 8192)
    assert v["cache_bytes"] == spec.cache_bytes() == kv_cache_bytes(32, 8, 128, 8192, 1, 2) == 1_073_741_824
    assert v["mha_cache_bytes"] == spec.mha_cache_bytes()
    assert (v["reduction"], v["group_size"], v["kind"]) == (4, 4, "GQA")
    text = widget.readout.value
    assert "1.07 GB" in text and "1.00 GiB" in text and "4x smaller" in text and "4.29 GB" in text


def test_readout_equals_the_arithmetic_after_setting_controls(widget):
    widget.n_heads.value = 48
    widget.n_kv_heads.value = 6
    widget.head_dim.value = 64
    widget.context.value = 32768
    v = widget.readout_values()
    assert v["cache_bytes"] == kv_cache_bytes(32, 6, 64, 32768, 1, 2)
    assert v["mha_cache_bytes"] == kv_cache_bytes(32, 48, 64, 32768, 1, 2)
    assert (v["reduction"], v["group_size"], v["kind"]) == (8, 8, "GQA")
    formula = "2 (K and V) x 32 layers x 6 KV heads x head dim 64 x 32,768 tokens x batch 1 x 2 bytes"
    assert formula in widget.readout.value
    widget.n_kv_heads.value = 1
    assert widget.readout_values()["kind"] == "MQA" and "48x smaller" in widget.readout.value
    widget.n_kv_heads.value = 48
    assert widget.readout_values()["kind"] == "MHA" and "this is MHA itself: the same size (1x" in widget.readout.value
    assert "1x smaller" not in widget.readout.value


def test_other_layer_counts_and_dtypes_enter_the_arithmetic():
    w = widgets.group_explorer(n_heads=8, n_kv_heads=2, head_dim=16, context=1024, n_layers=3, batch=2, dtype="fp32")
    assert w.readout_values()["cache_bytes"] == kv_cache_bytes(3, 2, 16, 1024, 2, 4) == 3 * 2 * 2 * 16 * 1024 * 2 * 4


@hsettings(max_examples=8)
@given(st.lists(st.tuples(st.sampled_from(["n_heads", "n_kv_heads", "head_dim", "context"]),
                          st.integers(0, 10**6)), min_size=1, max_size=8))
def test_kv_choices_are_always_divisors_after_any_sequence_of_changes(changes):
    w = widgets.group_explorer(n_heads=12, n_kv_heads=4, head_dim=8)
    w._canvas.draw = lambda v: b""  # the picture is tested elsewhere; here only the control logic, quickly
    for name, pick in changes:
        control = getattr(w, name)
        if name == "n_heads":
            control.value = 1 + pick % MAX_HEADS
        else:
            options = [o[1] if isinstance(o, tuple) else o for o in control.options]
            control.value = options[pick % len(options)]
        h, kv = w.n_heads.value, w.n_kv_heads.value
        assert list(w.n_kv_heads.options) == divisors(h)
        assert h % kv == 0
        v = w.readout_values()
        assert (v["n_heads"], v["n_kv_heads"], v["group_size"]) == (h, kv, h // kv)
        assert v["cache_bytes"] == kv_cache_bytes(32, kv, w.head_dim.value, w.context.value, 1, 2)
        assert v["max_diff"].shape == (h, h)


def test_kv_heads_are_kept_when_they_still_divide_else_the_closest_divisor(widget):
    widget.n_heads.value = 32
    widget.n_kv_heads.value = 8
    widget.n_heads.value = 64  # 8 divides 64: kept
    assert widget.n_kv_heads.value == 8
    widget.n_heads.value = 9  # divisors 1, 3, 9: 9 is closest to 8
    assert widget.n_kv_heads.value == 9
    widget.n_heads.value = 12  # 6 and 12 are both 3 away from 9: the smaller wins
    assert widget.n_kv_heads.value == 6
    widget.n_kv_heads.value = 4
    widget.n_heads.value = 10  # divisors 1, 2, 5, 10: 5 is closest to 4
    assert widget.n_kv_heads.value == 5
    assert closest_divisor(12, 5) == 4 and closest_divisor(7, 4) == 1


def test_a_kv_value_that_does_not_divide_is_refused_with_the_valid_values(widget):
    widget.n_heads.value = 32
    message = r"n_kv_heads=3 is not offered for 32 query heads \(only divisors are\) \(valid: 1, 2, 4, 8, 16, 32\)"
    with pytest.raises(TraitError, match=message):
        widget.n_kv_heads.value = 3
    with pytest.raises(ValueError, match=message):  # also a ValueError, like every bad input of the series
        widget.n_kv_heads.value = 3
    assert widget.n_kv_heads.value in divisors(32)


@pytest.mark.parametrize("control,value,message", not_offered(
    sliders={"n_heads": (1, 64), "n_layers": (1, 128)},
    choices={"head_dim": (100, "8, 16, 32, 64, 128"), "model": ("Falcon-7B", ".*Llama-3 70B.*custom"),
             "order": ("strided", "contiguous, repeat")}))
def test_a_control_set_outside_what_it_offers_is_refused_not_clamped(widget, control, value, message):
    refused_not_clamped(widget, control, value, message)


@pytest.mark.parametrize("n_heads,n_kv_heads", [(32, 8), (9, 3), (12, 12), (8, 1), (64, 4)])
def test_k_and_v_are_copies_inside_a_group_and_differ_across(n_heads, n_kv_heads):
    w = widgets.group_explorer(n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=16)
    v = w.readout_values()
    group = torch.arange(n_heads) // (n_heads // n_kv_heads)
    same = group[:, None] == group[None, :]
    for key in ("max_diff", "max_diff_v"):
        assert torch.all(v[key][same] == 0)  # exactly zero: the same numbers, not recomputed ones
        assert torch.all(v[key][~same] > 0)
    k, val = random_kv(n_heads, n_kv_heads, 16)
    torch.testing.assert_close(v["k_per_head"], k.repeat_interleave(n_heads // n_kv_heads, dim=0), rtol=0, atol=0)
    torch.testing.assert_close(v["v_per_head"], val.repeat_interleave(n_heads // n_kv_heads, dim=0), rtol=0, atol=0)
    if 1 < n_kv_heads < n_heads:
        assert "inside a group exactly 0 (the same numbers); across groups at least" in w.readout.value


@pytest.mark.parametrize("n_heads,n_kv_heads,head_dim", [(64, 64, 128), (32, 8, 128), (64, 64, 8), (9, 3, 64)])
def test_fixed_colour_scales_hold_the_values(n_heads, n_kv_heads, head_dim):
    k, v = random_kv(n_heads, n_kv_heads, head_dim)
    for x in (k, v):
        assert (x.abs() > KV_LIMIT).float().mean() < 0.005  # clipped: under half a percent of the entries
        assert max_abs_diff_matrix(per_query_head(x, n_heads)).max() <= DIFF_LIMIT


def test_random_layer_is_seeded_and_leaves_the_callers_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    k1, _ = random_kv(8, 2, 16)
    after = torch.rand(1)
    k2, _ = random_kv(8, 2, 16)
    assert torch.equal(before, after) and torch.equal(k1, k2) and k1.shape == (2, 8, 16)


def test_picture_is_a_png_redrawn_on_shape_changes_but_not_on_context(widget):
    widget.n_heads.value, widget.n_kv_heads.value, widget.head_dim.value = 16, 4, 32
    first = widget.image.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    widget.context.value = 1024 if widget.context.value != 1024 else 2048
    assert widget.image.value == first  # the context changes numbers only
    widget.n_kv_heads.value = 2
    assert widget.image.value != first and widget.last_update_s > 0


def test_update_latency_median_is_reported(widget):
    rng = random.Random(0)
    times, cpu = [], []
    for _ in range(12):
        control = rng.choice(["n_heads", "n_kv_heads", "head_dim"])
        if control == "n_heads":
            new = rng.choice([h for h in (8, 12, 16, 24, 32, 48, 64) if h != widget.n_heads.value])
        else:
            new = rng.choice([o for o in getattr(widget, control).options if o != getattr(widget, control).value])
        start, start_cpu = time.perf_counter(), time.process_time()
        getattr(widget, control).value = new
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    median_ms = 1000 * statistics.median(times)
    print(f"\ngroup explorer: median update {median_ms:.0f} ms wall, {1000 * statistics.median(cpu):.0f} ms CPU, "
          f"over {len(times)} redrawing changes (max {1000 * max(times):.0f} ms; aim < 150 ms on an idle laptop)")


def test_the_builder_can_be_called_again_after_its_module_was_imported():
    import gqa_lib.widgets.group_shapes as module  # importing the module must not shadow the builder

    assert isinstance(widgets.group_explorer(n_heads=4, n_kv_heads=2, head_dim=8), module.GroupExplorer)
    assert isinstance(widgets.group_explorer(n_heads=4, n_kv_heads=1, head_dim=8), module.GroupExplorer)


def test_bad_start_values_fail_clearly():
    with pytest.raises(ValueError, match=r"n_kv_heads=3 must divide n_heads=32 \(valid: 1, 2, 4, 8, 16, 32\)"):
        widgets.group_explorer(n_kv_heads=3)
    with pytest.raises(ValueError, match=r"n_heads=65 is outside the slider \(valid: 1, 2, \.\.\., 64\)"):
        widgets.group_explorer(n_heads=65)
    with pytest.raises(ValueError, match=r"n_layers=200 is outside the slider \(valid: 1, 2, \.\.\., 128\)"):
        widgets.group_explorer(n_layers=200)
    with pytest.raises(ValueError, match=r"order='strided' is not offered \(valid: contiguous, repeat\)"):
        widgets.group_explorer(order="strided")
    with pytest.raises(ValueError, match=r"model='Falcon-7B' is not offered \(valid: .*custom\)"):
        widgets.group_explorer(model="Falcon-7B")  # 71 query heads: more than the slider's 64
    with pytest.raises(ValueError, match=r"head_dim=100 is not offered \(valid: 8, 16, 32, 64, 128\)"):
        widgets.group_explorer(head_dim=100)
    with pytest.raises(ValueError, match=r"context=1000 is not offered \(valid: 256, .*, 131072\)"):
        widgets.group_explorer(context=1000)
    with pytest.raises(ValueError, match="dtype='fp64' is not known"):
        widgets.group_explorer(dtype="fp64")
    with pytest.raises(ValueError, match="n_layers=0 must be a positive integer"):
        widgets.group_explorer(n_layers=0)
    assert HEAD_DIMS[-1] == 128 and CONTEXTS[0] == 256 and MAX_HEADS == 64


def test_llama3_70b_preset_sets_its_80_layers():
    w = widgets.group_explorer(model="Llama-3 70B")
    spec = get_model("Llama-3 70B")
    v = w.readout_values()
    assert (v["n_heads"], v["n_kv_heads"], v["head_dim"], v["n_layers"]) == (64, 8, 128, 80)
    assert v["cache_bytes"] == spec.cache_bytes(8192) == kv_cache_bytes(80, 8, 128, 8192, 1, 2)
    assert "KV cache: <b>2.68 GB</b>" in w.readout.value and "Llama-3 70B" in w.readout.value


def test_choosing_a_preset_fills_the_sliders_and_moving_one_leaves_it():
    w = widgets.group_explorer()
    assert w.model.value == "Llama-3 8B"  # the default shape is Llama-3 8B's, named as the first such model
    w.model.value = "Qwen2.5-0.5B"
    assert (w.n_heads.value, w.n_kv_heads.value, w.head_dim.value, w.n_layers.value) == (14, 2, 64, 24)
    assert list(w.n_kv_heads.options) == divisors(14)
    w.n_layers.value = 25
    assert w.model.value == "custom"
    assert w.readout_values()["cache_bytes"] == kv_cache_bytes(25, 2, 64, w.context.value, 1, 2)
    w.model.value = "Llama-2 7B"  # MHA: 32 query heads, 32 KV heads
    assert (w.n_heads.value, w.n_kv_heads.value) == (32, 32) and w.readout_values()["kind"] == "MHA"


def test_presets_are_the_models_whose_shape_the_sliders_show():
    from gqa_lib.models.catalog import load_models
    from gqa_lib.widgets.group_shapes import preset_names

    names = preset_names()
    assert names[-1] == "custom" and "Llama-3 70B" in names and "SmolLM2-135M" in names
    for name, spec in load_models().items():
        fits = spec.mla is None and spec.n_heads <= MAX_HEADS and spec.head_dim in HEAD_DIMS
        assert (name in names) == fits, name


def test_layer_count_changes_the_numbers_not_the_picture(widget):
    picture = widget.image.value
    widget.n_layers.value = 80 if widget.n_layers.value != 80 else 40
    v = widget.readout_values()
    assert v["cache_bytes"] == kv_cache_bytes(v["n_layers"], v["n_kv_heads"], v["head_dim"], v["context"], 1, 2)
    assert f"x {v['n_layers']} layers x" in widget.readout.value and widget.image.value == picture


@pytest.mark.parametrize("n_heads,n_kv_heads", [(32, 8), (12, 3), (6, 2), (8, 1), (8, 8)])
def test_repeat_order_shows_the_strided_pattern(n_heads, n_kv_heads):
    w = widgets.group_explorer(n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=16)
    contiguous = w.image.value
    w.order.value = "repeat"
    v = w.readout_values()
    k, _ = random_kv(n_heads, n_kv_heads, 16)
    torch.testing.assert_close(v["k_per_head"], k.repeat(n_heads // n_kv_heads, 1, 1), rtol=0, atol=0)
    heads = torch.arange(n_heads)
    same = (heads[:, None] % n_kv_heads) == (heads[None, :] % n_kv_heads)  # i % n_kv_heads == j % n_kv_heads
    assert torch.all(v["max_diff"][same] == 0) and torch.all(v["max_diff"][~same] > 0)
    assert v["kv_head_of"] == [i % n_kv_heads for i in range(n_heads)]
    assert "i % n_kv_heads" in w.readout.value
    if 1 < n_kv_heads < n_heads:  # with one group, or one head a group, the two orders are the same model
        assert w.image.value != contiguous


def test_one_head_groups_and_one_query_head_read_as_sentences():
    w = widgets.group_explorer(n_heads=1, n_kv_heads=1, head_dim=8)
    text = w.readout.value
    assert "1 query head reads 1 KV head (= groups)" in text and "<b>1</b> query head per group" in text
    assert "x 1 KV head x" in text
    assert "inside a group n/a (each group has one query head)" in text and "at most 0" not in text
    assert "1 query heads" not in text and "1 KV heads" not in text and "1x smaller" not in text
    w = widgets.group_explorer(n_heads=8, n_kv_heads=8, head_dim=8)
    assert "inside a group n/a (each group has one query head)" in w.readout.value
    w = widgets.group_explorer(n_heads=8, n_kv_heads=1, head_dim=8)
    assert "8 query heads read 1 KV head (= groups)" in w.readout.value and "8x smaller" in w.readout.value
    assert "across groups n/a (one group)" in w.readout.value


def test_a_layout_drawn_from_its_kept_background_matches_a_fresh_drawing():
    """Returning to a layout pastes its kept diagram and head numbers: the picture must be the same as drawn anew."""
    w = widgets.group_explorer()
    first = w.image.value
    w.n_heads.value = 48
    assert w.image.value != first
    hits = w._canvas.blit.background.cache_info().hits
    w.n_heads.value = 32
    w.n_kv_heads.value = 8
    assert w._canvas.blit.background.cache_info().hits > hits  # drawn from the kept layout
    assert w.image.value == first
    w._canvas.blit.background.cache_clear()  # and drawn anew: the same picture
    w.n_heads.value = 48
    w.n_heads.value = 32
    w.n_kv_heads.value = 8
    assert w.image.value == first


# A count of one followed by a plural noun ("1 layers", "1 KV heads", "1 bytes"), once the HTML tags are gone.
ONE_AND_A_PLURAL = re.compile(r"(?<![\w.,^])1 (?:[A-Za-z/]+ )?(?:bytes|layers|heads|tokens|groups|numbers|sequences)\b")


def _words(w) -> list[str]:
    """The readout as the reader sees it (tags removed) and the diagram's title."""
    return [re.sub(r"<[^>]+>", "", w.readout.value), w._canvas.ax_diagram.title.get_text()]


def test_every_control_at_one_reads_in_the_singular():
    """Each control that offers 1 set to 1 through the control (KV heads, layers, then query heads), with batch 1
    and int8's 1 byte a number: '1 KV head', '1 layer', '1 query head', '1 byte', never '1 <plural>'."""
    w = widgets.group_explorer(n_heads=8, n_kv_heads=2, head_dim=8, n_layers=4, batch=1, dtype="int8")
    w.n_kv_heads.value = 1
    w.n_layers.value = 1
    readout, title = _words(w)
    assert "8 query heads read 1 KV head (= groups)" in readout
    assert "= 2 (K and V) x 1 layer x 1 KV head x head dim 8 x 8,192 tokens x batch 1 x 1 byte (int8)" in readout
    assert "MQA: 8 query heads, 1 KV head, group size 8" in title
    for words in _words(w):
        assert not ONE_AND_A_PLURAL.search(words), ONE_AND_A_PLURAL.search(words).group(0)
    w.n_heads.value = 1
    assert (w.n_heads.value, w.n_kv_heads.value, w.n_layers.value) == (1, 1, 1)
    readout, title = _words(w)
    assert "1 query head reads 1 KV head (= groups), 1 query head per group" in readout
    assert "MHA: 1 query head, 1 KV head, group size 1" in title
    for words in _words(w):
        assert not ONE_AND_A_PLURAL.search(words), ONE_AND_A_PLURAL.search(words).group(0)
