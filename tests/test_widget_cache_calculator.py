"""Notebook 01's KV-cache calculator, driven headlessly: its readout is the cache arithmetic of gqa_lib."""

import re
import statistics
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gqa_lib import widgets
from gqa_lib.core.cache_math import DTYPE_BYTES, GIB, CacheRecipe, ElementType, auto_format_bytes, kv_cache_bytes
from gqa_lib.core.checks import divisors
from gqa_lib.models.catalog import UnknownModelError, get_model
from gqa_lib.widgets.cache_calculator import CUSTOM, SHARING, cache_presets, nearest_valid_kv_heads

CACHE_LINE = re.compile(r"Cache: ([\d,.]+) (B|KB|MB|GB|TB) \(([\d,.]+) (B|KiB|MiB|GiB|TiB)\) = ([\d,]+) bytes, "
                        r"as built")


@pytest.fixture(scope="module")
def calc():
    return widgets.kv_cache_calculator()


def readout_text(w) -> str:
    return re.sub(r"<[^>]+>", "", w.readout.value.replace("<br>", "\n"))


def expected_bytes(w) -> int:
    """The cache the controls describe, by the formula (float formats only): local layers keep their window."""
    b = DTYPE_BYTES[w.dtype.value]
    ctx, n_layers, window = w.context.value, w.n_layers.value, w.window.value
    if w.cache_kind.value == "mla":
        per_layer = (w.d_c.value + w.d_rope.value) * b
    else:
        per_layer = 2 * w.n_kv_heads.value * w.head_dim.value * b
    pattern = w.pattern.value if window else "G"
    kept = sum(min(ctx, window) if pattern[i % len(pattern)] == "L" else ctx
               for i in range(0, n_layers, w.share_every.value))
    return per_layer * kept * w.batch.value


def test_starts_at_llama3_8b_with_the_documented_readout(calc):
    lines = readout_text(calc).splitlines()
    assert lines == [
        "Kind: GQA (32 query heads, 8 KV heads (= 8 groups), group size 4)",
        "Cache: 1.07 GB (1.00 GiB) = 1,073,741,824 bytes, as built",
        "All layers global: the same (no local layers)",
        "Layers: 32 global, 0 local; all 32 layers store K/V (no sharing)",
        "Per token: 131,072 bytes (128.00 KiB) over all 32 layers, one sequence",
        "Reduction against MHA of the same shape: 4.00x, all from KV heads (32 query heads / 8 KV heads); "
        "MHA would cache 4.29 GB (4.00 GiB)",
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
    assert shape[:2] + shape[3:] == (spec.n_layers, spec.n_heads, spec.head_dim, spec.context)
    v = calc.readout_values()
    if spec.mla is None:
        assert calc.n_kv_heads.value == spec.n_kv_heads and list(calc.n_kv_heads.options) == divisors(spec.n_heads)
    else:
        assert (calc.cache_kind.value, calc.d_c.value, calc.d_rope.value) == ("mla", spec.mla.d_c, spec.mla.d_rope)
    assert v["bytes"] == spec.windowed_cache_bytes()  # as built: local layers keep their window
    assert v["all_global_bytes"] == spec.cache_bytes()
    assert v["kind"] == spec.attention
    assert calc.preset.value == name  # setting the shape did not switch it to custom
    calc.preset.value = CUSTOM  # so that the next parametrised case is a real change


def test_changing_only_context_batch_or_dtype_keeps_the_preset(calc):
    calc.preset.value = "Mistral 7B"
    calc.context.value = 1024
    calc.batch.value = 8
    calc.dtype.value = "fp8"
    assert calc.preset.value == "Mistral 7B"
    assert calc.readout_values()["bytes"] == get_model("Mistral 7B").windowed_cache_bytes(1024, 8, "fp8")
    calc.head_dim.value = 64
    assert calc.preset.value == CUSTOM


def test_custom_is_spelled_as_in_every_widget_and_bad_presets_fail_clearly():
    assert CUSTOM == "custom"
    assert widgets.kv_cache_calculator(preset=None).preset.value == CUSTOM
    assert widgets.kv_cache_calculator(CUSTOM).preset.value == CUSTOM
    with pytest.raises(ValueError, match=r"preset='\(custom\)': ask for a shape of your own with preset='custom' "
                                         r"and the settings you want, e.g. kv_cache_calculator\('custom', n_layers="):
        widgets.kv_cache_calculator("(custom)")
    with pytest.raises(UnknownModelError, match=r"name='Llama 3 8B' is not in data/models.json.*Did you mean"):
        widgets.kv_cache_calculator(preset="Llama 3 8B")


def test_a_custom_shape_is_asked_for_with_settings():
    w = widgets.kv_cache_calculator(CUSTOM, n_layers=24, n_heads=16, n_kv_heads=4, head_dim=64, context=4096)
    assert w.readout_values()["bytes"] == kv_cache_bytes(24, 4, 64, 4096)
    assert readout_text(w).splitlines()[0] == "Kind: GQA (16 query heads, 4 KV heads (= 4 groups), group size 4)"
    changed = widgets.kv_cache_calculator("Llama-3 8B", n_kv_heads=2)
    assert changed.preset.value == CUSTOM and changed.readout_values()["bytes"] == kv_cache_bytes(32, 2, 128, 8192)
    with pytest.raises(ValueError, match=r"setting\(s\) 'layers' not known \(valid: n_layers, n_heads, "):
        widgets.kv_cache_calculator(CUSTOM, layers=24)


@pytest.mark.parametrize(("setting", "message"), [
    ({"n_layers": 129}, r"n_layers=129 is outside the slider \(valid: 1\.\.128\)"),
    ({"batch": 0}, r"batch=0 is outside the slider \(valid: 1\.\.256\)"),
    ({"head_dim": 100}, r"head_dim=100 is outside the slider \(valid: 8\.\.256 in steps of 8\)"),
    ({"n_kv_heads": 5},
     r"n_kv_heads=5 is not offered for 32 query heads \(only divisors are\) \(valid: 1, 2, 4, 8, 16, 32\)"),
    ({"n_heads": 30, "n_kv_heads": 4},
     r"n_kv_heads=4 is not offered for 30 query heads \(only divisors are\) \(valid: 1, 2, 3, 5, 6, 10, 15, 30\)"),
    ({"context": 5000}, r"context=5000 is not offered \(valid: 128, 256, .*1,048,576\)"),
    ({"dtype": "fp64"}, r"dtype='fp64' is not offered \(valid: fp32, fp16, bf16, fp8, int8, int4\)"),
    ({"window": 1000}, r"window=1000 is not offered \(valid: 0, 128, "),
    ({"n_layers": 2, "share_every": 3}, r"share_every=3 is not offered for 2 layers \(a group of layers sharing K/V "
                                        r"is at most the number of layers\) \(valid: 1, 2\)"),
])
def test_values_a_control_does_not_offer_are_refused_not_clamped(setting, message):
    with pytest.raises(ValueError, match=message):
        widgets.kv_cache_calculator(CUSTOM, **setting)


def test_setting_a_control_above_its_maximum_is_refused(calc):
    before = calc.readout.value
    with pytest.raises(ValueError, match=r"n_layers=500 is outside the slider \(valid: 1\.\.128\)"):
        calc.n_layers.value = 500
    with pytest.raises(ValueError, match=r"n_kv_heads=7 is not offered for \d+ query heads \(only divisors are\)"):
        calc.n_kv_heads.value = 7
    assert calc.readout.value == before


def test_sliding_window_models_show_the_windowed_cache_beside_the_all_global_one():
    gemma = widgets.kv_cache_calculator("Gemma 3 1B")  # 4 global layers keep 32,768 tokens, 22 local keep 512
    lines = readout_text(gemma).splitlines()
    assert lines[1] == "Cache: 145.75 MB (139.00 MiB) = 145,752,064 bytes, as built"
    assert lines[2] == ("All layers global: 872.42 MB (832.00 MiB) = 872,415,232 bytes, an upper bound "
                        "(5.99x the cache as built)")
    assert lines[3] == "Layers: 4 global, 22 local keeping the last 512 tokens; all 26 layers store K/V (no sharing)"
    assert "sliding window: google/gemma_pytorch" in gemma.source.value
    mistral = widgets.kv_cache_calculator("Mistral 7B")
    assert mistral.readout_values()["bytes"] == kv_cache_bytes(32, 8, 128, 4096)  # 4,096 of 8,192 tokens kept
    assert mistral.readout_values()["all_global_bytes"] == kv_cache_bytes(32, 8, 128, 8192)
    mistral.context.value = 2048  # inside the window: nothing is dropped
    assert "All layers global: the same (2,048 tokens fit in the window)" in readout_text(mistral)
    mistral.window.value = 0
    assert mistral.preset.value == CUSTOM and mistral.pattern.disabled


def test_number_formats_sharing_and_mla_compose():
    w = widgets.kv_cache_calculator("Llama-3 8B", dtype="int4", scale_group=32, share_every=2)
    # 16 of 32 layers store; each stores 2 x 8 vectors of 128 int4 numbers (64 bytes) + 4 groups of 32, each with
    # a 2-byte scale and a 2-byte minimum (16 bytes)
    assert w.readout_values()["bytes"] == 16 * 2 * 8 * (64 + 16) * 8192 == 167_772_160
    assert w.readout_values()["bytes"] == CacheRecipe(32, 8, 128, ElementType("int4", 32), share_every=2).cache_bytes(
        8192)
    assert "int4 = 0.5 bytes per number + one 2-byte scale and one 2-byte minimum per 32 channels" in readout_text(w)
    assert "16 of 32 layers store K/V (2 adjacent layers share one)" in readout_text(w)
    assert w.preset.value == CUSTOM and not w.scale_group.disabled  # sharing changes the model; the format does not
    w = widgets.kv_cache_calculator("DeepSeek-V3 671B", context=131072)
    assert w.readout_values()["bytes"] == 61 * (512 + 64) * 2 * 131072
    assert readout_text(w).splitlines()[0] == ("Kind: MLA (128 query heads; a latent of 512 + a RoPE key of 64 "
                                               "numbers per token and layer)")
    assert w.n_kv_heads.disabled and not w.d_c.disabled
    w.dtype.value = "int8"  # a scale and a minimum per 64 numbers: 8 groups in the latent, 1 in the RoPE key
    assert w.readout_values()["bytes"] == 61 * (512 + 8 * 4 + 64 + 4) * 131072
    assert "int8 = 1 byte per number + one 2-byte scale and one 2-byte minimum per 64 channels" in readout_text(w)
    w.scale_group.value = 0  # one group per vector: one scale and one minimum for the latent, one for the RoPE key
    assert w.readout_values()["bytes"] == 61 * (512 + 4 + 64 + 4) * 131072
    assert "minimum per vector (per token and layer: the latent and the RoPE key)" in readout_text(w)
    assert w.preset.value == "DeepSeek-V3 671B"


def test_sharing_is_offered_only_up_to_the_layer_count_and_follows_it():
    w = widgets.kv_cache_calculator("Llama-3 8B", share_every=4)
    assert list(w.share_every.options) == [(t, k) for k, t in SHARING.items()]
    w.n_layers.value = 3  # 4 adjacent layers cannot share in a 3-layer model: the largest group offered
    assert [k for _, k in w.share_every.options] == [1, 2, 3] and w.share_every.value == 3
    assert w.readout_values()["bytes"] == CacheRecipe(3, 8, 128, share_every=3).cache_bytes(8192)
    assert "1 of 3 layers stores K/V (3 adjacent layers share one)" in readout_text(w)
    with pytest.raises(ValueError, match=r"share_every=4 is not offered for 3 layers"):
        w.share_every.value = 4
    w.n_layers.value = 1
    assert [k for _, k in w.share_every.options] == [1] and w.share_every.value == 1
    w.n_layers.value = 40  # every group is offered again; the value stays where it was
    assert [k for _, k in w.share_every.options] == [1, 2, 3, 4] and w.share_every.value == 1
    w.preset.value = "Gemma 3 1B"
    assert w.share_every.value == 1 and len(w.share_every.options) == len(SHARING)


def test_counts_agree_with_their_nouns_at_one():
    w = widgets.kv_cache_calculator(CUSTOM, n_layers=2, n_heads=1, n_kv_heads=1, head_dim=8, share_every=2,
                                    context=128, dtype="fp8")
    lines = readout_text(w).splitlines()
    assert lines[0] == "Kind: MHA (1 query head, 1 KV head (= 1 group), group size 1)"
    assert lines[3] == "Layers: 2 global, 0 local; 1 of 2 layers stores K/V (2 adjacent layers share one)"
    assert lines[4] == "Per token: 16 bytes (16 B) over the one storing layer, one sequence"
    assert lines[6].startswith("Assumptions: batch 1, 128 tokens, fp8 = 1 byte per number;")
    w.set(n_layers=1, share_every=1)
    assert readout_text(w).splitlines()[3] == "Layers: 1 global, 0 local; the layer stores K/V"
    assert "over the one layer" in readout_text(w)
    w.set(cache_kind="mla", d_rope=0)
    assert readout_text(w).splitlines()[0] == ("Kind: MLA (1 query head; a latent of 512 numbers per token and layer, "
                                               "no RoPE key)")


def test_the_reduction_against_mha_names_each_cause_with_its_factor():
    gemma = widgets.kv_cache_calculator("Gemma 3 1B")  # 4 query heads share 1 KV head; 22 of 26 layers keep 512
    v = gemma.readout_values()
    assert v["heads_reduction"] == 4 == v["n_heads"] / v["n_kv_heads"]
    assert v["layers_reduction"] == v["all_global_bytes"] / v["bytes"]  # no sharing: the windows alone
    assert v["heads_reduction"] * v["layers_reduction"] == pytest.approx(v["reduction"], rel=1e-12)
    assert readout_text(gemma).splitlines()[5] == (
        "Reduction against MHA of the same shape: 23.94x = 4.00x from KV heads (4 query heads / 1 KV head) × 5.99x "
        "from local layers; MHA would cache 3.49 GB (3.25 GiB)")
    shared = widgets.kv_cache_calculator("Llama-3 8B", share_every=2, window=4096, pattern="LLLG", context=8192)
    # 16 pairs share; a pair keeps what its wider layer needs: (L, L) 4,096 tokens, (L, G) 8,192, alternately
    assert shared.readout_values()["layers_reduction"] == 32 * 8192 / (8 * 4096 + 8 * 8192)
    assert " = 4.00x from KV heads (32 query heads / 8 KV heads) × 2.67x from local layers and K/V sharing;" in \
        readout_text(shared)
    deepseek = widgets.kv_cache_calculator("DeepSeek-V3 671B")  # 128 heads x (128 + 128) against 512 + 64
    assert deepseek.readout_values()["heads_reduction"] == 128 * 2 * 128 / (512 + 64)
    assert "56.89x, all from the latent instead of per-head K and V;" in readout_text(deepseek)


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
