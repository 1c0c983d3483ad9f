"""Notebook 01's KV-cache calculator, driven headlessly: its readout is the cache arithmetic of gqa_lib."""

import re
import statistics
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gqa_lib import widgets
from gqa_lib.cache_math import DTYPE_BYTES, GIB, auto_format_bytes, kv_cache_bytes
from gqa_lib.layout import divisors
from gqa_lib.models import UnknownModelError, get_model, load_models
from gqa_lib.widgets.cache_calculator import CUSTOM, cache_presets, nearest_valid_kv_heads

CACHE_LINE = re.compile(r"Cache: ([\d,.]+) (B|KB|MB|GB|TB) \(([\d,.]+) (B|KiB|MiB|GiB|TiB)\) = ([\d,]+) bytes")


@pytest.fixture(scope="module")
def calc():
    return widgets.kv_cache_calculator()


def readout_text(w) -> str:
    return re.sub(r"<[^>]+>", "", w.readout.value.replace("<br>", "\n"))


def expected_bytes(w) -> int:
    return kv_cache_bytes(w.n_layers.value, w.n_kv_heads.value, w.head_dim.value, w.context.value, w.batch.value,
                          DTYPE_BYTES[w.dtype.value])


def test_starts_at_llama3_8b_with_the_documented_readout(calc):
    lines = readout_text(calc).splitlines()
    assert lines == [
        "Kind: GQA (32 query heads, 8 KV heads (= groups), group size 4)",
        "Cache: 1.07 GB (1.00 GiB) = 1,073,741,824 bytes",
        "Per token: 131,072 bytes (128.00 KiB) over all 32 layers, one sequence",
        "Reduction against MHA of the same shape: 4.00x (MHA would cache 4.29 GB (4.00 GiB))",
        "Assumptions: batch 1, 8,192 tokens, bf16 = 2 bytes per number; GB = 10^9 bytes, GiB = 2^30 bytes",
    ]
    assert calc.readout_values()["bytes"] == get_model("Llama-3 8B").cache_bytes()


def test_setting_controls_changes_the_readout_to_the_arithmetic(calc):
    calc.n_layers.value = 40
    calc.n_heads.value = 48
    calc.n_kv_heads.value = 6
    calc.head_dim.value = 96
    calc.context.value = 32_768
    calc.batch.value = 3
    calc.dtype.value = "fp32"
    v = calc.readout_values()
    assert v["bytes"] == kv_cache_bytes(40, 6, 96, 32_768, 3, 4) == expected_bytes(calc)
    assert v["bytes_per_token"] == kv_cache_bytes(40, 6, 96, 1, 1, 4)
    assert v["mha_bytes"] == kv_cache_bytes(40, 48, 96, 32_768, 3, 4)
    assert (v["reduction"], v["kind"], v["group_size"]) == (8.0, "GQA", 8)
    m = CACHE_LINE.search(readout_text(calc))
    assert m and int(m.group(5).replace(",", "")) == v["bytes"]
    assert f"{m.group(1)} {m.group(2)}" == auto_format_bytes(v["bytes"])
    assert f"{m.group(3)} {m.group(4)}" == auto_format_bytes(v["bytes"], binary=True)
    assert calc.preset.value == CUSTOM  # the shape is no longer Llama-3 8B's


def test_kinds_are_named(calc):
    calc.n_heads.value = 16
    calc.n_kv_heads.value = 16
    assert calc.readout_values()["kind"] == "MHA" and "Kind: MHA" in readout_text(calc)
    calc.n_kv_heads.value = 1
    assert calc.readout_values()["kind"] == "MQA" and "16.00x" in readout_text(calc)


@pytest.mark.parametrize("name", list(cache_presets()))
def test_every_preset_sets_the_shape_and_context(calc, name):
    spec = get_model(name)
    calc.batch.value, calc.dtype.value = 1, "bf16"
    calc.preset.value = name
    shape = (calc.n_layers.value, calc.n_heads.value, calc.n_kv_heads.value, calc.head_dim.value, calc.context.value)
    assert shape == (spec.n_layers, spec.n_heads, spec.n_kv_heads, spec.head_dim, spec.context)
    assert list(calc.n_kv_heads.options) == divisors(spec.n_heads)
    assert calc.readout_values()["bytes"] == spec.cache_bytes()
    assert calc.readout_values()["kind"] == spec.attention
    calc.preset.value = CUSTOM  # so that the next parametrised case is a real change


def test_changing_only_context_batch_or_dtype_keeps_the_preset(calc):
    calc.preset.value = "Mistral 7B"
    calc.context.value = 1024
    calc.batch.value = 8
    calc.dtype.value = "fp8"
    assert calc.preset.value == "Mistral 7B"
    assert calc.readout_values()["bytes"] == get_model("Mistral 7B").cache_bytes(1024, 8, "fp8")
    calc.head_dim.value = 64
    assert calc.preset.value == CUSTOM


def test_mla_models_are_not_offered_and_bad_presets_fail_clearly():
    mla = [n for n, s in load_models().items() if s.mla is not None]
    assert mla and not set(mla) & set(cache_presets())
    with pytest.raises(ValueError, match="uses MLA.*notebook 07"):
        widgets.kv_cache_calculator(preset=mla[0])
    with pytest.raises(UnknownModelError, match=r"name='Llama 3 8B' is not in data/models.json.*Did you mean"):
        widgets.kv_cache_calculator(preset="Llama 3 8B")
    assert widgets.kv_cache_calculator(preset=None).preset.value == CUSTOM


def test_nearest_valid_kv_heads():
    assert nearest_valid_kv_heads(100, 8) == 10
    assert nearest_valid_kv_heads(12, 5) == 4  # 4 and 6 are equally near: the smaller wins
    assert nearest_valid_kv_heads(7, 4) == 1
    assert nearest_valid_kv_heads(48, 3, keep_mha=True) == 48


def test_mha_stays_mha_when_query_heads_change(calc):
    calc.n_heads.value = 32
    calc.n_kv_heads.value = 32
    calc.n_heads.value = 20
    assert calc.n_kv_heads.value == 20
    calc.n_kv_heads.value = 4
    calc.n_heads.value = 30  # 4 does not divide 30: the nearest divisor
    assert calc.n_kv_heads.value in (3, 5) and calc.n_kv_heads.value == nearest_valid_kv_heads(30, 4)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["heads", "kv", "preset", "layers"]), st.integers(0, 10**6)),
                min_size=1, max_size=6))
def test_kv_head_options_always_divide_query_heads(calc, steps):
    presets = list(cache_presets())
    for what, r in steps:
        if what == "heads":
            calc.n_heads.value = 1 + r % 128
        elif what == "kv":
            calc.n_kv_heads.value = calc.n_kv_heads.options[r % len(calc.n_kv_heads.options)]
        elif what == "preset":
            calc.preset.value = presets[r % len(presets)]
        else:
            calc.n_layers.value = 1 + r % 128
        h = calc.n_heads.value
        assert list(calc.n_kv_heads.options) == divisors(h)
        assert calc.n_kv_heads.value in divisors(h)
        assert calc.readout_values()["bytes"] == expected_bytes(calc)


def test_plot_marks_the_chosen_context(calc):
    calc.preset.value = "GPT-2 small"
    before = calc.plot.value
    calc.context.value = 4096
    x, y = calc._marker.get_data()
    assert list(x) == [4096] and y[0] == pytest.approx(calc.readout_values()["bytes"] / GIB)
    assert calc.plot.value[:8] == b"\x89PNG\r\n\x1a\n" and calc.plot.value != before


def test_median_update_time(calc):
    """Time from a control change to the finished update (readout and PNG), the figure the issue asks for."""
    times, cpu = [], []
    changes = [(calc.n_heads, h) for h in [32, 48, 64, 12, 9, 96, 40, 128]] + \
              [(calc.context, c) for c in [1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072]]
    for control, value in changes:
        start, start_cpu = time.perf_counter(), time.process_time()
        control.value = value
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    median_ms = 1000 * statistics.median(times)
    print(f"\nkv_cache_calculator: median update {median_ms:.0f} ms wall, {1000 * statistics.median(cpu):.0f} ms CPU, "
          f"over {len(times)} changes of query heads and context")
    # every change was followed by a finished update: the readout shows the last values set
    assert "131,072" in calc.readout.value or "131072" in calc.readout.value
    assert calc.readout_values()["context"] == 131072
