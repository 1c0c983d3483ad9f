"""data/models.json: every record validates, carries a source and equals the checked facts table."""

import copy
import json
import re
from pathlib import Path

import pytest

from gqa_lib.models.catalog import (
    MODELS_FILE,
    ModelDataError,
    UnknownModelError,
    get_model,
    load_models,
    model_names,
    parse_models,
)

REPO = Path(__file__).resolve().parent.parent
FACTS = REPO / "data" / "reference" / "model-facts.md"  # the checked facts table, kept in the repository
# The facts table names one model by both of its releases; data/ keeps one name for it.
FACTS_ALIASES = {"DeepSeek-V3 / R1 671B": "DeepSeek-V3 671B"}


def raw_models() -> dict:
    return json.loads(MODELS_FILE.read_text())


def _leading_int(cell: str) -> int:
    return int(re.match(r"\s*(\d+)", cell).group(1))


def parse_facts_table(text: str) -> dict[str, dict]:
    """The rows of the markdown table in model-facts.md, keyed by model name (the data/ spelling)."""
    rows, header = {}, None
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        row = dict(zip(header, cells, strict=True))
        name = FACTS_ALIASES.get(row["model"], row["model"])
        fact = {"n_layers": _leading_int(row["L"]), "d_model": _leading_int(row["d"]),
                "n_heads": _leading_int(row["h"]), "head_dim": _leading_int(row["d_h"]),
                "context": _leading_int(row["ctx"]),
                "attention": row["attention"].split()[0].rstrip(":"), "src": row["src"],
                "caveat": "(" in row["ctx"] or "(" in row["attention"]}
        if fact["attention"] == "MLA":
            fact["n_kv_heads"] = None
            fact["mla"] = {"d_c": int(re.search(r"d_c = (\d+)", row["attention"]).group(1)),
                           "d_rope": int(re.search(r"d_h\^R = (\d+)", row["attention"]).group(1)),
                           "d_q": int(re.search(r"q_lora (\d+)", row["attention"]).group(1))}
            assert f"+{fact['mla']['d_rope']} RoPE" in row["d_h"]
            v_dim = re.search(r"\bv (\d+)", row["d_h"])
            if v_dim:
                fact["mla"]["v_head_dim"] = int(v_dim.group(1))
        else:
            fact["n_kv_heads"] = _leading_int(row["kv"])
        rows[name] = fact
    return rows


def test_every_record_validates_and_carries_a_source():
    models = parse_models(raw_models())
    assert len(models) >= 30
    assert list(models) == model_names() == list(load_models())
    for spec in models.values():
        assert spec.source.strip(), spec.name
        assert len(spec.source) > 10, f"{spec.name}: source {spec.source!r} is too short to find"
        if spec.attention == "MLA":
            assert spec.n_kv_heads is None and spec.mla is not None
        else:
            assert spec.layout.kind == spec.attention
            assert spec.n_heads % spec.n_kv_heads == 0


def test_records_equal_the_checked_facts_table():
    facts = parse_facts_table(FACTS.read_text())
    models = load_models()
    assert set(facts) == set(models), "data/models.json and model-facts.md list different models"
    for name, fact in facts.items():
        spec = models[name]
        for key in ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "context", "attention"):
            assert getattr(spec, key) == fact[key], f"{name}: {key} is {getattr(spec, key)}, facts say {fact[key]}"
        if "mla" in fact:
            for key, value in fact["mla"].items():
                got = getattr(spec.mla, key)
                assert got == value, f"{name}: mla.{key} is {got}, facts say {value}"
        if fact["caveat"]:  # sliding windows, local:global layers, "multigroup": the record must say so
            assert spec.note, f"{name}: the facts table adds a caveat that the record's note lacks"


def test_each_source_names_what_the_facts_table_cites():
    """A record's source shares a distinctive word (a repo, author, file or table) with the facts table's src."""
    facts, previous = parse_facts_table(FACTS.read_text()), ""
    words = lambda s: {w.lower() for w in re.findall(r"[\w.]+", s) if len(w) >= 4} - {"same", "also", "with"}
    for name, fact in facts.items():
        src = previous if fact["src"] == "same" else fact["src"]
        previous = src
        assert words(src) & words(get_model(name).source), f"{name}: {get_model(name).source!r} vs facts {src!r}"


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(UnknownModelError, match=r"name='Llama-3 8b'.*Did you mean: Llama-3 8B"):
        get_model("Llama-3 8b")
    with pytest.raises(KeyError, match=r"name='smollm'.*SmolLM2-135M"):
        get_model("smollm")


def test_model_spec_arithmetic():
    llama = get_model("Llama-3 8B")
    assert llama.group_size == 4
    assert llama.elements_per_token() == 2 * 32 * 8 * 128
    assert llama.cache_bytes() == llama.cache_bytes(seq_len=8192)  # default: the released context
    assert llama.cache_bytes(1000, batch=2, dtype="fp32") == 2 * 32 * 8 * 128 * 1000 * 2 * 4
    assert llama.mha_cache_bytes(1000) == 4 * llama.cache_bytes(1000)
    v2 = get_model("DeepSeek-V2 236B")
    assert v2.elements_per_token() == 60 * (512 + 64)
    assert v2.group_size is None
    with pytest.raises(ValueError, match="uses MLA"):
        v2.layout  # noqa: B018


def _one(record_changes: dict, index: int = 10, drop: str | None = None) -> dict:
    raw = copy.deepcopy(raw_models())
    rec = raw["models"][index]
    rec.update(record_changes)
    if drop:
        del rec[drop]
    return raw


@pytest.mark.parametrize(("changes", "drop", "message"), [
    ({}, "source", r"record 10 \('Llama-3 8B'\): missing field\(s\) source"),
    ({}, "n_kv_heads", r"record 10 \('Llama-3 8B'\): missing field\(s\) n_kv_heads"),
    ({"n_layers": 0}, None, r"record 10 \('Llama-3 8B'\): n_layers=0 must be a positive integer"),
    ({"head_dim": 12.5}, None, r"record 10 \('Llama-3 8B'\): head_dim=12.5 must be a positive integer"),
    ({"context": True}, None, r"record 10 \('Llama-3 8B'\): context=True must be a positive integer"),
    ({"n_kv_heads": 5}, None, r"record 10 \('Llama-3 8B'\): n_kv_heads=5 must divide n_heads=32 \(valid: 1, 2, 4"),
    ({"attention": "MHA"}, None, r"record 10 \('Llama-3 8B'\): attention='MHA' but its heads make it GQA"),
    ({"n_kv_heads": 32}, None, r"record 10 \('Llama-3 8B'\): attention='GQA' but its heads make it MHA"),
    ({"source": "  "}, None, r"record 10 \('Llama-3 8B'\): source='  ' must be a string that names where"),
    ({"name": ""}, None, r"record 10 \(''\): name='' must be a non-empty string"),
])
def test_malformed_record_raises_naming_the_record(changes, drop, message):
    with pytest.raises(ModelDataError, match=message):
        parse_models(_one(changes, drop=drop))


def test_malformed_mla_record_raises_naming_the_record():
    index = [r["name"] for r in raw_models()["models"]].index("DeepSeek-V2 236B")
    bad_latent = _one({}, index)
    bad_latent["models"][index]["mla"]["d_c"] = 0
    with pytest.raises(ModelDataError, match=r"\('DeepSeek-V2 236B'\): mla.d_c=0 must be a positive integer"):
        parse_models(bad_latent)
    with pytest.raises(ModelDataError, match=r"\('DeepSeek-V2 236B'\): an MLA record needs n_kv_heads=null"):
        parse_models(_one({"n_kv_heads": 8}, index))
    with pytest.raises(ModelDataError, match=r"\('DeepSeek-V2 236B'\): mla=.* is malformed"):
        parse_models(_one({"mla": {"d_c": 512}}, index))


def test_duplicate_name_raises_naming_the_record():
    raw = raw_models()
    raw["models"].append(copy.deepcopy(raw["models"][0]))
    with pytest.raises(ModelDataError, match=r"\('GPT-2 small'\): the name appears twice"):
        parse_models(raw)


def test_malformed_file_structure():
    with pytest.raises(ModelDataError, match="list under 'models'"):
        parse_models({"records": []})
    with pytest.raises(ModelDataError, match=r"record 0: must be an object, got list"):
        parse_models({"models": [["GPT-2", 12]]})


def test_invalid_json_file_names_the_file(tmp_path):
    bad = tmp_path / "models.json"
    bad.write_text("{not json")
    with pytest.raises(ModelDataError, match=r"models\.json is not valid JSON"):
        load_models(bad)


# ---- the loader: re-read on change, copies, errors naming the file and the field ----------------

def _write(path: Path, raw: dict) -> Path:
    path.write_text(json.dumps(raw))
    return path


def test_an_edited_file_is_read_again(tmp_path):
    raw = raw_models()
    f = _write(tmp_path / "models.json", raw)
    assert load_models(f)["Llama-3 8B"].context == 8192
    raw["models"][10]["context"] = 4096  # Llama-3 8B
    _write(f, raw)
    assert load_models(f)["Llama-3 8B"].context == 4096


def test_a_callers_change_does_not_reach_later_lookups():
    first = load_models()
    first.pop("Llama-3 8B")
    first["Llama-3 8B"] = "corrupted"
    assert get_model("Llama-3 8B").n_kv_heads == 8
    assert load_models()["Llama-3 8B"] is not first["Llama-3 8B"]


def test_errors_name_the_file_that_was_loaded(tmp_path):
    raw = raw_models()
    raw["models"][10]["n_layers"] = "32"  # a string where a number belongs
    f = _write(tmp_path / "my_models.json", raw)
    with pytest.raises(ModelDataError, match=r"my_models\.json record 10 \('Llama-3 8B'\): n_layers='32' must be "
                                             r"a positive integer") as info:
        load_models(f)
    assert "data/models.json" not in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"gone\.json"):
        load_models(tmp_path / "gone.json")


@pytest.mark.parametrize(("changes", "message"), [
    ({"params_billion": "8"}, r"params_billion='8' must be a positive number or null"),
    ({"params_billion": float("nan")}, r"params_billion=nan must be a positive number"),
    ({"n_kv_heads": "8"}, r"n_kv_heads='8' must be a positive integer"),
    ({"note": 5}, r"note=5 must be a string"),
    ({"attention": "gqa"}, r"attention='gqa' is not known \(valid: MHA, GQA, MQA, MLA\)"),
    ({"sliding_windw": {}}, r"unknown field\(s\) 'sliding_windw' \(valid: .*sliding_window"),
])
def test_wrongly_typed_fields_are_caught_naming_the_field(changes, message):
    with pytest.raises(ModelDataError, match=r"record 10 \('Llama-3 8B'\): " + message):
        parse_models(_one(changes))


# ---- sliding windows ---------------------------------------------------------------------------

def test_sliding_windows_are_recorded_with_their_sources():
    gemma, mistral = get_model("Gemma 3 1B"), get_model("Mistral 7B")
    assert (gemma.sliding_window.window, gemma.sliding_window.pattern) == (512, "LLLLLG")
    assert "gemma_pytorch" in gemma.sliding_window.source
    assert (mistral.sliding_window.window, mistral.sliding_window.pattern) == (4096, "L")
    assert "Jiang et al. 2023" in mistral.sliding_window.source
    assert get_model("Llama-3 8B").sliding_window is None


def test_windowed_cache_of_gemma_and_mistral_by_hand():
    gemma = get_model("Gemma 3 1B")  # 26 layers: 4 global (5, 11, 17, 23), 22 local; 1 KV head of 256; bf16
    per_layer_token = 2 * 1 * 256 * 2
    assert gemma.cache_bytes() == 26 * 32768 * per_layer_token == 872_415_232  # all global
    assert gemma.windowed_cache_bytes() == (4 * 32768 + 22 * 512) * per_layer_token == 145_752_064
    assert gemma.cache_bytes(windowed=True) == gemma.windowed_cache_bytes()
    assert gemma.windowed_cache_bytes(400) == gemma.cache_bytes(400)  # shorter than the window: no saving
    mistral = get_model("Mistral 7B")  # every layer keeps at most 4,096 of its 8,192 tokens
    assert mistral.windowed_cache_bytes() == 2 * 32 * 8 * 128 * 4096 * 2 == mistral.cache_bytes() // 2
    llama = get_model("Llama-3 8B")
    assert llama.windowed_cache_bytes() == llama.cache_bytes()


def _gemma(window: dict | None) -> dict:
    index = [r["name"] for r in raw_models()["models"]].index("Gemma 3 1B")
    raw = _one({}, index)
    raw["models"][index]["sliding_window"] = window
    return raw


@pytest.mark.parametrize(("window", "message"), [
    ({"window": 65536, "pattern": "LLLLLG", "source": "x"},
     r"sliding_window.window=65536 is larger than context=32768; .*valid: 1 to 32768"),
    ({"window": "512", "pattern": "LLLLLG", "source": "x"}, r"sliding_window.window='512' must be a positive integer"),
    ({"window": 512, "pattern": "L" * 27, "source": "x"}, r"sliding_window.pattern does not fit: .*27 layers, more "
                                                          r"than n_layers=26"),
    ({"window": 512, "pattern": "LLX", "source": "x"}, r"sliding_window.pattern does not fit: .*'L' \(local\)"),
    ({"window": 512, "pattern": "GG", "source": "x"}, r"sliding_window.pattern='GG' has no local"),
    ({"window": 512, "pattern": "LG", "source": " "}, r"sliding_window.source=' ' must be"),
    ({"window": 512}, r"sliding_window=.* must be an object with exactly the keys window, pattern, source"),
])
def test_bad_sliding_window_is_refused_naming_the_field(window, message):
    with pytest.raises(ModelDataError, match=r"\('Gemma 3 1B'\): " + message):
        parse_models(_gemma(window))
