"""Attention shapes of real models, read from ``data/models.json``, each with its source."""

from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass
from pathlib import Path

from .cache_math import dtype_bytes, kv_cache_bytes, mla_cache_bytes
from .layout import AttentionLayout, attention_kind

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
MODELS_FILE = DATA_DIR / "models.json"

_REQUIRED = ("name", "n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "context", "attention", "source")


class ModelDataError(ValueError):
    """A record in ``data/models.json`` is malformed."""


class UnknownModelError(KeyError):
    """A model name that is not in ``data/models.json``; the message suggests the closest names."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


@dataclass(frozen=True)
class MLADims:
    d_c: int  # latent size cached per token and layer (keys and values together)
    d_rope: int  # size of the decoupled RoPE key, shared by all heads
    d_q: int  # query latent size (not cached)
    v_head_dim: int


@dataclass(frozen=True)
class ModelSpec:
    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int | None  # None for MLA, which caches a latent instead of heads
    head_dim: int
    context: int
    attention: str  # 'MHA', 'GQA', 'MQA' or 'MLA'
    source: str
    params_billion: float | None = None
    note: str = ""
    mla: MLADims | None = None

    @property
    def layout(self) -> AttentionLayout:
        """The (n_heads, n_kv_heads, head_dim, n_layers) layout; MLA models have none."""
        if self.mla is not None:
            raise ValueError(f"{self.name} uses MLA: it caches a latent, not KV heads")
        return AttentionLayout(self.n_heads, self.n_kv_heads, self.head_dim, self.n_layers)

    @property
    def group_size(self) -> int | None:
        return None if self.n_kv_heads is None else self.n_heads // self.n_kv_heads

    def elements_per_token(self) -> int:
        """Numbers cached per token over all layers."""
        return self.cache_bytes(1, 1, "int8")

    def cache_bytes(self, seq_len: int | None = None, batch: int = 1, dtype: str = "bf16") -> int:
        """Cache bytes at ``seq_len`` tokens (default: the released context)."""
        seq_len = self.context if seq_len is None else seq_len
        b = dtype_bytes(dtype)
        if self.mla is not None:
            return mla_cache_bytes(self.n_layers, self.mla.d_c, self.mla.d_rope, seq_len, batch, b)
        return kv_cache_bytes(self.n_layers, self.n_kv_heads, self.head_dim, seq_len, batch, b)

    def mha_cache_bytes(self, seq_len: int | None = None, batch: int = 1, dtype: str = "bf16") -> int:
        """What the cache would be if every query head had its own K and V (MHA, same shape)."""
        seq_len = self.context if seq_len is None else seq_len
        return kv_cache_bytes(self.n_layers, self.n_heads, self.head_dim, seq_len, batch, dtype_bytes(dtype))


def _check_record_int(where: str, key: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ModelDataError(f"{where}: {key}={value!r} must be {what}")


def _record_to_spec(rec: dict, index: int) -> ModelSpec:
    if not isinstance(rec, dict):
        raise ModelDataError(f"data/models.json record {index}: must be an object, got {type(rec).__name__}")
    where = f"data/models.json record {index} ({rec.get('name', '?')!r})"
    missing = [k for k in _REQUIRED if k not in rec]
    if missing:
        raise ModelDataError(f"{where}: missing field(s) {', '.join(missing)}")
    if not isinstance(rec["name"], str) or not rec["name"].strip():
        raise ModelDataError(f"{where}: name={rec['name']!r} must be a non-empty string")
    for k in ("n_layers", "d_model", "n_heads", "head_dim", "context"):
        _check_record_int(where, k, rec[k])
    if not isinstance(rec["source"], str) or not rec["source"].strip():
        raise ModelDataError(f"{where}: source={rec['source']!r} must name where the figures come from")
    mla = None
    if rec["attention"] == "MLA":
        if rec["n_kv_heads"] is not None or "mla" not in rec:
            raise ModelDataError(f"{where}: an MLA record needs n_kv_heads=null and an 'mla' object")
        try:
            mla = MLADims(**rec["mla"])
        except TypeError as e:
            raise ModelDataError(f"{where}: mla={rec['mla']!r} is malformed ({e})") from None
        for k in ("d_c", "d_q", "v_head_dim"):
            _check_record_int(where, f"mla.{k}", getattr(mla, k))
        _check_record_int(where, "mla.d_rope", mla.d_rope, minimum=0)
    else:
        try:
            kind = attention_kind(rec["n_heads"], rec["n_kv_heads"])
        except (TypeError, ValueError) as e:
            raise ModelDataError(f"{where}: {e}") from None
        if kind != rec["attention"]:
            raise ModelDataError(f"{where}: attention={rec['attention']!r} but its heads make it {kind}")
    fields = {k: rec[k] for k in _REQUIRED}
    return ModelSpec(**fields, params_billion=rec.get("params_billion"), note=rec.get("note", ""), mla=mla)


def parse_models(raw: dict) -> dict[str, ModelSpec]:
    """Validate the parsed JSON of a models file and return its records by name."""
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), list):
        raise ModelDataError("data/models.json must be an object with a list under 'models'")
    out: dict[str, ModelSpec] = {}
    for i, rec in enumerate(raw["models"]):
        spec = _record_to_spec(rec, i)
        if spec.name in out:
            raise ModelDataError(f"data/models.json record {i} ({spec.name!r}): the name appears twice")
        out[spec.name] = spec
    return out


@functools.lru_cache(maxsize=4)
def load_models(path: str | Path = MODELS_FILE) -> dict[str, ModelSpec]:
    """All models in the data file, by name, in file order."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelDataError(f"{path} is not valid JSON: {e}") from None
    return parse_models(raw)


def model_names() -> list[str]:
    return list(load_models())


def get_model(name: str) -> ModelSpec:
    """One model by exact name; an unknown name raises ``UnknownModelError`` (a KeyError) naming the closest."""
    models = load_models()
    if name in models:
        return models[name]
    close = difflib.get_close_matches(str(name), models, n=3, cutoff=0.4)
    lower = [n for n in models if str(name).lower() in n.lower() and n not in close]
    hint = close + lower[: 3 - len(close)]
    suggestion = f" Did you mean: {', '.join(hint)}?" if hint else f" Known: {', '.join(models)}."
    raise UnknownModelError(f"model name={name!r} is not in data/models.json.{suggestion}")
