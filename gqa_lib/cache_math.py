"""How many bytes a KV cache takes: pure arithmetic, no tensors.

Per token and per layer, attention caches one key and one value vector of ``head_dim`` numbers for
every KV head: ``2 * n_kv_heads * head_dim`` numbers. MHA has ``n_kv_heads == n_heads``, MQA has 1,
GQA is between. MLA (DeepSeek-V2) caches a latent of ``d_c`` numbers plus one RoPE key of
``d_rope`` numbers shared by all heads: ``d_c + d_rope`` numbers.
"""

from __future__ import annotations

from .layout import AttentionLayout, check_positive_int

# Bytes per cached number.
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
    if isinstance(n_bytes, bool) or not isinstance(n_bytes, (int, float)) or n_bytes < 0:
        raise ValueError(f"n_bytes={n_bytes!r} must be a non-negative number")
    return f"{n_bytes / units[unit]:,.{digits}f} {unit}"


def auto_format_bytes(n_bytes: float, binary: bool = False, digits: int = 2) -> str:
    """Format bytes in the largest unit that keeps the number at or above 1 (GB-style or GiB-style)."""
    if isinstance(n_bytes, bool) or not isinstance(n_bytes, (int, float)) or n_bytes < 0:
        raise ValueError(f"n_bytes={n_bytes!r} must be a non-negative number")
    names = ["B", "KiB", "MiB", "GiB", "TiB"] if binary else ["B", "KB", "MB", "GB", "TB"]
    base = 1024 if binary else 1000
    for i in reversed(range(len(names))):
        if n_bytes >= base**i or i == 0:
            return format_bytes(n_bytes, names[i], 0 if i == 0 else digits)
    raise AssertionError("unreachable")
