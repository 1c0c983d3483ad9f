"""What every attention kind of the series must do, written once (issue 21), as transformers' tester mixins do.

A :class:`Kind` says how to build one attention kind (a layer, a stack of layers, a function or a model),
how to run its full causal pass, and how to decode with its cache; :class:`AttentionContract` holds the
four checks, each written only here:

(a) decoding with the cache, token by token or a prefill and then tokens, equals the full causal pass;
(b) the output has the kind's shape, in the full pass and in every decode step;
(c) the output keeps the dtype the kind computes in (the input's; for token ids, the model's);
(d) a bad input raises ValueError or TypeError whose message names the argument as the caller wrote it.

Tolerances come from the dtype alone (:data:`TOLERANCE`), never from one machine's result.
tests/test_attention_contract.py holds the table of kinds and the planted failures that show the checks can fail.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch


@dataclass(frozen=True)
class Tolerance:
    """Two tensors agree when |got - want| <= atol * max|want| + rtol * |want|, elementwise.

    ``atol`` is relative to the largest output: rounding in the projections and the softmax errs in proportion
    to the size of the numbers summed, not to each output, which may be near 0.
    """

    rtol: float
    atol: float


# float32: 2**-23 is one unit in the last place; a few hundred roundings over one layer stay under 1e-5.
# bfloat16: 8 significant bits, 2**-8 = 0.4% a rounding; the two paths round differently (another matmul
# shape, keys cached and read back), so allow 4 units, 2**-6 = 1.6% (torch.testing's bf16 rtol too).
TOLERANCE = {torch.float32: Tolerance(rtol=1e-5, atol=1e-5), torch.bfloat16: Tolerance(rtol=2**-6, atol=2**-6)}


def assert_agree(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    """``got`` equals ``want`` within ``dtype``'s tolerance; the message says where and by how much not."""
    tol = TOLERANCE[dtype]
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    got, want = got.double(), want.double()
    bound = tol.atol * want.abs().max() + tol.rtol * want.abs()
    err = (got - want).abs()
    if not bool((err <= bound).all()):
        worst = (err - bound).argmax()
        index = tuple(int(i) for i in torch.unravel_index(worst, err.shape))
        raise AssertionError(f"{what}: {int((err > bound).sum())} of {err.numel()} numbers differ beyond the "
                             f"{dtype} tolerance {tol}; worst at {index}: {got[index].item():.6g} vs "
                             f"{want[index].item():.6g} (largest |want| {want.abs().max().item():.4g})")


@dataclass(frozen=True)
class BadInput:
    """One bad call of a kind: it must raise ``error`` with ``names`` (the argument, as written) in the message.

    ``match``: a regular expression the message must also hold (what would be valid, for instance).
    """

    label: str
    call: Callable[[], Any]
    error: type[Exception] | tuple[type[Exception], ...]
    names: str
    match: str | None = None


@dataclass(frozen=True)
class Kind:
    """How to build, run and decode one attention kind.

    build(dtype) -> the thing (a layer, layers, a model or None for a function), seeded, in ``dtype``.
    inputs(thing, batch, seq, dtype) -> the whole input (a tensor, token ids or a (q, k, v) tuple).
    full(thing, x) -> the full causal pass over ``x``.
    new_cache(thing, x) -> an empty cache (or decoder state) for decoding ``x``, with room for all of it.
    step(thing, cache, chunk) -> the outputs of ``chunk``, the next tokens of ``x``, appended to the cache.
    out_shape(thing, batch, seq) -> the shape of the output for ``seq`` tokens.
    take(x, start, stop) -> tokens start..stop-1 of ``x``; out_seq_dim: the sequence dimension of the output.
    dtypes: the dtypes the kind computes in; bad_inputs: the calls it must refuse, naming the argument.
    reference(thing, x) -> what decoding must equal, when that is another full pass than ``full`` (MLA's absorbed
    form decodes to the explicit form's full pass).
    """

    name: str
    build: Callable[[torch.dtype], Any]
    inputs: Callable[[Any, int, int, torch.dtype], Any]
    full: Callable[[Any, Any], torch.Tensor]
    new_cache: Callable[[Any, Any], Any]
    step: Callable[[Any, Any, Any], torch.Tensor]
    out_shape: Callable[[Any, int, int], tuple[int, ...]]
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)
    bad_inputs: tuple[BadInput, ...] = ()
    take: Callable[[Any, int, int], Any] = lambda x, start, stop: x[:, start:stop]
    out_seq_dim: int = 1
    reference: Callable[[Any, Any], torch.Tensor] | None = None

    def __str__(self) -> str:
        return self.name


def schedule(seq: int, prefill: int = 1) -> list[int]:
    """Chunk sizes for decoding ``seq`` tokens: a prefill of ``prefill`` tokens, then one token at a time."""
    prefill = min(prefill, seq)
    return [prefill] + [1] * (seq - prefill)


class AttentionContract:
    """The four properties, checked on one :class:`Kind`. Each check returns what it computed, for more checks."""

    BATCH, SEQ = 2, 7

    def __init__(self, kind: Kind, seed: int = 0):
        self.kind, self.seed = kind, seed

    def _thing_and_input(self, dtype: torch.dtype, batch: int, seq: int):
        torch.manual_seed(self.seed)
        thing = self.kind.build(dtype)
        torch.manual_seed(self.seed + 1)
        return thing, self.kind.inputs(thing, batch, seq, dtype)

    @torch.no_grad()
    def check_decode_equals_full(self, dtype: torch.dtype = torch.float32, chunks: Sequence[int] | None = None,
                                 batch: int = BATCH, seq: int = SEQ):
        """(a): the chunks' outputs through the cache, joined, equal the full causal pass. Returns the cache."""
        kind = self.kind
        chunks = list(schedule(seq) if chunks is None else chunks)
        assert sum(chunks) == seq and all(c > 0 for c in chunks), f"chunks {chunks} must split {seq} tokens"
        thing, x = self._thing_and_input(dtype, batch, seq)
        full = (kind.reference or kind.full)(thing, x)
        cache = kind.new_cache(thing, x)
        outs, start = [], 0
        for size in chunks:
            out = kind.step(thing, cache, kind.take(x, start, start + size))
            want = kind.out_shape(thing, batch, size)
            assert tuple(out.shape) == want, f"{kind}: a {size}-token step gave {tuple(out.shape)}, not {want}"
            outs.append(out)
            start += size
        for layer_cache in cache if isinstance(cache, (list, tuple)) else [cache]:  # a model: one cache a layer
            if hasattr(layer_cache, "length"):
                assert layer_cache.length == seq, f"{kind}: a cache holds {layer_cache.length} tokens, not {seq}"
        assert_agree(torch.cat(outs, kind.out_seq_dim), full, dtype,
                     f"{kind}: decoding in chunks {chunks} against the full causal pass")
        return cache

    @torch.no_grad()
    def check_output_shape(self, batch: int = BATCH, seq: int = SEQ):
        """(b): the full pass gives the kind's shape (a one-token input too). Returns the output."""
        for b, s in ((batch, seq), (1, 1)):
            thing, x = self._thing_and_input(torch.float32, b, s)
            out = self.kind.full(thing, x)
            want = self.kind.out_shape(thing, b, s)
            assert isinstance(out, torch.Tensor), f"{self.kind}: the full pass gave a {type(out).__name__}"
            assert tuple(out.shape) == want, f"{self.kind}: batch {b}, {s} tokens gave {tuple(out.shape)}, not {want}"
        return out

    @torch.no_grad()
    def check_dtype_kept(self, dtype: torch.dtype):
        """(c): the full pass and a decode step give ``dtype`` back, the dtype the kind was built and fed in."""
        thing, x = self._thing_and_input(dtype, 1, 3)
        full = self.kind.full(thing, x)
        step = self.kind.step(thing, self.kind.new_cache(thing, x), self.kind.take(x, 0, 1))
        assert full.dtype == dtype, f"{self.kind}: the full pass in {dtype} gave {full.dtype}"
        assert step.dtype == dtype, f"{self.kind}: a decode step in {dtype} gave {step.dtype}"
        assert bool(torch.isfinite(full).all()), f"{self.kind}: the full pass in {dtype} is not finite"
        return full

    @staticmethod
    def check_bad_input(bad: BadInput) -> str:
        """(d): ``bad.call()`` raises ``bad.error`` naming the argument. Returns the message."""
        assert bad.names, f"{bad.label}: a bad input must say which argument the message names"
        errors = bad.error if isinstance(bad.error, tuple) else (bad.error,)
        assert all(issubclass(e, (ValueError, TypeError)) for e in errors), f"{bad.label}: {bad.error} is not a " \
            "ValueError or TypeError"
        with pytest.raises(bad.error) as info:
            bad.call()
        message = str(info.value)
        assert bad.names in message, f"{bad.label}: the message does not name {bad.names!r}: {message}"
        if bad.match is not None:
            assert re.search(bad.match, message), f"{bad.label}: {bad.match!r} not in the message: {message}"
        return message
