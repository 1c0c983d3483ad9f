"""How many bytes a KV cache takes: pure arithmetic, no tensors.

Per token and per layer, attention caches one key and one value vector of ``head_dim`` numbers for
every KV head: ``2 * n_kv_heads * head_dim`` numbers. MHA has ``n_kv_heads == n_heads``, MQA has 1,
GQA is between. MLA (DeepSeek-V2) caches a latent of ``d_c`` numbers plus one RoPE key of
``d_rope`` numbers shared by all heads: ``d_c + d_rope`` numbers.

A real model's cache is built from more than heads (see :class:`CacheRecipe`):

- **Sliding-window (local) layers** keep only the last ``window`` tokens: ``min(tokens, window)``.
  Gemma 3 1B has 5 local layers for each global one, window 512 (google/gemma_pytorch
  ``gemma/config.py``); Mistral 7B has a window of 4,096 on every layer (Jiang et al. 2023, Table 1).
- **Cross-layer sharing** (Brandon et al. 2024, "Reducing Transformer Key-Value Cache Size with
  Cross-Layer Attention"): groups of ``share_every`` adjacent layers reuse the K/V of the group's
  first layer, so only one layer in ``share_every`` stores anything.
- **The element type** (:class:`ElementType`): fp32, fp16, bf16, fp8, or int8/int4 with what they
  store beside the integers counted: by default, per group of 64 numbers of a cached vector, one
  2-byte scale and one 2-byte minimum (asymmetric, the format notebook 08 measures).
- **MLA's latent** in place of K and V.

Why one module of about 360 lines: every cache size in the series (the calculator, the widgets, notebook
08's methods, the model catalog) is one of these few pure functions of one recipe, and the byte model of a
number (``ElementType``) is shared by all of them; split up, two places would price int8 again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gqa_lib.core.checks import check_positive_int
from gqa_lib.core.layout import AttentionLayout

# Bytes per cached number, flat. 'int8' here is the integers alone (1 byte a number, no scales): the
# assumption behind published figures that ignore scales. A cache's int8 with what it stores beside
# the integers is ElementType("int8").
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}

GB = 10**9  # what disk makers and most papers mean
GIB = 2**30  # what nvidia-smi and torch.cuda report as "GB"


def dtype_bytes(dtype: str) -> int:
    """Bytes per element for a dtype name ('fp32', 'fp16', 'bf16', 'fp8', 'int8')."""
    try:
        return DTYPE_BYTES[dtype]
    except (KeyError, TypeError):
        valid = ", ".join(DTYPE_BYTES)
        raise ValueError(f"dtype={dtype!r} is not known (valid: {valid})") from None


def _check_count(name: str, value) -> int:
    return check_positive_int(name, value)


def elements_per_token_per_layer(n_kv_heads: int, head_dim: int) -> int:
    """Numbers cached for one token in one layer: a key and a value per KV head."""
    _check_count("n_kv_heads", n_kv_heads)
    _check_count("head_dim", head_dim)
    return 2 * n_kv_heads * head_dim


def mla_elements_per_token_per_layer(d_c: int, d_rope: int) -> int:
    """Numbers MLA caches for one token in one layer: the latent plus the shared RoPE key."""
    _check_count("d_c", d_c)
    if isinstance(d_rope, bool) or not isinstance(d_rope, int) or d_rope < 0:
        raise ValueError(f"d_rope={d_rope!r} must be a non-negative integer")
    return d_c + d_rope


def kv_cache_bytes(n_layers, n_kv_heads, head_dim, seq_len, batch=1, bytes_per_elem=2) -> int:
    """Bytes of a KV cache: ``2 * n_layers * n_kv_heads * head_dim * seq_len * batch * bytes_per_elem``.

    Pass ``n_kv_heads = n_heads`` for MHA and 1 for MQA.
    """
    _check_count("n_layers", n_layers)
    _check_count("seq_len", seq_len)
    _check_count("batch", batch)
    _check_count("bytes_per_elem", bytes_per_elem)
    return elements_per_token_per_layer(n_kv_heads, head_dim) * n_layers * seq_len * batch * bytes_per_elem


def mla_cache_bytes(n_layers, d_c, d_rope, seq_len, batch=1, bytes_per_elem=2) -> int:
    """Bytes of an MLA cache: ``n_layers * (d_c + d_rope) * seq_len * batch * bytes_per_elem``."""
    _check_count("n_layers", n_layers)
    _check_count("seq_len", seq_len)
    _check_count("batch", batch)
    _check_count("bytes_per_elem", bytes_per_elem)
    return mla_elements_per_token_per_layer(d_c, d_rope) * n_layers * seq_len * batch * bytes_per_elem


def layout_cache_bytes(layout: AttentionLayout, seq_len: int, batch: int = 1, dtype: str = "bf16") -> int:
    """Total cache bytes for an :class:`AttentionLayout` (all its layers)."""
    if not isinstance(layout, AttentionLayout):
        raise TypeError(f"layout={layout!r} must be an AttentionLayout(n_heads, n_kv_heads, head_dim, n_layers)")
    return kv_cache_bytes(layout.n_layers, layout.n_kv_heads, layout.head_dim, seq_len, batch, dtype_bytes(dtype))


def bytes_per_token(layout: AttentionLayout, dtype: str = "bf16") -> int:
    """Cache bytes one token adds, over all layers, batch 1."""
    return layout_cache_bytes(layout, 1, 1, dtype)


def reduction_vs_mha(n_heads: int, n_kv_heads: int) -> float:
    """How many times smaller the cache is than MHA of the same shape: ``n_heads / n_kv_heads``."""
    AttentionLayout(n_heads, n_kv_heads, 1)  # validates
    return n_heads / n_kv_heads


def format_bytes(n_bytes: float, unit: str = "GB", digits: int = 2) -> str:
    """Format bytes in a named unit: 'B', 'KB', 'MB', 'GB', 'TB' (powers of 10) or 'KiB'.. 'TiB' (powers of 2)."""
    units = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": GB, "TB": 10**12,
             "KiB": 2**10, "MiB": 2**20, "GiB": GIB, "TiB": 2**40}
    if unit not in units:
        raise ValueError(f"unit={unit!r} is not known (valid: {', '.join(units)})")
    if isinstance(digits, bool) or not isinstance(digits, int) or not 0 <= digits <= 15:
        raise ValueError(f"digits={digits!r} must be a whole number of decimals in 0..15 (a float holds about 15)")
    _check_byte_count(n_bytes)
    return f"{n_bytes / units[unit]:,.{digits}f} {unit}"


def _check_byte_count(n_bytes) -> None:
    """Refuse what is not a finite, non-negative number of bytes (nan would print as "nan GB")."""
    if isinstance(n_bytes, bool) or not isinstance(n_bytes, (int, float)):
        raise TypeError(f"n_bytes={n_bytes!r} must be a non-negative number (got {type(n_bytes).__name__})")
    if not math.isfinite(n_bytes) or n_bytes < 0:
        raise ValueError(f"n_bytes={n_bytes!r} must be a finite, non-negative number")


def auto_format_bytes(n_bytes: float, binary: bool = False, digits: int = 2) -> str:
    """Format bytes in the largest unit that keeps the number at or above 1 (GB-style or GiB-style)."""
    _check_byte_count(n_bytes)
    names = ["B", "KiB", "MiB", "GiB", "TiB"] if binary else ["B", "KB", "MB", "GB", "TB"]
    base = 1024 if binary else 1000
    for i in reversed(range(len(names))):
        if n_bytes >= base**i or i == 0:
            return format_bytes(n_bytes, names[i], 0 if i == 0 else digits)
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# A cache as a real model builds it: element types with scales, local layers, sharing, MLA
# --------------------------------------------------------------------------------------------

# Bits per stored number. int8/int4 also store a scale and a minimum per group (ElementType); the others store none.
ELEMENT_BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "fp8": 8, "int8": 8, "int4": 4}
QUANTIZED = ("int8", "int4")
# Formats a simulated cache stores (notebook 08) that the calculators do not offer: KIVI's 2-bit integers, and
# FP8 with its scales (E4M3: 4 exponent and 3 mantissa bits, largest 448; E5M2: largest 57,344).
CACHE_ONLY_BITS = {"int2": 2, "fp8_e4m3": 8, "fp8_e5m2": 8}
FP8_LARGEST = {"fp8_e4m3": 448.0, "fp8_e5m2": 57344.0}
# Where an FP8 cache's scales live: one per K and one per V tensor of a layer, one per KV head of each, or one per
# group of ``scale_group`` numbers of every cached vector (DeepSeek's FP8 latent: 128).
FP8_SCALES = ("tensor", "head", "group")
_INTEGER = (*QUANTIZED, "int2")
QUANT_GROUP = 64  # numbers of a cached vector that share one scale and one minimum, by default
LOCAL, GLOBAL = "L", "G"  # the letters of a layer pattern


class _Unset:
    """Marks a quantization setting the caller did not give: the format's own default applies."""

    def __repr__(self) -> str:
        return "<format default>"


_UNSET = _Unset()


@dataclass(frozen=True)
class ElementType:
    """How each cached number is stored, with what integer formats store beside the integers.

    ``name``: one of ``ELEMENT_BITS`` (fp32 4 bytes, fp16/bf16 2, fp8 1, int8 1, int4 half a byte).
    An int8 or int4 cache cuts every cached vector into groups of ``scale_group`` numbers (default
    ``QUANT_GROUP`` = 64; ``None``: the whole vector is one group, i.e. one group per token, per KV
    head, per K and per V, or per latent for MLA; a last, shorter group takes what is left). Each group
    stores a scale of ``scale_bytes`` bytes (default 2: fp16 or bf16) and, with ``minimum=True``
    (default), its minimum in the same format: asymmetric quantization, ``x = q * scale + minimum``
    with ``q`` in 0 .. 2**bits - 1. ``minimum=False`` is symmetric quantization, ``x = q * scale``
    with signed ``q``: the scale alone. A vector of ``n`` numbers therefore takes
    ``ceil(n * bits / 8) + ceil(n / scale_group) * scale_bytes * (2 if minimum else 1)`` bytes:
    ``ElementType("int8").vector_bytes(64) == 64 + 2 + 2 == 68``.

    The default is the format notebook 08 measures (``gqa_lib.experiments.cache_shrink``): a bf16 scale
    and a bf16 minimum per group of 64 numbers. KIVI (Liu et al. 2024, arXiv 2402.02750) is asymmetric
    too, a scale and a zero point per group, with keys grouped per channel over tokens and values per
    token; ``cache_shrink.layer_cache_bytes`` prices its key blocks with ``scale_group`` set to the block.
    Float formats store neither; giving them ``scale_group``, ``scale_bytes`` or ``minimum`` raises
    ``ValueError``, and they read back as ``scale_group=None, scale_bytes=0, minimum=False``.

    Formats only a simulated cache stores (``CACHE_ONLY_BITS``, not offered by the calculators): ``int2``
    (KIVI's 2-bit, priced as int8/int4), and ``fp8_e4m3``/``fp8_e5m2``, 1 byte a number plus scales in
    ``scale_bytes`` (default 4: float32) placed by ``fp8_scale``: 'tensor' (default; one for a layer's keys and
    one for its values), 'head' (one per KV head of each) or 'group' (one per ``scale_group`` numbers of every
    cached vector, default 128, DeepSeek's FP8 latent). Per-tensor and per-head scales are stored once, not per
    token: :meth:`fixed_bytes` counts them, :meth:`vector_bytes` does not. FP8 is symmetric (no minimum).
    """

    name: str = "bf16"
    scale_group: int | None = _UNSET  # numbers that share one scale (and minimum); None: the whole vector
    scale_bytes: int = _UNSET  # bytes of one scale, and of one minimum (2: fp16 or bf16)
    minimum: bool = _UNSET  # True: asymmetric, a minimum (zero point) per group as well as the scale
    fp8_scale: str | None = _UNSET  # FP8 formats only: 'tensor', 'head' or 'group' (FP8_SCALES)

    def __post_init__(self):
        if self.name not in ELEMENT_BITS and self.name not in CACHE_ONLY_BITS:
            raise ValueError(f"element={self.name!r} is not known (valid: {', '.join(ELEMENT_BITS)}; "
                             f"simulated caches also: {', '.join(CACHE_ONLY_BITS)})")
        if self.name in FP8_LARGEST:
            self._fp8_defaults()
            return
        if self.fp8_scale is not _UNSET:
            raise ValueError(f"element={self.name!r}: fp8_scale applies only to {' and '.join(FP8_LARGEST)}")
        object.__setattr__(self, "fp8_scale", None)
        given = [k for k in ("scale_group", "scale_bytes", "minimum") if getattr(self, k) is not _UNSET]
        if self.name not in _INTEGER:
            if given:
                raise ValueError(f"element={self.name!r} stores no scales; {' and '.join(given)} "
                                 f"appl{'ies' if len(given) == 1 else 'y'} only to {' and '.join(QUANTIZED)}")
            defaults = {"scale_group": None, "scale_bytes": 0, "minimum": False}
        else:
            defaults = {"scale_group": QUANT_GROUP, "scale_bytes": 2, "minimum": True}
        for key, value in defaults.items():
            if getattr(self, key) is _UNSET:
                object.__setattr__(self, key, value)
        if self.name in _INTEGER:
            if self.scale_group is not None:
                check_positive_int("scale_group", self.scale_group)
            check_positive_int("scale_bytes", self.scale_bytes)
            if not isinstance(self.minimum, bool):
                raise TypeError(f"minimum={self.minimum!r} must be True (asymmetric: a scale and a minimum per "
                                f"group) or False (symmetric: a scale only)")

    def _fp8_defaults(self) -> None:
        scope = "tensor" if self.fp8_scale is _UNSET else self.fp8_scale
        if scope not in FP8_SCALES:
            raise ValueError(f"fp8_scale={scope!r} must be one of {FP8_SCALES}")
        if self.minimum not in (_UNSET, False):
            raise ValueError(f"element={self.name!r} is symmetric: minimum must be False")
        group = self.scale_group
        if scope == "group":
            group = 128 if group is _UNSET else check_positive_int("scale_group", group)
        elif group not in (_UNSET, None):
            raise ValueError(f"scale_group={group!r} applies only to fp8_scale='group' (here {scope!r})")
        size = 4 if self.scale_bytes is _UNSET else check_positive_int("scale_bytes", self.scale_bytes)
        for key, value in {"scale_group": None if scope != "group" else group, "scale_bytes": size,
                           "minimum": False, "fp8_scale": scope}.items():
            object.__setattr__(self, key, value)

    @property
    def bits(self) -> int:
        return ELEMENT_BITS.get(self.name) or CACHE_ONLY_BITS[self.name]

    @property
    def group_bytes(self) -> int:
        """Bytes each group stores beside its integers: the scale, plus the minimum if asymmetric (0 for floats)."""
        return self.scale_bytes * (2 if self.minimum else 1)

    def groups(self, n: int) -> int:
        """How many groups a vector of ``n`` numbers is cut into (0 for floats and FP8 with stored-once scales)."""
        check_positive_int("n", n)
        if self.name not in _INTEGER and self.fp8_scale != "group":
            return 0
        return math.ceil(n / (n if self.scale_group is None else min(self.scale_group, n)))

    def fixed_bytes(self, n_kv_heads: int) -> int:
        """Bytes one layer stores once, whatever the number of tokens: an FP8 cache's per-tensor scales (one for K,
        one for V) or per-head scales (one per KV head for each); 0 for every other format."""
        check_positive_int("n_kv_heads", n_kv_heads)
        per = {"tensor": 2, "head": 2 * n_kv_heads}.get(self.fp8_scale, 0)
        return per * self.scale_bytes

    def vector_bytes(self, n: int) -> int:
        """Bytes to store one cached vector of ``n`` numbers, scales and minima included (int4 packs two a byte)."""
        check_positive_int("n", n)
        return math.ceil(n * self.bits / 8) + self.groups(n) * self.group_bytes

    def describe(self, unit: str = "channels") -> str:
        """E.g. 'bf16 (2 bytes a number)' or 'int8 + one 2-byte scale and one 2-byte minimum per 64 channels'."""
        if self.fp8_scale is not None:
            return f"{self.name} (1 byte a number) + {self.stored(unit)}"
        if self.name not in _INTEGER:
            b = self.bits // 8
            return f"{self.name} ({b} byte{'s' if b > 1 else ''} a number)"
        return f"{self.name} + {self.stored(unit)}"

    def stored(self, unit: str = "channels") -> str:
        """What an integer format stores beside its integers, e.g. 'one 2-byte scale and one 2-byte minimum per 64
        channels'; 'no scales' for a float format."""
        if self.fp8_scale is not None:
            where = {"tensor": "K and V tensor of a layer", "head": "KV head of K and of V in a layer",
                     "group": f"{self.scale_group} {unit}"}[self.fp8_scale]
            return f"one {self.scale_bytes}-byte scale per {where}"
        if self.name not in _INTEGER:
            return "no scales"
        per = "vector (per token, per KV head, per K and V)" if self.scale_group is None else \
            f"{self.scale_group} {unit}"
        minimum = f" and one {self.scale_bytes}-byte minimum" if self.minimum else ""
        return f"one {self.scale_bytes}-byte scale{minimum} per {per}"


def as_element(element) -> ElementType:
    """An :class:`ElementType` from itself or a name ('bf16', 'int8', ...)."""
    if isinstance(element, ElementType):
        return element
    if isinstance(element, str):
        return ElementType(element)
    raise TypeError(f"element={element!r} must be a name ({', '.join(ELEMENT_BITS)}) or an ElementType")


def cached_tokens(tokens: int, window: int | None = None) -> int:
    """Tokens one layer keeps: all ``tokens`` in a global layer, ``min(tokens, window)`` in a local one."""
    check_positive_int("tokens", tokens)
    if window is None:
        return tokens
    return min(tokens, check_positive_int("window", window))


def layer_kinds(n_layers: int, pattern: str = GLOBAL) -> str:
    """The kind of every layer, 'L' (local, sliding window) or 'G' (global), from a repeating pattern.

    The pattern is repeated over the layers from layer 0, as Gemma 3's config repeats its
    ``attn_types``: ``layer_kinds(26, "LLLLLG")`` makes layers 5, 11, 17 and 23 global, 22 local.
    A pattern longer than the model (``len(pattern) > n_layers``) does not fit and raises.
    """
    check_positive_int("n_layers", n_layers)
    if not isinstance(pattern, str) or not pattern or set(pattern) - {LOCAL, GLOBAL}:
        raise ValueError(f"pattern={pattern!r} must be a non-empty string of 'L' (local) and 'G' (global)")
    if len(pattern) > n_layers:
        raise ValueError(f"pattern={pattern!r} has {len(pattern)} layers, more than n_layers={n_layers}")
    return (pattern * (n_layers // len(pattern) + 1))[:n_layers]


def storing_layers(n_layers: int, share_every: int = 1) -> list[int]:
    """Layers that store K/V when groups of ``share_every`` adjacent layers share one: 0, k, 2k, ..."""
    check_positive_int("n_layers", n_layers)
    check_positive_int("share_every", share_every)
    if share_every > n_layers:
        raise ValueError(f"share_every={share_every} must be at most n_layers={n_layers}")
    return list(range(0, n_layers, share_every))


@dataclass(frozen=True)
class CacheRecipe:
    """How a model builds its cache, layer by layer; every size comes from this pure description.

    Per storing layer and token it caches either K and V for ``n_kv_heads`` heads of ``head_dim``
    (MHA/GQA/MQA), or, with ``d_c`` set, MLA's latent of ``d_c`` plus a RoPE key of ``d_rope``
    numbers (``n_kv_heads``/``head_dim`` then unused). ``pattern`` repeats over the layers ('L' local,
    'G' global); local layers keep ``window`` tokens at most. ``share_every`` adjacent layers share
    one layer's K/V: the first of each group stores it, as many tokens as the group's most demanding layer
    reads (a group with a global layer keeps the whole context, though its local layers read only the last
    ``window`` of it). Units: bytes.
    """

    n_layers: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    element: ElementType = ElementType()
    pattern: str = GLOBAL
    window: int | None = None
    share_every: int = 1
    d_c: int | None = None
    d_rope: int = 0

    def __post_init__(self):
        object.__setattr__(self, "element", as_element(self.element))
        kinds = layer_kinds(self.n_layers, self.pattern)
        storing_layers(self.n_layers, self.share_every)
        if self.d_c is None:
            check_positive_int("n_kv_heads", self.n_kv_heads)
            check_positive_int("head_dim", self.head_dim)
        else:
            mla_elements_per_token_per_layer(self.d_c, self.d_rope)  # validates
        if LOCAL in kinds:
            if self.window is None:
                raise ValueError(f"pattern={self.pattern!r} has local layers but window=None; give the window")
            check_positive_int("window", self.window)
        elif self.window is not None:
            raise ValueError(f"window={self.window} but pattern={self.pattern!r} has no local ('L') layer")

    @property
    def is_mla(self) -> bool:
        return self.d_c is not None

    def bytes_per_token_per_layer(self) -> int:
        """Bytes one storing layer adds per token: 2 * n_kv_heads vectors of head_dim, or the latent + RoPE key."""
        e = self.element
        if self.is_mla:
            return e.vector_bytes(self.d_c) + (e.vector_bytes(self.d_rope) if self.d_rope else 0)
        return 2 * self.n_kv_heads * e.vector_bytes(self.head_dim)

    def tokens_per_layer(self, tokens: int, windowed: bool = True) -> list[int]:
        """Tokens each layer keeps (0 for a layer that reuses another's K/V).

        A storing layer keeps what every layer of its sharing group reads, each by its own kind: letting the
        storing layer's kind decide once priced Gemma 3 1B with pairs sharing at 6,815,744 bytes for 32,768
        tokens, less than its 4 global layers alone need.
        """
        kinds = layer_kinds(self.n_layers, self.pattern)
        needs = [cached_tokens(tokens, self.window if (windowed and kind == LOCAL) else None) for kind in kinds]
        kept = [0] * self.n_layers
        for first in storing_layers(self.n_layers, self.share_every):
            kept[first] = max(needs[first:first + self.share_every])
        return kept

    def cache_bytes(self, tokens: int, batch: int = 1, windowed: bool = True) -> int:
        """Bytes of the whole cache for ``batch`` sequences of ``tokens`` tokens.

        ``windowed=False`` gives the all-global figure: every layer kept the whole context (an
        upper bound for a model with local layers).
        """
        check_positive_int("batch", batch)
        return self.bytes_per_token_per_layer() * sum(self.tokens_per_layer(tokens, windowed)) * batch

    def local_layers(self) -> int:
        """How many layers are local (sliding window)."""
        return layer_kinds(self.n_layers, self.pattern).count(LOCAL)
