"""Every way to shrink the KV cache, applied to a trained model's attention and scored in one pass.

Notebook 08 puts these on one chart for SmolLM2-135M. Each is what a decoder's cache would hold, not
a change to the model's weights:

- **fewer KV heads** (mean-pooled: ``gqa_lib.experiments.smollm_conversion.convert_kv_heads``) and **a latent**
  (``gqa_lib.experiments.latent_conversion``): the attention layer changes, and the cache with it. They are layers of
  their own; this module wraps them like any other layer.
- **a sliding window** of the last ``window`` tokens, optionally with the first ``sinks`` tokens kept
  too ("attention sinks", Xiao et al. 2023, StreamingLLM). Keys keep the positions they were rotated
  at, as Mistral's rolling cache does.
- **integer K/V** (8, 4 or 2 bits) with a scale and a minimum in bf16 for every group of 64 numbers:
  ``axis="token"`` groups the 64 numbers of one head of one token (each cached vector is quantized on
  its own as it arrives); ``axis="channel"`` quantizes keys per channel over blocks of ``block`` tokens
  and values per token, and keeps the newest, unfinished block in bf16, as KIVI does (Liu et al. 2024,
  arXiv 2402.02750). ``newest_bf16=True`` with ``axis="token"`` keeps that block in bf16 too, KIVI's second
  change measured alone.
- **FP8 K/V** (E4M3 or E5M2, ``fp8``): each number divided by a float32 scale and rounded to torch's
  ``float8_e4m3fn``/``float8_e5m2``; the scale is one per layer's K (and V) tensor or one per KV head, from the
  largest magnitude a calibration text gave (``amax``), so that it maps to the format's largest number; a
  latent's FP8 scale is one per 128 numbers of each vector, from that vector itself (DeepSeek's FP8 latent).
- **cross-layer sharing** (Brandon et al. 2024, CLA): a layer attends with the keys and values of the
  layer below it and caches nothing of its own.

Everything is simulated in a full causal pass over a window of text: a query at position ``i`` sees
exactly the keys and values a decoder holding that cache would have at step ``i`` (the tests check the
window against step-by-step decoding). Unquantized caches are stored in bf16, as released models'
caches are: keys and values are rounded to bf16 before attention, so the bytes counted are the bytes
used.

Bytes: :func:`shrunk_cache_bytes_per_token` counts what a cache holds at a given context length, for all
layers, divided by that length; scales and minima included.

Why one module of about 360 lines: the policy, the quantizer, the mask and the bytes describe one cache,
and the layer that simulates it uses all four; the byte model itself is ``core.cache_math.ElementType``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from gqa_lib.core.attention import GroupedQueryAttention
from gqa_lib.core.cache_math import ElementType
from gqa_lib.core.checks import check_layer_input, check_positive_int

QUANT_AXES = ("token", "channel")
QUANT_BITS = (8, 4, 2)
FP8_FORMATS = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
GROUP = 64  # numbers sharing one scale and one minimum (one head of one token for SmolLM2's head_dim 64)
SCALE_BYTES = ElementType("int8").group_bytes  # 4: a bf16 scale and a bf16 minimum per group (core.cache_math)


@dataclass(frozen=True)
class CachePolicy:
    """What a layer's cache keeps: a window (with sinks), and the number format of what it stores.

    window: keep only the last ``window`` tokens (None: all). sinks: also keep the first ``sinks``.
    bits: None (bf16), 8, 4 or 2 (integer, asymmetric, scale and minimum in bf16 per group of 64).
    axis: 'token' or 'channel' (see the module docstring). block: tokens per key block for 'channel'.
    newest_bf16: with ``axis='token'``, keep the newest, unfinished block of ``block`` tokens in bf16.
    fp8: None, 'e4m3' or 'e5m2' (instead of ``bits``); fp8_scale: 'tensor', 'head' (calibrated) or 'group'
    (per 128 numbers of each vector, a latent's).
    """

    window: int | None = None
    sinks: int = 0
    bits: int | None = None
    axis: str = "token"
    block: int = 64
    newest_bf16: bool = False
    fp8: str | None = None
    fp8_scale: str = "tensor"

    def __post_init__(self):
        if self.window is not None:
            check_positive_int("window", self.window)
        if isinstance(self.sinks, bool) or not isinstance(self.sinks, int) or self.sinks < 0:
            raise ValueError(f"sinks={self.sinks!r} must be a non-negative int (the first tokens kept)")
        if self.sinks and self.window is None:
            raise ValueError(f"sinks={self.sinks} needs a window: without one every token is kept already")
        if self.bits is not None and self.bits not in QUANT_BITS:
            raise ValueError(f"bits={self.bits!r} must be None (bf16) or one of {QUANT_BITS}")
        if self.axis not in QUANT_AXES:
            raise ValueError(f"axis={self.axis!r} must be one of {QUANT_AXES}")
        check_positive_int("block", self.block)
        if self.newest_bf16 not in (True, False) or (self.newest_bf16 and (self.bits is None or self.axis != "token")):
            raise ValueError(f"newest_bf16={self.newest_bf16!r} applies only to an integer cache per token (bits set, "
                             "axis='token'); per channel the newest block is bf16 already")
        if self.fp8 is not None:
            if self.fp8 not in FP8_FORMATS:
                raise ValueError(f"fp8={self.fp8!r} must be None or one of {tuple(FP8_FORMATS)}")
            if self.bits is not None:
                raise ValueError(f"fp8={self.fp8!r} and bits={self.bits} are two number formats; give one")
        if self.fp8_scale not in ("tensor", "head", "group"):
            raise ValueError(f"fp8_scale={self.fp8_scale!r} must be 'tensor', 'head' or 'group'")

    def label(self) -> str:
        parts = []
        if self.window is not None:
            parts.append(f"window {self.window}" + (f" + {self.sinks} sinks" if self.sinks else ""))
        if self.bits is not None:
            parts.append(f"int{self.bits} per {self.axis}" + (" + newest block in bf16" if self.newest_bf16 else ""))
        if self.fp8 is not None:
            parts.append(f"FP8 {self.fp8.upper()}, scale per {self.fp8_scale}")
        return ", ".join(parts) or "bf16, every token"

    @property
    def element(self) -> ElementType:
        """The format of what is stored, as ``core.cache_math`` prices it (per-token integer vectors for ints)."""
        if self.fp8 is not None:
            return ElementType(f"fp8_{self.fp8}", fp8_scale=self.fp8_scale)
        return stored_element(self.bits)


def fake_quantize(x: torch.Tensor, bits: int, dim: int = -1, group: int = GROUP) -> torch.Tensor:
    """``x`` rounded to ``bits``-bit integers and back, a scale and a minimum per ``group`` numbers along ``dim``.

    Asymmetric: ``q = round((x - low) / scale)`` in 0 .. 2**bits - 1. ``low`` and ``scale`` are stored in
    bf16, rounded so that they cover the group: ``low`` is the largest bf16 number at or below the group's
    minimum and ``scale`` the smallest bf16 number at or above ``(max - low) / (2**bits - 1)``, so every
    value lies inside the levels and the error is at most half a step (of the stored scale) plus float32
    rounding. Rounding both to the nearest bf16 instead clips the values below a rounded-up minimum: on
    SmolLM2's keys that was up to 2.85 steps off in int8 per channel, and 14 steps in groups near 200.
    ``x.shape[dim]`` must be a multiple of ``group``. Returns a tensor of ``x``'s shape and dtype: what the
    cache gives back.
    """
    if bits not in QUANT_BITS:
        raise ValueError(f"bits={bits!r} must be one of {QUANT_BITS}")
    check_positive_int("group", group)
    size = x.shape[dim]
    if size % group:
        raise ValueError(f"x.shape[{dim}]={size} must be a multiple of group={group}")
    moved = x.movedim(dim, -1)
    g = moved.reshape(*moved.shape[:-1], size // group, group).float()  # (..., n_groups, group)
    low = _bf16_toward(g.amin(-1, keepdim=True), -math.inf)  # at or below every value of its group
    high = g.amax(-1, keepdim=True)
    levels = 2 ** bits - 1
    scale = _bf16_toward(((high - low) / levels).clamp_min(torch.finfo(torch.bfloat16).tiny), math.inf)
    q = ((g - low) / scale).round().clamp(0, levels)
    out = (q * scale + low).reshape(moved.shape).movedim(-1, dim)
    return out.to(x.dtype)


def _bf16_toward(x: torch.Tensor, direction: float) -> torch.Tensor:
    """``x`` (float32) rounded to a bf16 number on the side of ``direction`` (-inf: at most x; inf: at least x),
    returned as float32."""
    b = x.to(torch.bfloat16)
    wrong_side = b.float() < x if direction > 0 else b.float() > x
    b = torch.where(wrong_side, torch.nextafter(b, torch.full_like(b, direction)), b)
    return b.float()


def quantize_blocks(x: torch.Tensor, bits: int, block: int) -> torch.Tensor:
    """Keys quantized per channel over blocks of ``block`` tokens: (batch, heads, seq, head_dim) -> same.

    Only complete blocks are quantized; the newest, unfinished block is returned unchanged (KIVI keeps it
    in full precision until it fills).
    """
    seq = x.shape[-2]
    done = seq - seq % block
    if done == 0:
        return x.clone()
    head = fake_quantize(x[..., :done, :], bits, dim=-2, group=block)
    return torch.cat([head, x[..., done:, :]], dim=-2)


def visible(n: int, window: int | None = None, sinks: int = 0, device=None) -> torch.Tensor:
    """(n, n) bool: may query ``i`` see key ``j``? Causal; with a window, the last ``window`` and first ``sinks``.

    Raises ValueError, as :class:`CachePolicy` does, for ``window`` 0 or below (a mask in which no query
    sees any key, not even itself), negative ``sinks``, or sinks without a window.
    """
    check_positive_int("n", n)
    CachePolicy(window=window, sinks=sinks)  # the policy's own checks and messages
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    mask = j <= i
    if window is not None:
        mask &= (j > i - window) | (j < sinks)
    return mask


def _as_bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(x.dtype)


def fp8_round_trip(x: torch.Tensor, fmt: str, scale) -> torch.Tensor:
    """``x / scale`` stored as FP8 (``fmt`` 'e4m3' or 'e5m2', torch's float8 types) and multiplied back.

    ``scale``: a float32 number or tensor broadcastable to ``x``. Values beyond the format's largest number
    (448 for E4M3, 57,344 for E5M2) saturate there, as a serving kernel's cast does (torch's own cast gives
    nan for E4M3). Returns ``x``'s shape and dtype.
    """
    if fmt not in FP8_FORMATS:
        raise ValueError(f"fmt={fmt!r} must be one of {tuple(FP8_FORMATS)}")
    dtype = FP8_FORMATS[fmt]
    largest = torch.finfo(dtype).max
    scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    y = (x.float() / scale).clamp(-largest, largest).to(dtype).float() * scale
    return y.to(x.dtype)


def fp8_group_round_trip(x: torch.Tensor, fmt: str, group: int = 128) -> torch.Tensor:
    """FP8 with a float32 scale per ``group`` numbers along the last dim, each from its own group's largest
    magnitude (DeepSeek's FP8 latent: 4 scales per 512 numbers). ``x.shape[-1]`` a multiple of ``group``."""
    if x.shape[-1] % group:
        raise ValueError(f"x.shape[-1]={x.shape[-1]} must be a multiple of group={group}")
    g = x.float().unflatten(-1, (-1, group))
    largest = torch.finfo(FP8_FORMATS[fmt]).max
    scale = (g.abs().amax(-1, keepdim=True) / largest).clamp_min(torch.finfo(torch.float32).tiny)
    return fp8_round_trip(g, fmt, scale).flatten(-2).to(x.dtype)


class ShrunkCacheAttention(nn.Module):
    """A trained attention layer whose keys and values go through a smaller cache, in one causal pass.

    ``base``: a ``GroupedQueryAttention`` (keys and values cached) or a
    ``gqa_lib.experiments.latent_conversion.LatentKVAttention`` (the latent cached, keys and values rebuilt from it).
    ``share_from``: another ``ShrunkCacheAttention`` (the layer below) whose keys and values this layer
    uses instead of its own (cross-layer sharing; this layer caches nothing). Input and output:
    (batch, seq, d_model). Only the uncached pass is supported (``cache`` must be None): that pass is
    what a decoder with this cache computes, position by position.
    """

    def __init__(self, base: nn.Module, policy: CachePolicy = CachePolicy(),
                 share_from: ShrunkCacheAttention | None = None, amax: tuple | None = None):
        super().__init__()
        if not isinstance(policy, CachePolicy):
            raise TypeError(f"policy={type(policy).__name__} must be a CachePolicy")
        self.latent = hasattr(base, "kv_down")
        if not self.latent and not isinstance(base, GroupedQueryAttention):
            raise TypeError(f"base={type(base).__name__} must be a GroupedQueryAttention or a LatentKVAttention")
        if self.latent and policy.bits is not None and policy.axis != "token":
            raise ValueError("a latent is quantized per token (axis='token'): its numbers are not channels of a head")
        if share_from is not None and not isinstance(share_from, ShrunkCacheAttention):
            raise TypeError(f"share_from={type(share_from).__name__} must be a ShrunkCacheAttention (the layer below)")
        if policy.fp8 is not None and policy.fp8_scale != "group" and share_from is None:
            if amax is None or len(amax) != 2:
                raise ValueError(f"fp8_scale={policy.fp8_scale!r} needs amax=(keys', values' largest magnitude per "
                                 "KV head), each (n_kv_heads,), from a calibration text (calibrated_amax)")
            if self.latent:
                raise ValueError("a latent's FP8 cache takes fp8_scale='group' (scales per 128 numbers)")
        if self.latent and policy.fp8 is not None and base.rank % 128:
            raise ValueError(f"an FP8 latent needs a rank divisible by 128 (scales per 128 numbers), not {base.rank}")
        if self.latent and policy.newest_bf16:
            raise ValueError("newest_bf16 applies to keys and values, not to a latent")
        self.base, self.policy = base, policy
        self.amax = amax
        self._share_from = [share_from]  # a list so the lower layer is not registered as this one's child
        self._kv = None  # this pass's keys and values, for a layer that shares them

    @property
    def share_from(self):
        return self._share_from[0]

    @property
    def caches(self) -> bool:
        return self.share_from is None

    def numbers_per_token(self) -> int:
        """Numbers this layer caches per token: 2 x n_kv_heads x head_dim, the latent's rank, or 0 if it shares."""
        if not self.caches:
            return 0
        return self.base.rank if self.latent else 2 * self.base.n_kv_heads * self.base.head_dim

    def new_cache(self, batch, max_len):
        raise NotImplementedError("ShrunkCacheAttention simulates its cache inside one causal pass; decode with "
                                  "the base layer to keep a real cache")

    def _keys_values(self, x: torch.Tensor):
        """q (b, n_heads, s, d); k, v (b, n_kv_heads, s, d) as the cache gives them back; k, v of finished blocks."""
        base, p = self.base, self.policy
        b, s, _ = x.shape
        if self.latent:
            q = base.rope(base.q_proj(x).view(b, s, base.n_heads, base.head_dim).transpose(1, 2))
            c = base.kv_down(x)  # (b, s, rank): what is cached
            if p.fp8 is not None:
                c = fp8_group_round_trip(c, p.fp8)
            else:
                c = fake_quantize(c, p.bits, group=_latent_group(c.shape[-1])) if p.bits else _as_bf16(c)
            k, v = base.keys_values(c)
            return q, k, v, None
        q, k, v = base.qkv(x)
        if p.fp8 is not None:
            k_amax, v_amax = self.amax
            return (q, fp8_round_trip(k, p.fp8, self._fp8_scale(k_amax, k.shape[1])),
                    fp8_round_trip(v, p.fp8, self._fp8_scale(v_amax, v.shape[1])), None)
        if p.bits is None:
            return q, _as_bf16(k), _as_bf16(v), None
        if p.axis == "token":
            group = base.head_dim
            kq, vq = fake_quantize(k, p.bits, group=group), fake_quantize(v, p.bits, group=group)
            if p.newest_bf16:  # the newest block as it arrived, older ones quantized
                return q, _as_bf16(k), _as_bf16(v), (kq, vq)
            return q, kq, vq, None
        # KIVI: old blocks hold per-channel keys and per-token values; the newest block is bf16.
        old = (quantize_blocks(k, p.bits, p.block), fake_quantize(v, p.bits, group=base.head_dim))
        return q, _as_bf16(k), _as_bf16(v), old

    def _fp8_scale(self, amax: torch.Tensor, n_kv_heads: int) -> torch.Tensor:
        """The float32 scale(s) mapping the calibrated largest magnitude to the format's largest number."""
        largest = torch.finfo(FP8_FORMATS[self.policy.fp8]).max
        amax = torch.as_tensor(amax, dtype=torch.float32).reshape(-1)
        if self.policy.fp8_scale == "tensor":
            return (amax.max() / largest).clamp_min(torch.finfo(torch.float32).tiny)
        if amax.numel() != n_kv_heads:
            raise ValueError(f"amax has {amax.numel()} numbers; a scale per head needs n_kv_heads={n_kv_heads}")
        return (amax / largest).clamp_min(torch.finfo(torch.float32).tiny).view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        """(batch, seq, d_model) -> (batch, seq, d_model). Raises ValueError for another shape, and, as the base
        layer does, for a nan or inf in ``x``, naming its position: one nan would reach every later token
        through the masked product, and every number of its quantization group."""
        if cache is not None:
            raise ValueError("ShrunkCacheAttention runs the uncached pass only (cache=None)")
        base, p = self.base, self.policy
        check_layer_input(x, base.d_model, base.q_proj.weight.dtype)
        b, s, _ = x.shape
        if self.caches:
            q, k, v, old = self._keys_values(x)
            self._kv = (k, v, old)
        else:
            q = base.qkv(x)[0] if not self.latent else None
            if q is None:
                raise ValueError("a latent layer cannot take another layer's keys")
            k, v, old = self.share_from._kv
        group_size = base.n_heads // k.shape[1]
        qg = q.reshape(b, k.shape[1], group_size * s, base.head_dim)  # a group's query heads stacked as rows
        mask = visible(s, p.window, p.sinks, x.device)  # (s, s)
        if old is None:
            out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask.repeat(group_size, 1))
        else:
            out = _attend_blocks(qg, k, v, *old, mask, p.block, group_size)
        out = out.reshape(b, base.n_heads, s, base.head_dim)
        return base.o_proj(out.transpose(1, 2).reshape(b, s, base.n_heads * base.head_dim))


def _latent_group(rank: int) -> int:
    return GROUP if rank % GROUP == 0 else rank


def _attend_blocks(qg, k, v, k_old, v_old, mask, block: int, group_size: int) -> torch.Tensor:
    """Attention where keys of finished blocks (before the query's own block) come from the quantized cache.

    One fused call over both copies of the keys: query i sees the quantized copy of key j when j's block
    finished before i's, the bf16 copy when j is in i's own block; one softmax spans both, so this is
    exactly attention over the keys the cache holds at step i.
    """
    s = k.shape[-2]
    pos = torch.arange(s, device=qg.device)
    older = (pos[None, :] // block) < (pos[:, None] // block)  # (s, s): key j's block finished before query i's
    both = torch.cat([mask & older, mask & ~older], dim=1).repeat(group_size, 1)  # (group_size * s, 2 s)
    return F.scaled_dot_product_attention(qg, torch.cat([k_old, k], 2), torch.cat([v_old, v], 2), attn_mask=both)


def shrink_layers(attention: list[nn.Module], policy: CachePolicy = CachePolicy(),
                  share_every: int = 1, amax: list | None = None) -> list[ShrunkCacheAttention]:
    """Wrap every layer with ``policy``; ``share_every=2``: each odd layer uses the keys and values of the one below.

    ``share_every``: layers per shared cache (1: none shared; 2: CLA-2, pairs of adjacent layers).
    ``amax``: per layer, (keys', values') largest magnitude per KV head (:func:`calibrated_amax`), for FP8 scales
    per tensor or per head.
    """
    check_positive_int("share_every", share_every)
    out = []
    for i, layer in enumerate(attention):
        owner = None if i % share_every == 0 else out[i - i % share_every]
        out.append(ShrunkCacheAttention(layer, policy, share_from=owner, amax=None if amax is None else amax[i]))
    return out


@torch.no_grad()
def calibrated_amax(attention: list[nn.Module], inputs: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the largest |key| and |value| per KV head over a calibration text: ((n_kv_heads,), (n_kv_heads,)).

    ``inputs``: each layer's attention input on that text (``SmolLMDecoder.hidden_states(..., inputs_of=)``);
    keys after RoPE, as they are cached.
    """
    out = []
    for layer, x in zip(attention, inputs, strict=True):
        _, k, v = layer.qkv(x)  # (batch, n_kv_heads, seq, head_dim)
        out.append((k.abs().amax(dim=(0, 2, 3)).float(), v.abs().amax(dim=(0, 2, 3)).float()))
    return out


def tokens_kept(context: int, policy: CachePolicy) -> int:
    """Tokens a cache under ``policy`` holds after ``context`` tokens."""
    check_positive_int("context", context)
    if policy.window is None:
        return context
    return min(context, policy.window + policy.sinks)


def blocks_held(context: int, policy: CachePolicy) -> tuple[int, int, int]:
    """(tokens held quantized, tokens held in bf16, finished key blocks holding a kept token) after ``context``
    tokens, for a cache that quantizes whole blocks of ``policy.block`` tokens and keeps the newest, unfinished
    one in bf16 (``axis='channel'``, or ``newest_bf16``).

    Blocks are counted by position, as the simulation attends them (:func:`_attend_blocks`: key j comes from the
    quantized copy when ``j // block < i // block``): the unfinished block is the newest token's, 1 to ``block``
    tokens of it, whatever a window keeps. A window's oldest kept block may be partly evicted; it still holds its
    scales. The first two add up to :func:`tokens_kept`.
    """
    check_positive_int("context", context)
    b = policy.block
    current = (context - 1) // b  # the newest token's block: unfinished, in bf16
    start = current * b  # its first position
    if policy.window is None or context <= policy.window + policy.sinks:
        return start, context - start, current
    first = context - policy.window  # the window's first position, after the sinks
    newest = min(context - start, policy.window)
    window_done = policy.window - newest  # the window's tokens in finished blocks
    sinks_done = min(policy.sinks, start)
    blocks = set(range(first // b, current)) if window_done else set()
    blocks |= set(range(0, min(-(-policy.sinks // b), current)))
    return sinks_done + window_done, newest + (policy.sinks - sinks_done), len(blocks)


def stored_element(bits: int | None, group: int | None = GROUP) -> ElementType:
    """The number format a cache under ``CachePolicy(bits=bits)`` stores, as ``core.cache_math`` prices it.

    bits None: bf16. 8 or 4: ``ElementType("int8")``/``("int4")`` with a bf16 scale and a bf16 minimum (2 + 2
    bytes) per group of ``group`` numbers, the format :func:`fake_quantize` rounds to.
    """
    if bits is None:
        return ElementType("bf16")
    if bits not in QUANT_BITS:
        raise ValueError(f"bits={bits!r} must be None (bf16) or one of {QUANT_BITS}")
    return ElementType(f"int{bits}", scale_group=group, scale_bytes=2, minimum=True)


def layer_cache_bytes(numbers_per_token: int, context: int, policy: CachePolicy, head_dim: int = 64) -> float:
    """Bytes one layer's cache holds after ``context`` tokens, caching ``numbers_per_token`` numbers a token.

    Every vector is priced by ``gqa_lib.core.cache_math.ElementType.vector_bytes`` (:func:`stored_element`).
    bf16: 2 bytes a number. int8/int4 per token: each head's vector of ``head_dim`` numbers is one group
    with a bf16 scale and a bf16 minimum (4 bytes); a latent (``numbers_per_token`` not a multiple of
    ``head_dim``) is one vector in groups of 64, or one group if 64 does not divide it. Per channel (KIVI):
    the keys (half the numbers) of each finished block of ``policy.block`` tokens are, per channel, one
    vector of ``block`` numbers with its own scale and minimum; the values are per token as above; the
    unfinished block is bf16. A whole number of bytes, returned as a float.
    """
    if numbers_per_token == 0:
        return 0.0
    check_positive_int("numbers_per_token", numbers_per_token)
    check_positive_int("head_dim", head_dim)
    n = tokens_kept(context, policy)
    latent = numbers_per_token % head_dim or policy.fp8_scale == "group"  # one vector a token
    if policy.fp8 is not None:
        e = policy.element
        if latent:
            return float(n * e.vector_bytes(numbers_per_token))
        vectors = numbers_per_token // head_dim
        return float(n * vectors * e.vector_bytes(head_dim) + e.fixed_bytes(vectors // 2))
    if policy.bits is None:
        return float(n * stored_element(None).vector_bytes(numbers_per_token))
    if policy.axis == "token":
        if latent:
            latent = stored_element(policy.bits, _latent_group(numbers_per_token))
            return float(n * latent.vector_bytes(numbers_per_token))
        heads = stored_element(policy.bits, head_dim)
        vectors = numbers_per_token // head_dim
        done = blocks_held(context, policy)[0] if policy.newest_bf16 else n
        newest = (n - done) * stored_element(None).vector_bytes(numbers_per_token)
        return float(done * vectors * heads.vector_bytes(head_dim) + newest)
    if numbers_per_token % (2 * head_dim):
        raise ValueError(f"numbers_per_token={numbers_per_token} must be a multiple of 2 x head_dim={2 * head_dim}: "
                         "a per-channel (KIVI) cache holds the keys and values of whole heads")
    done, _, key_blocks = blocks_held(context, policy)
    channels = numbers_per_token // 2  # key channels; as many value numbers
    key_format = stored_element(policy.bits, policy.block)  # per channel: a block's numbers, one scale and minimum
    keys = channels * (done * key_format.bits / 8 + key_blocks * key_format.group_bytes)  # a window's oldest block
    # may be partly evicted: its kept numbers and its scales stay
    values = done * (channels // head_dim) * stored_element(policy.bits, head_dim).vector_bytes(head_dim)
    newest = (n - done) * stored_element(None).vector_bytes(numbers_per_token)
    return float(keys + values + newest)


def shrunk_cache_bytes_per_token(layers: list[ShrunkCacheAttention], context: int) -> float:
    """All layers' cache bytes after ``context`` tokens, divided by ``context``: bytes a token of context costs."""
    total = sum(layer_cache_bytes(a.numbers_per_token(), context, a.policy, a.base.head_dim) for a in layers)
    return total / context


def bytes_per_token_over(layers: list[ShrunkCacheAttention], contexts) -> float:
    """Bytes per token of context averaged over predictions made at ``contexts`` (token counts): the mean of the
    cache's bytes at those contexts divided by their mean context (a ratio of means: every prediction's cache
    weighs the same). ``contexts=[n]`` gives :func:`shrunk_cache_bytes_per_token` at ``n``."""
    contexts = list(contexts)
    if not contexts:
        raise ValueError("contexts is empty: give the context lengths of the scored predictions")
    total = sum(shrunk_cache_bytes_per_token(layers, n) * n for n in contexts)
    return total / sum(contexts)


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For (bytes, loss) points, True where no other point is at most as big and as bad and better in one.

    Raises ValueError naming the first point whose bytes or loss is nan or inf: a nan is never dominated (every
    comparison with it is False), so a failed measurement would sit on the front.
    """
    for i, (bx, lx) in enumerate(points):
        if not (math.isfinite(bx) and math.isfinite(lx)):
            raise ValueError(f"points[{i}]=({bx}, {lx}) is not finite: a nan is never dominated, so a failed "
                             "measurement would sit on the front; drop or re-measure it first")
    flags = []
    for i, (bx, lx) in enumerate(points):
        dominated = any(by <= bx and ly <= lx and (by < bx or ly < lx)
                        for j, (by, ly) in enumerate(points) if j != i)
        flags.append(not dominated)
    return flags
