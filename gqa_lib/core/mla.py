"""Multi-Head Latent Attention (MLA), written from the equations of DeepSeek-V2, section 2.1.

Instead of caching a key and a value per KV head, MLA caches one small latent vector per token and
layer, from which every head's key and value are rebuilt by up-projections, plus one small key that
carries the position (RoPE) and is shared by all heads.

Paper symbol -> code (``x`` is the layer input h_t of size d_model):

    c^KV_t = W^DKV h_t                                kv_down      (batch, seq, d_c), cached
    k^C_t  = W^UK c^KV_t      (n_heads x head_dim)    k_up         rebuilt from the latent
    v^C_t  = W^UV c^KV_t      (n_heads x v_head_dim)  v_up         rebuilt from the latent
    k^R_t  = RoPE(W^KR h_t)                           k_rope_proj  (batch, seq, d_rope), cached, one for all heads
    c^Q_t  = W^DQ h_t         (only if d_q is set)    q_down       not cached
    q^C_t  = W^UQ c^Q_t       (n_heads x head_dim)    q_up         (W^Q h_t when d_q is None)
    q^R_t  = RoPE(W^QR c^Q_t) (n_heads x d_rope)      q_rope_proj
    q_{t,i} = [q^C_{t,i}; q^R_{t,i}]    k_{j,i} = [k^C_{j,i}; k^R_j]
    o_{t,i} = sum_j softmax_j(q_{t,i} . k_{j,i} / sqrt(head_dim + d_rope)) v^C_{j,i}
    u_t    = W^O [o_{t,1}; ...; o_{t,n_heads}]        o_proj

Normalisation: the paper's section 3.1.2 adds RMSNorm layers after the compressed latent vectors.
We do the same (``kv_norm`` on c^KV, ``q_norm`` on c^Q) and cache the latent *after* its norm: RMSNorm
acts on each token on its own, so the normalised latent is just as valid a thing to store, costs the
same bytes, and spares every decode step from normalising the whole history again.

Two ways to attend, with the same result:

- explicit: rebuild every head's keys and values from the cached latent, then attend as MHA does;
- absorbed: since q^C_i . (W^UK_i c) = (W^UK_i^T q^C_i) . c, move W^UK to the query side and W^UV to
  the output side and attend in latent space, directly against the cache. No per-head key or value
  is ever made. RoPE is the reason for the separate k^R: a rotation between q and W^UK would depend
  on both positions, and could not be folded into the query once.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gqa_lib.core.attention import causal_mask
from gqa_lib.core.cache_math import mla_cache_bytes
from gqa_lib.core.checks import check_even_positive, check_float_dtype, check_layer_input, check_positive_int
from gqa_lib.core.kv_cache import store
from gqa_lib.core.rope import RotaryEmbedding

MODES = ("explicit", "absorbed")


def check_mode(mode) -> str:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not known (valid: {', '.join(MODES)})")
    return mode


class MLACache:
    """What MLA keeps per layer: the latent (batch, max_len, d_c) and the RoPE key (batch, max_len, d_rope).

    Space for ``max_len`` tokens is taken up front, so ``nbytes`` equals
    ``mla_cache_bytes(1, d_c, d_rope, max_len, batch, element_size)``. There is no per-head tensor.
    """

    def __init__(self, batch: int, d_c: int, d_rope: int, max_len: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        for name, v in (("batch", batch), ("d_c", d_c), ("d_rope", d_rope), ("max_len", max_len)):
            check_positive_int(name, v)
        dtype = check_float_dtype("dtype", dtype)  # as KVCache: no integer or fp8 type, which need scales
        self.batch, self.d_c, self.d_rope, self.max_len = batch, d_c, d_rope, max_len
        self.latent = torch.zeros(batch, max_len, d_c, dtype=dtype, device=device)  # c^KV, after kv_norm
        self.k_rope = torch.zeros(batch, max_len, d_rope, dtype=dtype, device=device)  # k^R, already rotated
        self.length = 0  # tokens stored so far

    @property
    def nbytes(self) -> int:
        return self.latent.nbytes + self.k_rope.nbytes

    def expected_nbytes(self) -> int:
        """The same figure from the cache arithmetic of ``gqa_lib.core.cache_math``."""
        return mla_cache_bytes(1, self.d_c, self.d_rope, self.max_len, self.batch, self.latent.element_size())

    def append(self, latent: torch.Tensor, k_rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (batch, new, d_c) latents and (batch, new, d_rope) RoPE keys; return all stored so far."""
        for name, t, width in (("latent", latent, self.d_c), ("k_rope", k_rope, self.d_rope)):
            if t.ndim != 3 or t.shape[0] != self.batch or t.shape[2] != width:
                raise ValueError(f"{name}.shape={tuple(t.shape)} does not match the cache; "
                                 f"expected ({self.batch}, new, {width})")
        if latent.shape[1] != k_rope.shape[1]:
            raise ValueError(f"latent has {latent.shape[1]} tokens but k_rope has {k_rope.shape[1]}; they must match")
        new = latent.shape[1]
        if self.length + new > self.max_len:
            raise ValueError(
                f"cache is full: {self.length} stored + {new} new > max_len={self.max_len}; make a larger MLACache")
        store("latent", self.latent[:, self.length:self.length + new], latent)  # OverflowError past the dtype
        store("k_rope", self.k_rope[:, self.length:self.length + new], k_rope)
        self.length += new
        return self.latent[:, :self.length], self.k_rope[:, :self.length]

    def reset(self) -> None:
        self.length = 0


class MultiHeadLatentAttention(nn.Module):
    """MLA layer (DeepSeek-V2 section 2.1). Input and output: (batch, seq, d_model).

    d_c: KV latent size (cached). d_rope: size of the decoupled RoPE query/key parts (the key part is
    cached, shared by all heads). head_dim: the per-head query/key part without position ("nope").
    v_head_dim: per-head value size (default head_dim). d_q: query latent size; None projects the
    queries straight from the input, as DeepSeek-V2-Lite does.
    """

    def __init__(self, d_model: int, n_heads: int, d_c: int, d_rope: int, head_dim: int,
                 v_head_dim: int | None = None, d_q: int | None = None, *, rope_base: float = 10000.0,
                 norm_eps: float = 1e-6):
        super().__init__()
        for name, v in (("d_model", d_model), ("n_heads", n_heads), ("d_c", d_c), ("head_dim", head_dim)):
            check_positive_int(name, v)
        check_even_positive("d_rope", d_rope)
        v_head_dim = head_dim if v_head_dim is None else check_positive_int("v_head_dim", v_head_dim)
        if d_q is not None:
            check_positive_int("d_q", d_q)
        self.d_model, self.n_heads, self.d_c, self.d_rope = d_model, n_heads, d_c, d_rope
        self.head_dim, self.v_head_dim, self.d_q = head_dim, v_head_dim, d_q
        self.scale = 1.0 / math.sqrt(head_dim + d_rope)  # the query/key dot product has head_dim + d_rope terms

        if d_q is None:
            q_in = d_model
        else:
            self.q_down = nn.Linear(d_model, d_q, bias=False)  # W^DQ
            self.q_norm = nn.RMSNorm(d_q, eps=norm_eps)
            q_in = d_q
        self.q_up = nn.Linear(q_in, n_heads * head_dim, bias=False)  # W^UQ (or W^Q)
        self.q_rope_proj = nn.Linear(q_in, n_heads * d_rope, bias=False)  # W^QR
        self.kv_down = nn.Linear(d_model, d_c, bias=False)  # W^DKV
        self.kv_norm = nn.RMSNorm(d_c, eps=norm_eps)
        self.k_up = nn.Linear(d_c, n_heads * head_dim, bias=False)  # W^UK
        self.v_up = nn.Linear(d_c, n_heads * v_head_dim, bias=False)  # W^UV
        self.k_rope_proj = nn.Linear(d_model, d_rope, bias=False)  # W^KR: one RoPE key for all heads
        self.o_proj = nn.Linear(n_heads * v_head_dim, d_model, bias=False)  # W^O
        self.rope = RotaryEmbedding(d_rope, rope_base)

    def extra_repr(self) -> str:
        return (f"n_heads={self.n_heads}, d_c={self.d_c}, d_rope={self.d_rope}, head_dim={self.head_dim}, "
                f"v_head_dim={self.v_head_dim}, d_q={self.d_q}")

    def new_cache(self, batch: int, max_len: int, dtype=None, device=None) -> MLACache:
        """An empty cache for this layer: d_c + d_rope numbers per token, whatever n_heads is."""
        w = self.kv_down.weight
        return MLACache(batch, self.d_c, self.d_rope, max_len, dtype or w.dtype, device or w.device)

    def _check_x(self, x: torch.Tensor) -> None:
        """A finite (batch, seq, d_model) tensor in the weights' dtype, as GroupedQueryAttention asks: one nan
        would reach every later token's output through the causal product."""
        check_layer_input(x, self.d_model, self.kv_down.weight.dtype)

    def compress_kv(self, x: torch.Tensor, start_pos: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """What gets cached: latent (batch, seq, d_c) and rotated RoPE key (batch, seq, d_rope)."""
        self._check_x(x)
        latent = self.kv_norm(self.kv_down(x))  # (batch, seq, d_c)
        k_rope = self.rope(self.k_rope_proj(x)[:, None], start_pos)[:, 0]  # one "head": (batch, seq, d_rope)
        return latent, k_rope

    def queries(self, x: torch.Tensor, start_pos: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """q^C (batch, n_heads, seq, head_dim) and rotated q^R (batch, n_heads, seq, d_rope)."""
        self._check_x(x)
        b, s, _ = x.shape
        c_q = x if self.d_q is None else self.q_norm(self.q_down(x))  # (batch, seq, d_q or d_model)
        q_c = self.q_up(c_q).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
        q_r = self.q_rope_proj(c_q).view(b, s, self.n_heads, self.d_rope).transpose(1, 2)
        return q_c, self.rope(q_r, start_pos)

    def expand_kv(self, latent: torch.Tensor, k_rope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rebuild per-head keys (batch, n_heads, seq, head_dim + d_rope) and values (batch, n_heads, seq, v_head_dim).

        This is what the explicit form does at every step, and what the cache avoids storing.
        """
        b, s, _ = latent.shape
        k_c = self.k_up(latent).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.v_up(latent).view(b, s, self.n_heads, self.v_head_dim).transpose(1, 2)
        k_r = k_rope[:, None].expand(b, self.n_heads, s, self.d_rope)  # the same RoPE key for every head
        return torch.cat([k_c, k_r], dim=-1), v

    def attend_explicit(self, q_c, q_r, latent, k_rope, return_weights: bool = False):
        """Per-head attention against keys and values rebuilt from the latent: (batch, n_heads, s_q, v_head_dim)."""
        k, v = self.expand_kv(latent, k_rope)  # (batch, n_heads, s_k, head_dim + d_rope), (.., v_head_dim)
        q = torch.cat([q_c, q_r], dim=-1)  # (batch, n_heads, s_q, head_dim + d_rope)
        weights = self._masked_softmax(q @ k.transpose(-2, -1) * self.scale)  # (batch, n_heads, s_q, s_k)
        out = weights @ v  # (batch, n_heads, s_q, v_head_dim)
        return (out, weights) if return_weights else out

    def absorbed_key_weight(self) -> torch.Tensor:
        """W^UK per head as (n_heads, head_dim, d_c): q^C_i . (W^UK_i c) = (W^UK_i^T q^C_i) . c."""
        return self.k_up.weight.view(self.n_heads, self.head_dim, self.d_c)

    def absorbed_value_weight(self) -> torch.Tensor:
        """W^UV per head as (n_heads, v_head_dim, d_c): o_i = W^UV_i (sum_j p_ij c_j)."""
        return self.v_up.weight.view(self.n_heads, self.v_head_dim, self.d_c)

    def attend_absorbed(self, q_c, q_r, latent, k_rope, return_weights: bool = False):
        """Attention in latent space, straight against the cache; no per-head key or value is built.

        q_c (batch, n_heads, s_q, head_dim), q_r (batch, n_heads, s_q, d_rope), latent (batch, s_k, d_c),
        k_rope (batch, s_k, d_rope). Returns (batch, n_heads, s_q, v_head_dim).
        """
        b, h, s_q, _ = q_c.shape
        s_k = latent.shape[1]
        q_lat = torch.einsum("bhsd,hdc->bhsc", q_c, self.absorbed_key_weight())  # (batch, n_heads, s_q, d_c)
        # All heads read the same latent and RoPE key, so stack the heads into the rows (as MQA can):
        # one (n_heads * s_q, d_c) @ (d_c, s_k) product per sequence, the cache read once, never copied.
        scores = (q_lat.reshape(b, h * s_q, self.d_c) @ latent.transpose(1, 2)
                  + q_r.reshape(b, h * s_q, self.d_rope) @ k_rope.transpose(1, 2)) * self.scale
        weights = self._masked_softmax(scores.view(b, h, s_q, s_k))  # (batch, n_heads, s_q, s_k)
        out_lat = weights.view(b, h * s_q, s_k) @ latent  # (batch, n_heads * s_q, d_c)
        out = torch.einsum("bhsc,hvc->bhsv", out_lat.view(b, h, s_q, self.d_c), self.absorbed_value_weight())
        return (out, weights) if return_weights else out  # out: (batch, n_heads, s_q, v_head_dim)

    @staticmethod
    def _masked_softmax(scores: torch.Tensor) -> torch.Tensor:
        s_q, s_k = scores.shape[-2:]
        return scores.masked_fill(~causal_mask(s_q, s_k, scores.device), float("-inf")).softmax(dim=-1)

    def forward(self, x: torch.Tensor, cache: MLACache | None = None, mode: str = "explicit",
                return_weights: bool = False):
        """Causal attention over ``x``; with a cache, ``x`` holds the new tokens only and is appended.

        ``mode`` is 'explicit' (rebuild per-head K and V) or 'absorbed' (attend in latent space);
        both give the same output up to float rounding.
        """
        check_mode(mode)
        self._check_x(x)
        start = 0
        if cache is not None:
            if not isinstance(cache, MLACache):
                raise TypeError(f"cache={type(cache).__name__} must be an MLACache (make one with .new_cache)")
            if x.shape[0] != cache.batch or cache.d_c != self.d_c or cache.d_rope != self.d_rope:
                raise ValueError(f"cache (batch={cache.batch}, d_c={cache.d_c}, d_rope={cache.d_rope}) does not fit "
                                 f"x batch={x.shape[0]} and this layer (d_c={self.d_c}, d_rope={self.d_rope})")
            start = cache.length
        q_c, q_r = self.queries(x, start)
        latent, k_rope = self.compress_kv(x, start)
        if cache is not None:
            latent, k_rope = cache.append(latent, k_rope)  # everything so far: (batch, start + seq, ...)
            latent, k_rope = latent.to(q_c.dtype), k_rope.to(q_c.dtype)  # a cache may be stored in lower precision
        attend = self.attend_absorbed if mode == "absorbed" else self.attend_explicit
        out = attend(q_c, q_r, latent, k_rope, return_weights)
        if return_weights:
            out, weights = out
        b, _, s, _ = out.shape
        y = self.o_proj(out.transpose(1, 2).reshape(b, s, self.n_heads * self.v_head_dim))
        return (y, weights) if return_weights else y


def decode_step_traffic(n_heads: int, d_c: int, d_rope: int, head_dim: int, v_head_dim: int, seq_len: int,
                        bytes_per_elem: int = 2) -> dict[str, int]:
    """Bytes one MLA layer touches for one new token against ``seq_len`` cached tokens (batch 1).

    - ``cache_read``: the cache itself, read once by either form: seq_len * (d_c + d_rope) numbers.
    - ``explicit_built``: what the explicit form makes from it and must then read back: per-head keys
      seq_len * n_heads * (head_dim + d_rope) and values seq_len * n_heads * v_head_dim.
    - ``absorbed_built``: what the absorbed form makes that grows with seq_len: the scores (n_heads * seq_len).
    """
    for name, v in (("n_heads", n_heads), ("d_c", d_c), ("d_rope", d_rope), ("head_dim", head_dim),
                    ("v_head_dim", v_head_dim), ("seq_len", seq_len), ("bytes_per_elem", bytes_per_elem)):
        check_positive_int(name, v)
    return {
        "cache_read": seq_len * (d_c + d_rope) * bytes_per_elem,
        "explicit_built": seq_len * n_heads * (head_dim + d_rope + v_head_dim) * bytes_per_elem,
        "absorbed_built": n_heads * seq_len * bytes_per_elem,
    }


def decode_step_flops(n_heads: int, d_c: int, d_rope: int, head_dim: int, v_head_dim: int, seq_len: int,
                      mode: str = "absorbed") -> int:
    """Multiply-adds x 2 of one decode step's attention core against ``seq_len`` cached tokens (batch 1).

    Counts the parts that grow with ``seq_len`` (scores and weighted sum), plus, for the explicit form,
    rebuilding every head's keys and values from the latent. The fixed per-token projections are left out.
    """
    check_mode(mode)
    for name, v in (("n_heads", n_heads), ("d_c", d_c), ("d_rope", d_rope), ("head_dim", head_dim),
                    ("v_head_dim", v_head_dim), ("seq_len", seq_len)):
        check_positive_int(name, v)
    if mode == "absorbed":
        return 2 * n_heads * seq_len * ((d_c + d_rope) + d_c)  # scores in latent space + weighted sum of latents
    rebuild = 2 * seq_len * d_c * n_heads * (head_dim + v_head_dim)
    return rebuild + 2 * n_heads * seq_len * ((head_dim + d_rope) + v_head_dim)


def tensor_parallel_numbers(tp: int, *, n_kv_heads: int | None = None, head_dim: int | None = None,
                            d_c: int | None = None, d_rope: int = 0) -> int:
    """Numbers per token and layer that each of ``tp`` devices caches when a layer's query heads are split
    ``tp`` ways (tensor parallelism).

    MHA, GQA, MQA (give ``n_kv_heads`` and ``head_dim``): a device keeps the key and value of the KV heads its
    query heads read, ``n_kv_heads / tp`` of them, and at least one whole KV head: with more devices than
    KV heads, each KV head is copied on ``tp / n_kv_heads`` devices. ``tp`` must divide ``n_kv_heads`` or be
    a multiple of it, so that every device's query heads read whole KV heads.

    MLA (give ``d_c`` and ``d_rope``): every head's key and value are rebuilt from the same latent, and every
    head scores the same RoPE key, so there is nothing to split by head: each device keeps all
    ``d_c + d_rope`` numbers, whatever ``tp`` is.
    """
    check_positive_int("tp", tp)
    if (n_kv_heads is None) == (d_c is None):
        raise ValueError("give n_kv_heads and head_dim (MHA, GQA, MQA) or d_c and d_rope (MLA), not both or neither")
    if d_c is not None:
        check_positive_int("d_c", d_c)
        if isinstance(d_rope, bool) or not isinstance(d_rope, int) or d_rope < 0:
            raise ValueError(f"d_rope={d_rope!r} must be a non-negative integer")
        return d_c + d_rope
    check_positive_int("n_kv_heads", n_kv_heads)
    check_positive_int("head_dim", head_dim)
    if n_kv_heads % tp and tp % n_kv_heads:
        raise ValueError(f"tp={tp} must divide n_kv_heads={n_kv_heads} or be a multiple of it "
                         "(else a device's query heads would read part of a KV head)")
    return 2 * max(n_kv_heads // tp, 1) * head_dim  # a key and a value per KV head kept
