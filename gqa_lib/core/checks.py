"""Argument checks and their messages, one home for all of them (the bottom of ``core``).

Every public function of the series checks its arguments before any work and names the argument, its value
and what is valid in the message ("n_kv_heads=3 must divide n_heads=32 (valid: 1, 2, 4, 8, 16, 32)").
The checks that several layers need live here; a check that only one module needs stays with it.
"""

from __future__ import annotations

import math

import torch

# What a learner may type for a dtype, and the torch dtype meant (for the error message only).
DTYPE_SPELLINGS = {"fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
                   "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
                   "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp64": torch.float64, "float64": torch.float64,
                   "int8": torch.int8}
FLOAT_DTYPES = "torch.float32, torch.float16, torch.bfloat16, torch.float64"
CACHE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)  # the ones FLOAT_DTYPES names
LISTED_DIVISORS_MAX_N = 10**12  # above this, messages list only the divisors found up to SMALL_DIVISOR_SEARCH
SMALL_DIVISOR_SEARCH = 10**5


def refuse_dtype_names(call: str, args, kwargs) -> None:
    """Raise if a module's ``.to(...)`` got a dtype's name as a string: torch would read it as a device and
    answer "Invalid device string: 'bf16'"."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, str) and value in DTYPE_SPELLINGS:
            raise TypeError(f"{call}({value!r}): {value!r} is the name of a dtype, and a string here means a device; "
                            f"pass the dtype itself, {call}({DTYPE_SPELLINGS[value]})")



def divisors(n: int) -> list[int]:
    """Every positive divisor of ``n``, ascending: the valid ``n_kv_heads`` for ``n_heads = n``.

    Divisors come in pairs (d, n // d) with d <= sqrt(n), so trying d up to sqrt(n) finds them all:
    O(sqrt n) steps, a tenth of a second for n = 10**12.
    """
    check_positive_int("n", n)
    small, large = [], []
    for d in range(1, math.isqrt(n) + 1):
        if n % d == 0:
            small.append(d)
            if d != n // d:
                large.append(n // d)
    return small + large[::-1]


def format_choices(values, head: int = 6, tail: int = 3, complete: bool = True) -> str:
    """``values`` joined by ', ', shortened to the first ``head`` and last ``tail`` when there are more.

    >>> format_choices(range(1, 21))
    '1, 2, 3, 4, 5, 6, ..., 18, 19, 20 (20 in all)'
    """
    values = list(values)
    if len(values) <= head + tail + 1:
        return ", ".join(map(str, values))
    count = f" ({len(values)} in all)" if complete else ""
    return ", ".join(map(str, values[:head])) + ", ..., " + ", ".join(map(str, values[-tail:])) + count


def valid_kv_heads_text(n_heads: int) -> str:
    """The valid ``n_kv_heads`` for ``n_heads`` as a message shows them: every divisor, shortened if many.

    For an ``n_heads`` above LISTED_DIVISORS_MAX_N the full list would take long to find; the text then
    gives the divisors up to SMALL_DIVISOR_SEARCH and their partners, and says the list is partial.
    """
    if n_heads <= LISTED_DIVISORS_MAX_N:
        return format_choices(divisors(n_heads))
    found = [d for d in range(1, SMALL_DIVISOR_SEARCH + 1) if n_heads % d == 0]
    found = sorted({*found, *(n_heads // d for d in found)})
    unsearched = f"divisors between {SMALL_DIVISOR_SEARCH} and n_heads // {SMALL_DIVISOR_SEARCH} not searched"
    return f"{format_choices(found, complete=False)}; {unsearched}"


def check_positive_int(name: str, value) -> int:
    """Return ``value`` if it is a positive int, else raise naming the argument and its value."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} must be a positive integer (got {type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name}={value} must be a positive integer (1 or more)")
    return value


def check_kv_heads(n_heads: int, n_kv_heads: int) -> None:
    """Raise unless ``n_kv_heads`` divides ``n_heads``; the message lists the valid choices."""
    check_positive_int("n_heads", n_heads)
    check_positive_int("n_kv_heads", n_kv_heads)
    if n_heads % n_kv_heads:
        valid = valid_kv_heads_text(n_heads)
        raise ValueError(f"n_kv_heads={n_kv_heads} must divide n_heads={n_heads} (valid: {valid})")


def check_float_dtype(name: str, dtype) -> torch.dtype:
    """Return ``dtype`` if it is a floating torch dtype, else raise naming ``name`` and the valid ones.

    A string such as 'bf16' gets the torch dtype it probably means; an integer dtype is refused,
    because copying keys and values into it truncates them (a quantized cache needs scales too).
    """
    if not isinstance(dtype, torch.dtype):
        meant = DTYPE_SPELLINGS.get(dtype) if isinstance(dtype, str) else None
        hint = f" (did you mean {meant}?)" if meant is not None else ""
        raise TypeError(f"{name}={dtype!r} must be a torch dtype{hint}; valid: {FLOAT_DTYPES}")
    if not dtype.is_floating_point:
        raise ValueError(f"{name}={dtype} is not a floating dtype: storing keys and values in it would truncate "
                         "them (an int8 cache needs per-block scales, which KVCache does not keep); "
                         f"valid: {FLOAT_DTYPES}")
    if dtype not in CACHE_DTYPES:  # the fp8 types: 3 or 2 mantissa bits and a top of 448 or 57,344 need scales
        raise ValueError(f"{name}={dtype} is not one of the listed types: fp8 (a top of 448 or 57,344, 3 or 2 "
                         "mantissa bits) needs scales per tensor or per head to hold keys and values, which this "
                         f"code does not keep; valid: {FLOAT_DTYPES}")
    return dtype


def check_device(name: str, device) -> torch.device:
    """``device`` as a torch.device ('cpu', 'cuda', 'cuda:0', 'mps' or a torch.device), else raise naming ``name``."""
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        meant = DTYPE_SPELLINGS.get(device) if isinstance(device, str) else None
        hint = f" ({device!r} names a dtype: pass dtype={meant})" if meant is not None else ""
        raise ValueError(f"{name}={device!r} is not a device{hint}; valid: 'cpu', 'cuda', 'cuda:0', 'mps' "
                         "or a torch.device") from None


def check_even_positive(name: str, value) -> int:
    """RoPE rotates pairs of numbers, so its sizes must be even."""
    check_positive_int(name, value)
    if value % 2:
        raise ValueError(f"{name}={value} must be even: RoPE rotates pairs of numbers (valid: 2, 4, 6, ...)")
    return value


def check_real(name: str, value, low: float | None = None, high: float | None = None, low_ok: bool = True) -> float:
    """``value`` if it is a finite real number in [low, high] (``low`` itself only if ``low_ok``), else raise."""
    import numbers

    lo = "" if low is None else (f"{low} or more" if low_ok else f"more than {low}")
    hi = "" if high is None else f"at most {high}"
    valid = " and ".join(filter(None, [lo, hi])) or "finite"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={value!r} must be a number, {valid} (got {type(value).__name__})")
    if not math.isfinite(value) or (low is not None and (value < low or (value == low and not low_ok))) or (
            high is not None and value > high):
        raise ValueError(f"{name}={value!r} must be a finite number, {valid}")
    return value


def closest_divisor(n_heads: int, wanted: int) -> int:
    """The divisor of ``n_heads`` closest to ``wanted`` (the smaller one on a tie)."""
    return min(divisors(n_heads), key=lambda d: (abs(d - wanted), d))


def check_index(name: str, value, n: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
        raise ValueError(f"{name}={value!r} must be an integer in 0..{n - 1}")
    return value


def check_text(text) -> str:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text={text!r} must be a non-empty string")
    return text


# Non-finite values are refused rather than passed on. In a causal pass a masked position gets weight 0,
# but 0 * nan = nan, so one nan or inf in a *later* token's value would turn every earlier token's output
# into nan, while token-by-token decoding (which never sees later tokens) gives finite outputs: the two
# paths would disagree. Keeping them equal would need a kernel that skips masked values instead of
# multiplying them by 0, which PyTorch's fused attention does not offer; and a nan in the input is a
# bug upstream that the learner wants to hear about at the token where it appears. So both paths stop
# there, with the position, before anything is cached.

NON_FINITE_WHY = ("; attention refuses it: in a causal pass a masked nan still multiplies its weight of 0 and "
                  "would turn every earlier token's output into nan, which token-by-token decoding would not. "
                  "Find where the value became non-finite (torch.isfinite) and clean it first.")


def first_non_finite(t: torch.Tensor, seq_dim: int = -2, start_pos: int = 0) -> str | None:
    """Where ``t`` first holds a nan or inf, as 'nan at batch 0, position 3', or None if all is finite.

    The position is ``start_pos`` plus the index along ``seq_dim``.
    """
    bad = ~torch.isfinite(t)
    if not bad.any():
        return None
    index = tuple(int(i) for i in bad.nonzero()[0])
    value = t[index].item()
    return f"{value} at batch {index[0]}, position {start_pos + index[seq_dim % t.ndim]}"


def check_finite(name: str, t: torch.Tensor, seq_dim: int, why: str, start_pos: int = 0) -> None:
    """Raise naming where ``t`` first holds a nan or inf (``why`` ends the message)."""
    where = first_non_finite(t.detach(), seq_dim, start_pos)
    if where is not None:
        raise ValueError(f"{name} holds a non-finite value ({where}){why}")


def check_qkv(q, k, v, causal: bool = True) -> None:
    """Raise unless q (batch, n_heads, s_q, head_dim) and k, v (batch, n_kv_heads, s_k, head_dim) fit together:
    tensors of one floating dtype on one device, n_kv_heads dividing n_heads, and with ``causal`` s_q <= s_k."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}={type(t).__name__} must be a tensor")
        if not t.is_floating_point():
            raise TypeError(f"{name}.dtype={t.dtype} must be a floating dtype (torch.float32, torch.bfloat16, ...)")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"q.dtype={q.dtype}, k.dtype={k.dtype}, v.dtype={v.dtype} must be the same; "
                        f"cast them, e.g. k.to({q.dtype})")
    if not q.device == k.device == v.device:
        raise ValueError(f"q, k, v are on {q.device}, {k.device}, {v.device}; they must be on one device")
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v must be 4-D (batch, heads, seq, head_dim); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    b, n_heads, s_q, d = q.shape
    n_kv, s_k = k.shape[1], k.shape[2]
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"k.shape={tuple(k.shape)} and v.shape={tuple(v.shape)} must both be "
                         f"({b}, n_kv_heads, s_k, {d}) to match q.shape={tuple(q.shape)}")
    check_kv_heads(n_heads, n_kv)
    check_positive_int("head_dim", d)
    if s_k == 0:  # softmax over no keys has no answer; torch returns zeros, which look like a result
        raise ValueError("k.shape[2]=0: attention needs at least one key (an empty cache has nothing to attend "
                         "to); append the prompt's keys and values first")
    if causal and s_q > s_k:
        # Every query must be one of the keys' tokens; otherwise the first rows see nothing and turn into NaN.
        raise ValueError(f"causal attention needs s_q <= s_k, got q.shape[2]={s_q} queries for k.shape[2]={s_k} keys")


def check_layer_input(x, d_model: int, dtype: torch.dtype, finite: bool = True) -> None:
    """Raise unless ``x`` is a (batch, seq, ``d_model``) tensor in the layer's ``dtype`` (under autocast, any
    floating dtype) and, with ``finite``, holds no nan or inf: ValueError naming the shape or the first
    non-finite position, TypeError naming the dtype (torch's own error names neither). Every attention layer
    of the series checks its input here."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x={type(x).__name__} must be a tensor (batch, seq, d_model={d_model})")
    if x.ndim != 3 or x.shape[-1] != d_model:
        raise ValueError(f"x.shape={tuple(x.shape)} must be (batch, seq, d_model={d_model})")
    if not x.is_floating_point():
        raise TypeError(f"x.dtype={x.dtype} must be the layer's dtype {dtype}: token ids go through an "
                        f"embedding (nn.Embedding) first, other numbers through x.to({dtype})")
    if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):  # autocast mixes dtypes on purpose
        raise TypeError(f"x.dtype={x.dtype} does not match the layer's dtype {dtype}; pass x.to({dtype}) "
                        f"or cast the layer with layer.to({x.dtype})")
    if finite:
        check_finite("x", x, 1, NON_FINITE_WHY)
