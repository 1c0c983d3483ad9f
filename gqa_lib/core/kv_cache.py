"""A KV cache that stores only the KV heads: (batch, n_kv_heads, max_len, head_dim) for K and for V."""

from __future__ import annotations

import torch

from gqa_lib.core.checks import check_device, check_float_dtype, check_positive_int


def _available_bytes(device: torch.device) -> int | None:
    """Memory free for a new tensor on ``device``, or None where it cannot be known."""
    try:
        if device.type == "cpu":
            import psutil  # a dependency of the notebook stack (jupyter); the standard library has no such figure

            return psutil.virtual_memory().available
        if device.type == "cuda":
            return torch.cuda.mem_get_info(device)[0]
    except Exception:  # noqa: BLE001 - no figure is better than a failure here: allocation still reports
        return None
    return None


def store(name: str, slots: torch.Tensor, values: torch.Tensor) -> None:
    """Copy ``values`` into the cache's ``slots`` (a view of its buffer), rounding to the cache's dtype, and raise
    OverflowError naming ``name`` if a finite value became inf: past the dtype's largest number (65,504 in
    float16). Checked on what was stored, not against finfo.max: a value a little past it still rounds down to
    it. Every cache of the series stores through here (KVCache, MLACache, LatentCache)."""
    slots.copy_(values)
    overflow = torch.isinf(slots) & torch.isfinite(values.to(slots.device))
    if overflow.any():
        largest = values[overflow.to(values.device)].abs().max().item()
        raise OverflowError(f"{name} holds {largest:,.6g}, past {slots.dtype}'s largest number "
                            f"{torch.finfo(slots.dtype).max:,.6g}: it would be stored as inf and make the output "
                            "NaN; keep this cache in torch.float32 or torch.bfloat16, or scale the values")


class KVCache:
    """Keys and values of the tokens seen so far, for one attention layer.

    Space for ``max_len`` tokens is taken once, up front, so ``nbytes`` is exactly what
    ``kv_cache_bytes(1, n_kv_heads, head_dim, max_len, batch, element_size)`` predicts.
    ``dtype`` must be one of float32, float16, bfloat16, float64 (TypeError for a string, ValueError for an
    integer or fp8 dtype, which need scales this cache does not keep); a cache larger than the free memory
    of ``device`` is refused with MemoryError, which gives the size in GB (10**9 bytes).
    """

    def __init__(self, batch: int, n_kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        for name, v in (("batch", batch), ("n_kv_heads", n_kv_heads), ("head_dim", head_dim), ("max_len", max_len)):
            check_positive_int(name, v)
        dtype = check_float_dtype("dtype", dtype)
        device = check_device("device", device)
        self.batch, self.n_kv_heads, self.head_dim, self.max_len = batch, n_kv_heads, head_dim, max_len
        shape = (batch, n_kv_heads, max_len, head_dim)
        need = 2 * batch * n_kv_heads * max_len * head_dim * torch.empty(0, dtype=dtype).element_size()  # K and V
        asked = (f"KVCache(batch={batch}, n_kv_heads={n_kv_heads}, head_dim={head_dim}, max_len={max_len}, "
                 f"dtype={dtype}) needs {need / 1e9:,.1f} GB for K and V on {device}")
        free = _available_bytes(device)
        if free is not None and need > free:
            raise MemoryError(f"{asked}, but only {free / 1e9:,.1f} GB is free; lower max_len or batch")
        try:
            self.k = torch.zeros(shape, dtype=dtype, device=device)
            self.v = torch.zeros_like(self.k)
        except (RuntimeError, MemoryError) as err:  # torch.OutOfMemoryError is a RuntimeError
            raise MemoryError(f"{asked}, and could not have it: {err}") from None
        self.length = 0  # tokens stored so far

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values of shape (batch, n_kv_heads, new, head_dim); return all stored so far.

        Keys and values are rounded to the cache's dtype (a cache may be kept in lower precision). A finite
        value too large for that dtype (above 65,504 in float16) is refused with OverflowError naming k or v,
        its size and the dtype's largest number, and nothing is stored: it would become inf, and the
        attention output NaN.
        """
        want = (self.batch, self.n_kv_heads, "new", self.head_dim)
        for name, t in (("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}={type(t).__name__} must be a tensor of shape {want}")
            if t.ndim != 4 or t.shape[0] != self.batch or t.shape[1] != self.n_kv_heads or t.shape[3] != self.head_dim:
                raise ValueError(f"{name}.shape={tuple(t.shape)} does not match the cache; expected {want}")
            if not t.is_floating_point():
                raise TypeError(f"{name}.dtype={t.dtype} must be a floating dtype, like the cache's {self.k.dtype}")
        if k.shape != v.shape:
            raise ValueError(f"k.shape={tuple(k.shape)} and v.shape={tuple(v.shape)} must be equal")
        new = k.shape[2]
        if self.length + new > self.max_len:
            raise ValueError(
                f"cache is full: {self.length} stored + {new} new > max_len={self.max_len}; make a larger KVCache")
        end = self.length + new
        store("k", self.k[:, :, self.length:end], k)
        store("v", self.v[:, :, self.length:end], v)
        self.length = end  # only once both fit: a refused token is not counted
        return self.k[:, :, :self.length], self.v[:, :, :self.length]

    def reset(self) -> None:
        self.length = 0
