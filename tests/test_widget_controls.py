"""The widgets' shared controls: a value a control does not offer is refused with the valid ones, never clamped."""

import pytest
from traitlets import TraitError

from gqa_lib.widgets.controls import (
    CUSTOM,
    NotOffered,
    StrictDropdown,
    StrictIntSlider,
    StrictSelectionSlider,
    StrictToggleButtons,
    listed,
)


def test_int_slider_refuses_values_outside_its_range_or_step_instead_of_clamping():
    s = StrictIntSlider(value=64, min=0, max=256, step=16, name="d_rope")
    for bad in (-16, 272, 8, 32.0, True, "32"):
        what = "is outside the slider" if type(bad) is int else "must be an integer on the slider"
        with pytest.raises(NotOffered, match=rf"d_rope={bad!r} {what} \(valid: 0\.\.256 in steps of 16\)"):
            s.value = bad
        assert s.value == 64
    s.value = 32
    assert s.value == 32


def test_selection_controls_list_the_valid_values():
    s = StrictSelectionSlider(options=[1, 2, 4, 8], value=2, name="n_kv_heads", why="for 8 query heads")
    with pytest.raises(ValueError, match=r"n_kv_heads=3 is not offered for 8 query heads \(valid: 1, 2, 4, 8\)"):
        s.value = 3
    with pytest.raises(TraitError):  # still what ipywidgets' own code expects to catch
        s.value = 3
    d = StrictDropdown(options=[("fp32 (4 bytes)", "fp32"), ("bf16 (2 bytes)", "bf16")], value="bf16", name="dtype")
    with pytest.raises(NotOffered, match=r"dtype='fp64' is not offered \(valid: fp32, bf16\)"):
        d.value = "fp64"
    t = StrictToggleButtons(options=["contiguous", "repeat"], value="repeat", description="order")
    with pytest.raises(NotOffered, match=r"order='tile' is not offered \(valid: contiguous, repeat\)"):
        t.value = "tile"
    assert (s.value, d.value, t.value) == (2, "bf16", "repeat")


def test_long_lists_keep_their_ends():
    text = listed(range(1, 101))
    assert text.startswith("1, 2, 3") and text.endswith("99, 100") and "..." in text
    assert listed([1, 2, 4]) == "1, 2, 4"


def test_one_spelling_of_custom():
    from gqa_lib.widgets import group_shapes, mqa_cache

    assert CUSTOM == "custom" == mqa_cache.CUSTOM
    assert group_shapes.preset_names()[-1] == CUSTOM and mqa_cache.preset_names()[-1] == CUSTOM


def test_the_kv_heads_slider_follows_the_query_heads_to_the_closest_divisor():
    from gqa_lib.widgets.controls import KVHeadsSlider

    s = KVHeadsSlider(32, 8)
    assert list(s.options) == [1, 2, 4, 8, 16, 32] and s.value == 8
    assert s.follow(30) == 6 and list(s.options) == [1, 2, 3, 5, 6, 10, 15, 30]  # 6 and 10 are as close to 8
    assert s.follow(12, wanted=5) == 4  # 4 and 6 are as close: the smaller
    assert s.follow(7) == 1 and s.follow(48, wanted=48) == 48  # from 4, 1 and 7 are as close: the smaller
    with pytest.raises(NotOffered, match=r"n_kv_heads=5 is not offered for 48 query heads \(only divisors are\)"):
        s.value = 5
