"""Attention shapes of real models, read from ``data/models.json``, each with its source.

``load_models(path)`` validates the whole file when it is read: every error names the file, the
record and the field, and says what would be valid. The parsed file is cached on what identifies
its content (the resolved path, its modification time in ns and its size), so an edited file is
read again; each call returns a new dict of frozen records, so a caller's change cannot alter
what later calls see.

Sliding-window layers: a record may carry ``"sliding_window": {"window": W, "pattern": P,
"source": S}``. ``P`` is a string of 'L' (local: keeps the last W tokens) and 'G' (global), repeated
over the layers from layer 0 (:func:`gqa_lib.core.cache_math.layer_kinds`).
"""

from __future__ import annotations

import difflib
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

from gqa_lib.core.cache_math import CacheRecipe, ElementType, as_element, dtype_bytes, kv_cache_bytes, layer_kinds
from gqa_lib.core.checks import check_positive_int
from gqa_lib.core.layout import AttentionLayout, attention_kind

DATA_DIR = Path(__file__).resolve().parents[2] / "data"
MODELS_FILE = DATA_DIR / "models.json"

_REQUIRED = ("name", "n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "context", "attention", "source")
_OPTIONAL = ("params_billion", "note", "mla", "sliding_window")
_ATTENTION = ("MHA", "GQA", "MQA", "MLA")
_DEFAULT_NAME = "data/models.json"


class ModelDataError(ValueError):
    """A record in a models file (``data/models.json`` or the file passed to ``load_models``) is malformed."""


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
class SlidingWindow:
    """Which layers attend within a window, and how wide it is (tokens), with where that was read."""

    window: int  # tokens a local layer keeps
    pattern: str  # 'L' local / 'G' global, repeated over the layers from layer 0
    source: str


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
    sliding_window: SlidingWindow | None = None

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

    def cache_recipe(self, element: str | ElementType = "bf16", share_every: int = 1) -> CacheRecipe:
        """How this model builds its cache (local layers and window from the record; MLA's latent)."""
        sw = self.sliding_window
        local = dict(pattern=sw.pattern, window=sw.window) if sw is not None else {}
        if self.mla is not None:
            return CacheRecipe(self.n_layers, element=as_element(element), share_every=share_every,
                               d_c=self.mla.d_c, d_rope=self.mla.d_rope, **local)
        return CacheRecipe(self.n_layers, self.n_kv_heads, self.head_dim, as_element(element),
                           share_every=share_every, **local)

    def cache_bytes(self, seq_len: int | None = None, batch: int = 1, dtype: str = "bf16",
                    windowed: bool = False) -> int:
        """Cache bytes at ``seq_len`` tokens (default: the released context), ``dtype`` from ``DTYPE_BYTES``.

        By default every layer keeps every token: the all-global figure, an upper bound for models
        with sliding-window layers. ``windowed=True`` gives the cache as the model is built: local
        layers keep ``min(tokens, window)`` (same as :meth:`windowed_cache_bytes`). For integer
        formats with their scales counted use :meth:`cache_recipe`.
        """
        seq_len = check_positive_int("seq_len", self.context if seq_len is None else seq_len)
        b = dtype_bytes(dtype)
        recipe = self.cache_recipe()
        numbers_per_layer = recipe.bytes_per_token_per_layer() // 2  # the recipe above is in bf16
        return numbers_per_layer * sum(recipe.tokens_per_layer(seq_len, windowed)) * check_positive_int(
            "batch", batch) * b

    def windowed_cache_bytes(self, seq_len: int | None = None, batch: int = 1, dtype: str = "bf16") -> int:
        """Cache bytes as the model is built: local (sliding-window) layers keep only their window."""
        return self.cache_bytes(seq_len, batch, dtype, windowed=True)

    def mha_cache_bytes(self, seq_len: int | None = None, batch: int = 1, dtype: str = "bf16") -> int:
        """What the cache would be if every query head had its own K and V (MHA, same shape)."""
        seq_len = self.context if seq_len is None else seq_len
        return kv_cache_bytes(self.n_layers, self.n_heads, self.head_dim, seq_len, batch, dtype_bytes(dtype))


def _check_record_int(where: str, key: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ModelDataError(f"{where}: {key}={value!r} must be {what}")


def _check_record_str(where: str, key: str, value, what: str = "a non-empty string") -> None:
    if not isinstance(value, str) or not value.strip():
        raise ModelDataError(f"{where}: {key}={value!r} must be {what}")


def _sliding_window(where: str, raw, n_layers: int, context: int) -> SlidingWindow:
    keys = ("window", "pattern", "source")
    if not isinstance(raw, dict) or set(raw) != set(keys):
        raise ModelDataError(f"{where}: sliding_window={raw!r} must be an object with exactly the keys "
                             f"{', '.join(keys)}")
    _check_record_int(where, "sliding_window.window", raw["window"])
    if raw["window"] > context:
        raise ModelDataError(f"{where}: sliding_window.window={raw['window']} is larger than context={context}; "
                             f"a window holds at most the context (valid: 1 to {context})")
    try:
        kinds = layer_kinds(n_layers, raw["pattern"])
    except (TypeError, ValueError) as e:
        raise ModelDataError(f"{where}: sliding_window.pattern does not fit: {e}") from None
    if "L" not in kinds:
        raise ModelDataError(f"{where}: sliding_window.pattern={raw['pattern']!r} has no local ('L') layer")
    _check_record_str(where, "sliding_window.source", raw["source"], "the source the window was read from")
    return SlidingWindow(raw["window"], raw["pattern"], raw["source"])


def _record_to_spec(rec: dict, index: int, file: str = _DEFAULT_NAME) -> ModelSpec:
    if not isinstance(rec, dict):
        raise ModelDataError(f"{file} record {index}: must be an object, got {type(rec).__name__}")
    where = f"{file} record {index} ({rec.get('name', '?')!r})"
    missing = [k for k in _REQUIRED if k not in rec]
    if missing:
        raise ModelDataError(f"{where}: missing field(s) {', '.join(missing)}")
    unknown = [k for k in rec if k not in _REQUIRED + _OPTIONAL]
    if unknown:
        raise ModelDataError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))} "
                             f"(valid: {', '.join(_REQUIRED + _OPTIONAL)})")
    _check_record_str(where, "name", rec["name"])
    for k in ("n_layers", "d_model", "n_heads", "head_dim", "context"):
        _check_record_int(where, k, rec[k])
    _check_record_str(where, "source", rec["source"], "a string that names where the figures come from")
    if rec["attention"] not in _ATTENTION:
        raise ModelDataError(f"{where}: attention={rec['attention']!r} is not known (valid: {', '.join(_ATTENTION)})")
    params = rec.get("params_billion")
    if params is not None and (isinstance(params, bool) or not isinstance(params, (int, float))
                               or not math.isfinite(params) or params <= 0):
        raise ModelDataError(f"{where}: params_billion={params!r} must be a positive number or null")
    if not isinstance(rec.get("note", ""), str):
        raise ModelDataError(f"{where}: note={rec['note']!r} must be a string")
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
        if isinstance(rec["n_kv_heads"], bool) or not isinstance(rec["n_kv_heads"], int):
            _check_record_int(where, "n_kv_heads", rec["n_kv_heads"])
        try:
            kind = attention_kind(rec["n_heads"], rec["n_kv_heads"])
        except (TypeError, ValueError) as e:
            raise ModelDataError(f"{where}: {e}") from None
        if kind != rec["attention"]:
            raise ModelDataError(f"{where}: attention={rec['attention']!r} but its heads make it {kind}")
    window = None
    if rec.get("sliding_window") is not None:
        window = _sliding_window(where, rec["sliding_window"], rec["n_layers"], rec["context"])
    fields = {k: rec[k] for k in _REQUIRED}
    return ModelSpec(**fields, params_billion=params, note=rec.get("note", ""), mla=mla, sliding_window=window)


def parse_models(raw: dict, file: str = _DEFAULT_NAME) -> dict[str, ModelSpec]:
    """Validate the parsed JSON of a models file and return its records by name.

    ``file`` is the name errors give for where the records came from. Raises ``ModelDataError``
    naming the file, the record and the field.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), list):
        raise ModelDataError(f"{file} must be an object with a list under 'models'")
    out: dict[str, ModelSpec] = {}
    for i, rec in enumerate(raw["models"]):
        spec = _record_to_spec(rec, i, file)
        if spec.name in out:
            raise ModelDataError(f"{file} record {i} ({spec.name!r}): the name appears twice")
        out[spec.name] = spec
    return out


def _display_name(path: Path) -> str:
    """The repository-relative name for files in the repository (data/models.json), else the path."""
    try:
        return path.resolve().relative_to(DATA_DIR.parent).as_posix()
    except ValueError:
        return str(path)


@functools.lru_cache(maxsize=8)
def _parse_file(path: Path, mtime_ns: int, size: int) -> dict[str, ModelSpec]:
    """Parse one version of a file; the key (path, mtime_ns, size) changes whenever the file does."""
    name = _display_name(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ModelDataError(f"{name} is not valid JSON: {e}") from None
    return parse_models(raw, name)


def load_models(path: str | Path = MODELS_FILE) -> dict[str, ModelSpec]:
    """All models in the data file, by name, in file order: a new dict on every call (records are frozen).

    Re-read when the file changes (cached on its path, modification time and size). A missing
    file raises ``FileNotFoundError`` naming it; malformed content ``ModelDataError`` naming the file.
    """
    path = Path(path).resolve()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"path={str(path)!r}: no models file there") from None
    return dict(_parse_file(path, st.st_mtime_ns, st.st_size))


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
