"""Every public function and widget builder of gqa_lib, given bad input, fails at once with a clear message.

"Clear" means the message names the argument, shows the value it got and says what would be valid
(or how to fix it, for files). "At once" means before any expensive work: no model is loaded, no
figure drawn, in well under a few seconds. Each case below is one thing a reader could get wrong.

Cases that gqa_lib does not handle well yet are marked ``xfail(strict=True)`` with the defect in the
reason: when the library is fixed the mark must go (the test then fails as XPASS, on purpose).
tests/test_bad_input.py pins more messages of the core modules; this file covers the whole package,
the widgets, the model file and the data file.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import shutil
import time
from dataclasses import dataclass, field

import pytest
import torch

from gqa_lib import widgets
from gqa_lib.core import attention, cache_math, diversity, kv_head_conversion, layout, mla, rope
from gqa_lib.core.kv_cache import KVCache
from gqa_lib.experiments import results
from gqa_lib.models import catalog, smollm, tiny_lm
from gqa_lib.pictures import group_map, heatmaps, style

AT_ONCE_S = 5.0  # generous for a loaded 2-core machine; the checks themselves take microseconds
LLAMA3 = layout.AttentionLayout(32, 8, 128, 32)
TINY = tiny_lm.TinyLMConfig(n_layers=1, d_model=16, n_heads=2, n_kv_heads=1, d_ff=16, max_len=16)


@dataclass
class Case:
    id: str
    call: object  # a function of no arguments that must raise
    exc: type | tuple
    needles: list[str] = field(default_factory=list)  # each must appear in the message
    defect: str | None = None  # set when gqa_lib fails badly here (reported to the lead)


def case(id, call, exc, *needles, defect=None):
    return Case(id, call, exc, list(needles), defect)


CASES = [
    # layout
    case("divisors-zero", lambda: layout.divisors(0), ValueError, "n=0", "positive integer"),
    case("divisors-string", lambda: layout.divisors("12"), TypeError, "n='12'", "positive integer", "got str"),
    case("layout-kv-not-divisor", lambda: layout.AttentionLayout(32, 3, 128), ValueError,
         "n_kv_heads=3", "n_heads=32", "valid: 1, 2, 4, 8, 16, 32"),
    case("layout-bool-heads", lambda: layout.AttentionLayout(True, 1, 8), TypeError, "n_heads=True", "got bool"),
    case("layout-query-head-out-of-range", lambda: LLAMA3.kv_head_of(32), ValueError, "query_head=32", "0..31"),
    case("layout-kv-head-negative", lambda: LLAMA3.query_heads_of(-1), ValueError, "kv_head=-1", "0..7"),
    case("attention-kind-zero-kv", lambda: layout.attention_kind(8, 0), ValueError, "n_kv_heads=0", "positive"),
    # cache arithmetic
    case("kv-cache-negative-seq", lambda: cache_math.kv_cache_bytes(32, 8, 128, -5), ValueError,
         "seq_len=-5", "positive integer"),
    case("kv-cache-float-bytes", lambda: cache_math.kv_cache_bytes(32, 8, 128, 1024, bytes_per_elem=2.5), TypeError,
         "bytes_per_elem=2.5", "positive integer"),
    case("kv-cache-float-layers", lambda: cache_math.kv_cache_bytes(32.0, 8, 128, 1024), TypeError,
         "n_layers=32.0", "got float"),
    case("dtype-unknown", lambda: cache_math.dtype_bytes("float32"), ValueError,
         "dtype='float32'", "valid: fp32, fp16, bf16, fp8, int8"),
    case("dtype-none", lambda: cache_math.dtype_bytes(None), ValueError, "dtype=None", "valid: fp32"),
    case("layout-cache-unknown-dtype", lambda: cache_math.layout_cache_bytes(LLAMA3, 1024, dtype="fp64"), ValueError,
         "dtype='fp64'", "valid: fp32"),
    case("format-bytes-unit-lowercase", lambda: cache_math.format_bytes(10**9, "gb"), ValueError,
         "unit='gb'", "valid: B, KB, MB, GB"),
    case("format-bytes-negative", lambda: cache_math.format_bytes(-1), ValueError, "n_bytes=-1", "non-negative"),
    case("auto-format-negative", lambda: cache_math.auto_format_bytes(-5), ValueError, "n_bytes=-5", "non-negative"),
    case("auto-format-string", lambda: cache_math.auto_format_bytes("1000"), (TypeError, ValueError),
         "n_bytes='1000'", "number"),
    case("bytes-per-token-not-a-layout", lambda: cache_math.bytes_per_token("32x8"), (TypeError, ValueError),
         "layout='32x8'", "AttentionLayout"),
    case("mla-cache-negative-rope", lambda: cache_math.mla_cache_bytes(60, 512, -1, 1024), ValueError,
         "d_rope=-1", "non-negative"),
    case("reduction-kv-not-divisor", lambda: cache_math.reduction_vs_mha(32, 5), ValueError,
         "n_kv_heads=5", "valid: 1, 2, 4, 8, 16, 32"),
    # models and data
    case("model-unknown-suggests", lambda: catalog.get_model("llama-3 8b"), KeyError,
         "name='llama-3 8b'", "Did you mean: Llama-3 8B"),
    case("model-none", lambda: catalog.get_model(None), KeyError, "name=None", "Known: GPT-2 small"),
    case("model-mla-has-no-layout", lambda: catalog.get_model("DeepSeek-V3 671B").layout, ValueError,
         "DeepSeek-V3 671B", "MLA"),
    case("model-cache-zero-tokens", lambda: catalog.get_model("Llama-3 8B").cache_bytes(0), ValueError,
         "seq_len=0", "positive integer"),
    case("model-cache-fp4", lambda: catalog.get_model("Llama-3 8B").cache_bytes(dtype="fp4"), ValueError,
         "dtype='fp4'", "valid: fp32"),
    # attention, cache, rope, conversion, tiny LM
    case("gqa-layer-kv-not-divisor", lambda: attention.GroupedQueryAttention(64, 8, 3), ValueError,
         "n_kv_heads=3", "valid: 1, 2, 4, 8"),
    case("gqa-layer-width-not-divisible", lambda: attention.GroupedQueryAttention(30, 8, 2), ValueError,
         "d_model=30", "n_heads=8", "pass head_dim"),
    case("gqa-layer-input-2d", lambda: attention.GroupedQueryAttention(32, 8, 2)(torch.randn(4, 32)), ValueError,
         "x.shape=(4, 32)", "(batch, seq, d_model=32)"),
    case("expand-kv-zero-group", lambda: attention.expand_kv(torch.randn(1, 2, 3, 4), 0), ValueError,
         "group_size=0", "positive integer"),
    case("grouped-attention-kv-not-divisor",
         lambda: attention.grouped_attention(torch.randn(1, 8, 4, 16), torch.randn(1, 3, 4, 16),
                                             torch.randn(1, 3, 4, 16)), ValueError, "n_kv_heads=3", "n_heads=8"),
    case("causal-mask-more-queries-than-keys", lambda: attention.causal_mask(4, 2), ValueError,
         "n_queries=4", "n_keys=2"),
    case("kv-cache-overflow", lambda: KVCache(1, 2, 4, 2).append(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)),
         ValueError, "cache is full", "max_len=2"),
    case("kv-cache-wrong-heads", lambda: KVCache(1, 2, 4, 8).append(torch.randn(1, 3, 1, 4), torch.randn(1, 3, 1, 4)),
         ValueError, "k.shape=(1, 3, 1, 4)", "expected (1, 2, 'new', 4)"),
    case("rope-odd-head-dim", lambda: rope.RotaryEmbedding(7), ValueError, "head_dim=7", "even"),
    case("rope-negative-base", lambda: rope.RotaryEmbedding(8, base=-1), ValueError, "base=-1", "positive"),
    case("convert-unknown-method",
         lambda: kv_head_conversion.reduce_kv_heads(attention.GroupedQueryAttention(64, 8, 4), 2, method="avg"),
         ValueError, "method='avg'", "valid: mean, first, random"),
    case("convert-more-kv-heads",
         lambda: kv_head_conversion.reduce_kv_heads(attention.GroupedQueryAttention(64, 8, 2), 4), ValueError,
         "n_kv_heads=4", "n_kv_heads=2"),
    case("tiny-lm-config-kv", lambda: tiny_lm.TinyLMConfig(n_heads=8, n_kv_heads=3), ValueError,
         "n_kv_heads=3", "valid: 1, 2, 4, 8"),
    case("tiny-lm-generate-too-long", lambda: tiny_lm.TinyLM(TINY).generate(tiny_lm.encode("hi"), 20), ValueError,
         "n_new=20", "max_len=16"),
    case("tiny-lm-1d-ids", lambda: tiny_lm.TinyLM(TINY)(torch.tensor([1, 2])), ValueError,
         "idx.shape=(2,)", "(batch, seq)"),
    # diversity, pictures, results
    case("diversity-not-square", lambda: diversity.head_diversity(torch.rand(3, 4, 5)), ValueError,
         "weights.shape=(3, 4, 5)", "(n_heads, seq, seq)"),
    case("diversity-group-not-divisor",
         lambda: diversity.within_across_diversity(torch.rand(9, 4, 4).softmax(-1), 4), ValueError,
         "group_size=4", "n_heads=9"),
    case("kind-colour-unknown", lambda: style.kind_color("XQA"), ValueError, "kind='XQA'", "valid: MHA, GQA"),
    case("group-diagram-order", lambda: group_map.kv_head_map(8, 2, order="zigzag"), ValueError,
         "order='zigzag'", "valid: contiguous"),
    case("heatmap-not-square", lambda: heatmaps.check_head_maps(torch.rand(2, 3, 4)), ValueError,
         "weights.shape=(2, 3, 4)", "(n_heads, seq, seq)"),
    case("mla-odd-rope", lambda: mla.MultiHeadLatentAttention(64, 4, 32, 7, 16), ValueError, "d_rope=7", "even"),
    case("mla-unknown-mode", lambda: mla.check_mode("fast"), ValueError, "mode='fast'", "valid: explicit, absorbed"),
    case("results-no-rows", lambda: results.format_results([], {}), ValueError, "rows", "empty"),
    case("results-ragged-rows", lambda: results.format_results([{"a": 1}, {"b": 2}], {}), ValueError,
         "row 1", "['a']"),
    # smollm inputs (checked before the model is loaded: see test_smollm_checks_input_before_loading)
    case("smollm-layer-out-of-range", lambda: smollm.capture("hi", layer=30), ValueError, "layer=30", "0..29"),
    # widget builders
    case("calculator-unknown-preset", lambda: widgets.kv_cache_calculator("Llama 3 8B"), KeyError,
         "name='Llama 3 8B'", "Did you mean: Llama-3 8B"),
    case("calculator-custom-spelling", lambda: widgets.kv_cache_calculator("(custom)"), ValueError,
         "preset='(custom)'", "preset='custom'"),
    case("group-explorer-kv", lambda: widgets.group_explorer(n_heads=32, n_kv_heads=5), ValueError,
         "n_kv_heads=5", "valid: 1, 2, 4, 8, 16, 32"),
    case("group-explorer-head-dim", lambda: widgets.group_explorer(head_dim=100), ValueError,
         "head_dim=100", "valid: 8, 16, 32, 64, 128"),
    case("group-explorer-context", lambda: widgets.group_explorer(context=5000), ValueError,
         "context=5000", "valid: 256"),
    case("group-explorer-too-many-heads", lambda: widgets.group_explorer(n_heads=100, n_kv_heads=1),
         ValueError, "n_heads=100", "valid: 1, 2"),
    case("group-explorer-dtype", lambda: widgets.group_explorer(dtype="fp64"), ValueError,
         "dtype='fp64'", "valid: fp32"),
    case("mqa-widget-unknown-preset", lambda: widgets.mqa_cache_comparison("Llama 3 8B"), (ValueError, KeyError),
         "preset='Llama 3 8B'", "Llama-3 8B"),
    case("mla-widget-unknown-setting", lambda: widgets.mla_cache_comparison(d_latent=5), ValueError,
         "d_latent", "valid: n_layers"),
    case("mla-widget-negative-latent", lambda: widgets.mla_cache_comparison(d_c=-5), ValueError,
         "d_c=-5", "positive integer"),
    case("mla-widget-kv-not-divisor", lambda: widgets.mla_cache_comparison(n_kv_heads=5), ValueError,
         "n_kv_heads=5", "valid: 1, 2, 4"),
    case("mla-widget-layers-above-slider", lambda: widgets.mla_cache_comparison(n_layers=200), ValueError,
         "n_layers=200", "1..128"),
    case("mla-widget-context-not-offered", lambda: widgets.mla_cache_comparison(seq_len=5000), ValueError,
         "seq_len=5000", "valid:", "100000"),
    case("mla-widget-head-dim-off-step", lambda: widgets.mla_cache_comparison(head_dim=100), ValueError,
         "head_dim=100", "in steps of 16"),
    case("mla-widget-rope-not-int", lambda: widgets.mla_cache_comparison(d_rope="64"), TypeError,
         "d_rope='64'", "integer"),
    case("heatmap-widget-empty-text", lambda: widgets.head_heatmap_explorer(text=""), ValueError,
         "text=''", "non-empty string"),
    case("heatmap-widget-layer", lambda: widgets.head_heatmap_explorer(layer=30), ValueError,
         "layer=30", "0..29"),
    case("heatmap-widget-head", lambda: widgets.head_heatmap_explorer(head=9), ValueError, "head=9", "0..8"),
    case("smollm-widget-group", lambda: widgets.smollm_group_explorer(group=3), ValueError,
         "group=3", "0..2"),
    case("smollm-widget-layer", lambda: widgets.smollm_group_explorer(layer=-1), ValueError,
         "layer=-1", "0..29"),
]


def _params():
    for c in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=c.defect)] if c.defect else []
        yield pytest.param(c, id=c.id, marks=marks)


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to load SmolLM2 fails the test: bad input must be refused before that."""

    def refuse():
        raise AssertionError("SmolLM2 was being loaded before the bad input was refused")

    monkeypatch.setattr(smollm, "load_smollm", refuse)


@pytest.mark.parametrize("c", _params())
def test_bad_input_fails_at_once_with_a_clear_message(c, no_model_loading):
    start = time.perf_counter()
    with pytest.raises(c.exc) as info:
        c.call()
    elapsed = time.perf_counter() - start
    message = str(info.value)
    missing = [n for n in c.needles if n not in message]
    assert not missing, f"the message lacks {missing}: {message!r}"
    assert elapsed < AT_ONCE_S, f"took {elapsed:.1f} s to refuse the input"


def test_there_are_enough_cases():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


# ---- the model file ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_gguf():
    try:
        return smollm.gguf_path()
    except smollm.ModelFileError as e:
        pytest.skip(f"the SmolLM2 file is not installed here: {e}")


def _assert_model_file_error(call, *needles):
    start = time.perf_counter()
    with pytest.raises(smollm.ModelFileError) as info:
        call()
    message = str(info.value)
    for needle in (*needles, smollm.FIX_COMMAND):
        assert needle in message, f"{needle!r} not in {message!r}"
    assert time.perf_counter() - start < AT_ONCE_S


def test_model_file_missing(tmp_path):
    missing = tmp_path / "smollm2.gguf"
    _assert_model_file_error(lambda: smollm.check_gguf(missing), str(missing), "missing")


def test_model_file_truncated(tmp_path, real_gguf):
    """A download that stopped half-way: the size tells, without reading the file."""
    damaged = tmp_path / real_gguf.name
    with open(real_gguf, "rb") as src, open(damaged, "wb") as dst:
        dst.write(src.read(1 << 20))
    _assert_model_file_error(lambda: smollm.check_gguf(damaged), str(damaged), "damaged", f"{1 << 20} bytes")


def test_model_file_corrupted_same_size(tmp_path, real_gguf):
    """One flipped byte in the middle: the SHA-256 tells."""
    damaged = tmp_path / real_gguf.name
    shutil.copyfile(real_gguf, damaged)
    with open(damaged, "r+b") as fh:
        fh.seek(damaged.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    _assert_model_file_error(lambda: smollm.check_gguf(damaged), str(damaged), "damaged", "SHA-256")


def test_model_package_not_installed(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    _assert_model_file_error(smollm.gguf_path, smollm.MODEL_FILE_INFO["package"], "not installed")


def test_model_package_without_the_file(monkeypatch):
    class EmptyDist:
        files = []

    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: EmptyDist())
    _assert_model_file_error(smollm.gguf_path, "lists no file", smollm.MODEL_FILE_INFO["file"])


def test_widgets_that_need_the_model_say_how_to_fix_a_missing_file(monkeypatch, tmp_path):
    """The explorers of notebooks 02 and 05 with the model file gone: the fix command, not a transformers trace.

    transformers is imported first so that the time measured is gqa_lib's: smollm.capture_layers imports it
    (about 10 s on a busy machine) before it looks for the file.
    """
    import transformers.models.llama.modeling_llama  # noqa: F401

    monkeypatch.setattr(smollm, "gguf_path", lambda: tmp_path / "gone.gguf")
    monkeypatch.setattr(smollm, "load_smollm", smollm.load_smollm.__wrapped__)  # skip the per-process cache
    for build in (widgets.head_heatmap_explorer, widgets.smollm_group_explorer):
        _assert_model_file_error(build, "gone.gguf", "missing")


def test_smollm_checks_input_before_loading(no_model_loading):
    """An empty sentence is refused before the model is loaded (loading takes 20 s or more)."""
    with pytest.raises(ValueError, match=r"text='' must be a non-empty string"):
        smollm.capture("", layer=0)


# ---- a malformed data record ---------------------------------------------------------------

@pytest.fixture(scope="module")
def models_json():
    return json.loads(catalog.MODELS_FILE.read_text())


def _record(raw, name):
    return next(r for r in raw["models"] if r.get("name") == name)


def _without(rec, key):
    rec.pop(key)


DATA_DEFECTS = [
    # id, change to apply to a deep copy of the parsed file, words the message must hold
    ("kv-heads-not-divisor", lambda raw: _record(raw, "Llama-3 8B").update(n_kv_heads=3),
     ["'Llama-3 8B'", "n_kv_heads=3", "n_heads=32", "valid: 1, 2, 4, 8, 16, 32"]),
    ("source-missing", lambda raw: _without(_record(raw, "Llama-3 8B"), "source"), ["'Llama-3 8B'", "source"]),
    ("source-empty", lambda raw: _record(raw, "Mistral 7B").update(source="  "), ["'Mistral 7B'", "source="]),
    ("layers-as-text", lambda raw: _record(raw, "Llama-3 8B").update(n_layers="32"),
     ["'Llama-3 8B'", "n_layers='32'", "positive integer"]),
    ("head-dim-zero", lambda raw: _record(raw, "GPT-2 small").update(head_dim=0), ["'GPT-2 small'", "head_dim=0"]),
    ("kind-contradicts-heads", lambda raw: _record(raw, "Llama-3 8B").update(attention="MHA"),
     ["'Llama-3 8B'", "attention='MHA'", "GQA"]),
    ("mla-without-dims", lambda raw: _without(_record(raw, "DeepSeek-V3 671B"), "mla"),
     ["'DeepSeek-V3 671B'", "mla"]),
    ("mla-dims-incomplete", lambda raw: _record(raw, "DeepSeek-V3 671B").update(mla={"d_c": 512}),
     ["'DeepSeek-V3 671B'", "mla=", "malformed"]),
    ("duplicate-name", lambda raw: raw["models"].append(copy.deepcopy(_record(raw, "Mistral 7B"))),
     ["'Mistral 7B'", "twice"]),
    ("record-not-an-object", lambda raw: raw["models"].insert(0, "Llama-3 8B"), ["record 0", "object"]),
    ("models-not-a-list", lambda raw: raw.update(models={"Llama-3 8B": {}}), ["list", "models"]),
]


@pytest.mark.parametrize(("change", "needles"), [pytest.param(c, n, id=i) for i, c, n in DATA_DEFECTS])
def test_malformed_data_record_is_named(models_json, change, needles):
    raw = copy.deepcopy(models_json)
    change(raw)
    with pytest.raises(catalog.ModelDataError) as info:
        catalog.parse_models(raw)
    message = str(info.value)
    assert "data/models.json" in message
    missing = [n for n in needles if n not in message]
    assert not missing, f"the message lacks {missing}: {message!r}"


def test_data_file_that_is_not_json(tmp_path):
    broken = tmp_path / "models.json"
    broken.write_text('{"models": [ {"name": "x", ')  # cut off mid-record
    with pytest.raises(catalog.ModelDataError, match=r"models\.json is not valid JSON"):
        catalog.load_models(broken)


def test_the_shipped_data_file_parses(models_json):
    """The control case: the unmodified file is accepted, so the failures above come from the changes."""
    assert len(catalog.parse_models(copy.deepcopy(models_json))) == len(models_json["models"])
