"""Notebook 07's widget, driven headlessly: its figures are the cache arithmetic, its KV choices divisors."""

import random

import pytest
from widget_checks import module_widget

from gqa_lib import widgets
from gqa_lib.core.cache_math import kv_cache_bytes, mla_cache_bytes
from gqa_lib.core.checks import closest_divisor, divisors
from gqa_lib.models.catalog import get_model

widget = module_widget(widgets.mla_cache_comparison)


def test_defaults_are_deepseek_v3_from_data(widget):
    v3 = get_model("DeepSeek-V3 671B")
    v = widget.readout_values()
    assert v["per_token"]["MLA"] == v3.cache_bytes(1) == 61 * 576 * 2
    assert v["per_token"]["MHA"] == v3.mha_cache_bytes(1)
    assert v["totals"]["MLA"] == v3.cache_bytes(100_000) == 7_027_200_000
    assert v["mla_as_gqa_kv_heads"] == 2.25
    assert "2.25" in widget.readout.value and "7.03 GB" in widget.readout.value


def test_readout_equals_the_arithmetic_after_changes(widget):
    settings = {"n_layers": 30, "n_heads": 48, "head_dim": 64, "d_c": 256, "d_rope": 32, "dtype": "fp32"}
    for name, value in settings.items():
        getattr(widget, name).value = value
    widget.n_kv_heads.value = 6
    widget.seq_len.value = 32_768
    v = widget.readout_values()
    assert v["per_token"] == {
        "MHA": kv_cache_bytes(30, 48, 64, 1, 1, 4), "GQA": kv_cache_bytes(30, 6, 64, 1, 1, 4),
        "MQA": kv_cache_bytes(30, 1, 64, 1, 1, 4), "MLA": mla_cache_bytes(30, 256, 32, 1, 1, 4)}
    assert v["totals"]["GQA"] == kv_cache_bytes(30, 6, 64, 32_768, 1, 4)
    assert v["vs_mha"]["MQA"] == 48
    assert v["mla_as_gqa_kv_heads"] == (256 + 32) / (2 * 64)
    assert f"{v['per_token']['MLA']:,} B" in widget.readout.value


def test_kv_choices_stay_divisors_after_any_sequence_of_changes(widget):
    rng = random.Random(0)
    for _ in range(15):  # each change redraws the chart; 15 random walks cover primes, 1 and 128
        widget.n_heads.value = rng.choice([1, 7, 12, 64, 96, 100, 127, 128, rng.randint(1, 128)])
        if rng.random() < 0.5:
            widget.n_kv_heads.value = rng.choice(widget.n_kv_heads.options)
        h = widget.n_heads.value
        assert list(widget.n_kv_heads.options) == divisors(h)
        assert h % widget.n_kv_heads.value == 0
        assert widget.readout_values()["kv_choices"] == divisors(h)


def test_kv_heads_land_on_the_closest_divisor(widget):
    widget.n_heads.value = 128
    widget.n_kv_heads.value = 8
    widget.n_heads.value = 96  # 8 still divides 96: kept
    assert widget.n_kv_heads.value == 8
    widget.n_heads.value = 100  # 8 does not divide 100: 10 is closest
    assert widget.n_kv_heads.value == 10
    assert closest_divisor(7, 4) == 1 and closest_divisor(12, 5) == 4


def test_chart_is_redrawn(widget):
    before = widget.image.value
    widget.d_c.value = 1024 if widget.d_c.value != 1024 else 512
    assert widget.image.value[:8] == b"\x89PNG\r\n\x1a\n" and widget.image.value != before
    assert widget.last_update_s > 0


def test_bad_start_values_fail_clearly():
    with pytest.raises(ValueError, match=r"n_kv_heads=3 must divide n_heads=32 \(valid: 1, 2, 4, 8, 16, 32\)"):
        widgets.mla_cache_comparison(n_heads=32, n_kv_heads=3)
    with pytest.raises(ValueError, match="unknown setting"):
        widgets.mla_cache_comparison(groups=8)
    with pytest.raises(ValueError, match="dtype='fp64' is not known"):
        widgets.mla_cache_comparison(dtype="fp64")


@pytest.mark.parametrize("control,value,message", [
    ("n_kv_heads", 3, r"n_kv_heads=3 is not offered for 128 query heads \(only divisors are\) "
                      r"\(valid: 1, 2, 4, 8, 16, 32, 64, 128\)"),
    ("n_layers", 129, r"n_layers=129 is outside the slider \(valid: 1\.\.128\)"),
    ("head_dim", 100, r"head_dim=100 is outside the slider \(valid: 16\.\.256 in steps of 16\)"),
    ("d_rope", -16, r"d_rope=-16 is outside the slider \(valid: 0\.\.256 in steps of 16\)"),
    ("seq_len", 1000, r"seq_len=1000 is not offered \(valid: 4,096, 32,768, 100,000, 131,072\)"),
])
def test_a_control_set_outside_what_it_offers_is_refused_not_clamped(control, value, message):
    w = widgets.mla_cache_comparison()
    before = getattr(w, control).value
    with pytest.raises(ValueError, match=message):
        getattr(w, control).value = value
    assert getattr(w, control).value == before


def test_one_head_labels_read_as_sentences():
    w = widgets.mla_cache_comparison(n_heads=1, n_kv_heads=1, n_layers=1)
    labels = w._labels()
    assert labels[:3] == ["MHA\n1 KV head", "GQA\n1 KV head", "MQA\n1 KV head"]
    assert "1 KV heads" not in "".join(labels)


def test_the_readout_says_what_an_integer_format_stores():
    from gqa_lib import widgets

    w = widgets.mla_cache_comparison()
    assert "Number format: bf16 (2 bytes a number)" in w.readout.value
    w.dtype.value = "int4"
    assert "int4 + one 2-byte scale and one 2-byte minimum per 64 numbers of each cached vector" in w.readout.value


def test_every_slider_and_dropdown_at_its_ends_reads_as_sentences():
    """Each control at its first and last value, one at a time from DeepSeek-V3's shape and from the smallest
    shape: the readout and the chart's texts read as sentences ('1 KV head', '1 layer', never '1 KV heads'),
    and a latent wider than MHA's keys and values is said to be larger, not '0.0x smaller'."""
    from gqa_lib.widgets.mla_cache import SLIDER_RANGES, TOKEN_CHOICES

    for start in ({}, {"n_layers": 1, "n_heads": 1, "n_kv_heads": 1, "head_dim": 16, "d_c": 32, "d_rope": 0}):
        w = widgets.mla_cache_comparison(**start)
        ends = {name: (lo, hi) for name, (lo, hi, _) in SLIDER_RANGES.items()}
        ends |= {"dtype": (w.dtype.options[0], w.dtype.options[-1]), "seq_len": (TOKEN_CHOICES[0], TOKEN_CHOICES[-1]),
                 "n_kv_heads": (w.n_kv_heads.options[0], w.n_kv_heads.options[-1])}
        for name, values in ends.items():
            for value in values:
                getattr(w, name).value = value
                shown = w.readout.value + " ".join(w._labels()) + w._title.get_text()
                for wrong in ("1 KV heads", "1 layers", "1 query heads", "1 numbers", "0.0x", "nan", "inf"):
                    assert wrong not in shown, (start, name, value, wrong, shown)


def test_a_latent_wider_than_mha_is_said_to_be_larger():
    w = widgets.mla_cache_comparison(n_layers=1, n_heads=1, n_kv_heads=1, head_dim=16, d_c=2048, d_rope=256)
    assert "72.0x larger" in w.readout.value  # (2048 + 256) / (2 x 16)
    assert "as many as GQA with <b>72 KV heads</b>" in w.readout.value
    w.d_c.value, w.d_rope.value = 32, 0  # the latent as wide as MHA's one key and value
    assert "the same" in w.readout.value and "<b>1 KV head</b> of dim 16" in w.readout.value
    assert "no RoPE key" in w.readout.value
