"""Rotary position embedding (RoPE), as LLaMA uses it.

Each head vector is split into two halves (x1, x2); the pair (x1[i], x2[i]) is rotated by the angle
``position * base ** (-2 i / head_dim)``. This is the "rotate_half" layout of transformers' LLaMA,
so weights loaded from a transformers LLaMA model give the same numbers here.

Precision: the angles, their cosines and sines and the rotation itself are computed in float64
whatever the dtype of the module or of ``x`` (float32 on Apple's MPS, which has no float64), and the
result is rounded to ``x``'s dtype once, at the end. A module cast with ``.to(torch.bfloat16)`` keeps
its frequencies exact: in bf16 (8 significant bits) positions 1000 and 1001 are the same number, so
the angles would be too. The rotated result is within one unit in the last place (ulp) of ``x``'s
dtype of the exact rotation of ``x`` (tests/test_rope_precision.py checks this up to position 100,000).

Scaled RoPE (:class:`RopeScaling`): models trained past their first context stretch the slow
frequencies. Two published rules are implemented, checked against transformers' own
(tests/test_rope_scaling.py): ``linear`` divides every frequency by ``factor`` (position interpolation,
Chen et al. 2023, arXiv 2306.15595), and ``llama3`` divides only the slow ones, blending in between (the
rule of Llama 3.1's configuration: ``factor``, ``low_freq_factor``, ``high_freq_factor``,
``original_max_position_embeddings``). Any other rule in a model's configuration (dynamic, yarn,
longrope, ...) is refused by :func:`rope_from_config`, naming it, rather than silently ignored.
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import dataclass

import torch
from torch import nn

from gqa_lib.core.checks import check_positive_int


def check_rope_base(name: str, value) -> float:
    """``value`` as a float if it is a finite positive number, else raise naming ``name``.

    The base sets the longest wavelength (2 pi base); LLaMA 2 uses 10000, LLaMA 3 500000.
    """
    what = " (RoPE's base, rope_base in the attention layers)" if name == "base" else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={value!r}{what} must be a finite positive number such as 10000.0 "
                        f"(got {type(value).__name__})")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r}{what} must be a finite positive number such as 10000.0 or 500000.0")
    return float(value)


def check_start_pos(value, name: str = "start_pos") -> int:
    """``value`` as an int if it is a whole number 0 or more (a Python int or a 0-d integer tensor)."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and (value.ndim or value.is_floating_point())):
        raise TypeError(f"{name}={value!r} must be a non-negative integer position (0 for the first token)")
    try:
        pos = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}={value!r} must be a non-negative integer position (0 for the first token), "
                        f"not {type(value).__name__}") from None
    if pos < 0:
        raise ValueError(f"{name}={pos} must be a non-negative integer position (0 for the first token)")
    return pos


ROPE_TYPES = ("default", "linear", "llama3")  # the rules RotaryEmbedding implements


@dataclass(frozen=True)
class RopeScaling:
    """How a model stretches RoPE's frequencies past the context it was first trained on.

    ``rope_type``: ``"linear"`` (every frequency divided by ``factor``) or ``"llama3"`` (frequencies whose
    wavelength exceeds ``original_max_position_embeddings / low_freq_factor`` divided by ``factor``, those
    shorter than ``original_max_position_embeddings / high_freq_factor`` kept, a linear blend in between).
    Raises ValueError naming the field for an unknown type or a factor that is not finite and positive.
    """

    rope_type: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self):
        if self.rope_type not in ("linear", "llama3"):
            raise ValueError(f"rope_type={self.rope_type!r} is not implemented here (valid: 'linear', 'llama3'; "
                             "None or 'default' for plain RoPE)")
        for name in ("factor", "low_freq_factor", "high_freq_factor"):
            check_rope_base(name, getattr(self, name))
        if self.rope_type == "llama3":
            check_positive_int("original_max_position_embeddings", self.original_max_position_embeddings)
            if not self.high_freq_factor > self.low_freq_factor:
                raise ValueError(f"high_freq_factor={self.high_freq_factor} must be larger than "
                                 f"low_freq_factor={self.low_freq_factor} (Llama 3.1 uses 4.0 and 1.0)")

    def apply(self, inv_freq: torch.Tensor) -> torch.Tensor:
        """The scaled frequencies for plain ones ``inv_freq`` (head_dim/2,), radians per position."""
        if self.rope_type == "linear":
            return inv_freq / self.factor
        old = self.original_max_position_embeddings
        wavelength = 2 * math.pi / inv_freq
        # 0 where the wavelength is past old / low_freq_factor (divide by factor), 1 where it is below
        # old / high_freq_factor (keep), linear in old / wavelength between the two.
        keep = ((old / wavelength - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)).clamp(0, 1)
        return (1 - keep) * inv_freq / self.factor + keep * inv_freq


def rope_from_config(config) -> tuple[float, RopeScaling | None]:
    """RoPE's base and scaling from a transformers configuration (``rope_parameters``, or the older
    ``rope_theta`` and ``rope_scaling``). Raises ValueError naming a ``rope_type`` that is not implemented
    (valid: :data:`ROPE_TYPES`), so that a model's scaling is never dropped without a word."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", config.rope_theta)
    rope_type = params.get("rope_type", params.get("type", "default"))
    base = float(params["rope_theta"])
    if rope_type == "default":
        return base, None
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"the model's rope_type={rope_type!r} is not implemented here (valid: "
                         f"{', '.join(map(repr, ROPE_TYPES))}): its positions would be rotated wrongly")
    fields = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return base, RopeScaling(rope_type, **{k: params[k] for k in fields if k in params})


def _work_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


class RotaryEmbedding(nn.Module):
    """RoPE for head vectors of size ``head_dim`` (even). ``base``: see :func:`check_rope_base`.

    The module holds no tensor: the frequencies are derived from ``head_dim`` and ``base`` in float64
    on every call (head_dim / 2 numbers), so ``.to(dtype)`` or ``.half()`` cannot round them.
    """

    def __init__(self, head_dim: int, base: float = 10000.0, scaling: RopeScaling | None = None):
        super().__init__()
        check_positive_int("head_dim", head_dim)
        if head_dim % 2:
            raise ValueError(f"head_dim={head_dim} must be even for RoPE (it rotates pairs; valid: 2, 4, 6, ...)")
        if scaling is not None and not isinstance(scaling, RopeScaling):
            raise TypeError(f"scaling={scaling!r} must be a RopeScaling or None (plain RoPE)")
        self.head_dim = head_dim
        self.base = check_rope_base("base", base)
        self.scaling = scaling

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}" + (f", scaling={self.scaling}" if self.scaling else "")

    def inv_freq(self, device=None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The turning rate of each pair, radians per position: (head_dim/2,) in ``dtype`` (float64),
        scaled by ``self.scaling`` where the model stretches its context."""
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim
        inv_freq = self.base ** -exponents
        if self.scaling is not None:
            inv_freq = self.scaling.apply(inv_freq)
        return inv_freq.to(device=device, dtype=dtype)

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """Rotation angles (seq, head_dim/2) in float64 for integer ``positions`` of shape (seq,).

        float64 holds every position up to 2**53 exactly, and the angle to about 1e-16 of its size.
        """
        work = _work_dtype(positions.device)
        return positions.to(work)[:, None] * self.inv_freq(positions.device, work)[None, :]

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin tables for integer ``positions`` of shape (seq,): each (seq, head_dim), in float64."""
        angles = self.angles(positions)
        angles = torch.cat([angles, angles], dim=-1)  # (seq, head_dim): both halves of a pair turn alike
        return angles.cos(), angles.sin()

    def forward(self, x: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """Rotate ``x`` of shape (batch, heads, seq, head_dim); token t sits at position start_pos + t.

        Returns a tensor of ``x``'s shape and dtype. Raises TypeError for a non-floating ``x`` or a
        ``start_pos`` that is not a whole number, ValueError for a negative one or a wrong shape.
        """
        start_pos = check_start_pos(start_pos)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x={type(x).__name__} must be a tensor (batch, heads, seq, {self.head_dim})")
        if x.ndim != 4 or x.shape[-1] != self.head_dim:
            raise ValueError(f"x.shape={tuple(x.shape)} must be (batch, heads, seq, {self.head_dim})")
        if not x.is_floating_point():
            raise TypeError(f"x.dtype={x.dtype} must be a floating dtype (torch.float32, torch.bfloat16, ...): "
                            "rotating integers would truncate them")
        angles = self.angles(torch.arange(start_pos, start_pos + x.shape[2], device=x.device))  # (seq, head_dim/2)
        cos, sin = angles.cos(), angles.sin()
        x1, x2 = x.to(angles.dtype).chunk(2, dim=-1)  # the pairs (x1[i], x2[i]), in float64
        # The same as x * cos + rotate_half(x) * sin on full-width tables, with half the multiplications.
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)  # one rounding
