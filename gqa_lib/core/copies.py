"""Which tensors a computation copies: the data-moving operations PyTorch runs inside a call.

Broadcasting is a rule about shapes, not a promise about memory. ``q @ k.transpose(-2, -1)`` with
``q`` of shape (batch, n_heads, seq, head_dim) and ``k`` of shape (batch, 1, seq, head_dim) is
defined as if ``k`` were repeated over the heads; whether PyTorch really writes that repeat depends
on how ``matmul`` folds the leading dimensions into one batched product. :func:`copies_made` runs a
call and lists every copy it made, with the tensor it copied from, so a notebook can print the answer
instead of asserting it.

It watches the operators PyTorch dispatches (through ``TorchDispatchMode``, the mechanism PyTorch's
own ``FlopCounterMode`` uses), below autograd, where composite operations such as ``matmul`` have
already been split into ``expand``, ``clone`` and ``bmm``. It works on any device and needs no profiler.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
# Operators that write existing numbers to new memory (no arithmetic): the first argument is the source,
# except for copy_, whose source is the second.
_COPY_FROM_FIRST = {_aten.clone.default, _aten._to_copy.default, _aten.repeat.default,
                    _aten.repeat_interleave.self_int, _aten.repeat_interleave.self_Tensor,
                    _aten.index_select.default, _aten.expand_copy.default}
_COPY_FROM_SECOND = {_aten.copy_.default, _aten.copy.default}


@dataclass(frozen=True)
class Copy:
    """One copy: the operator, which named input it copied from ("?" if none), the new shape and its bytes."""

    op: str
    source: str
    shape: tuple[int, ...]
    nbytes: int


class _CopyLog(TorchDispatchMode):
    def __init__(self, named: dict[str, torch.Tensor]):
        super().__init__()
        self.storages = {name: t.untyped_storage().data_ptr() for name, t in named.items()}
        self.copies: list[Copy] = []

    def _name(self, t) -> str:
        if isinstance(t, torch.Tensor):
            ptr = t.untyped_storage().data_ptr()
            for name, p in self.storages.items():
                if p == ptr:
                    return name
        return "?"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _COPY_FROM_FIRST or func in _COPY_FROM_SECOND or func is _aten.cat.default:
            if func is _aten.cat.default:
                sources = {self._name(t) for t in args[0]}
                source = ",".join(sorted(sources))
            else:
                source = self._name(args[1] if func in _COPY_FROM_SECOND else args[0])
            self.copies.append(Copy(str(func.overloadpacket.__name__), source, tuple(out.shape), out.nbytes))
        return out


def copies_made(fn: Callable[..., object], *args, **named: torch.Tensor) -> list[Copy]:
    """Run ``fn(*args)`` and return the copies it made, in order.

    ``named``: the tensors to recognise as sources (``q=q, k=k``); a copy of a view of one of them
    (an ``expand``, a ``transpose``) is reported under that name, since it shares the same storage.
    Fresh tensors the call makes by arithmetic (``bmm``'s result, a mask built from ``ones``) are not
    copies and are not listed; a ``repeat`` of such a tensor is listed with source "?".
    Raises ``TypeError`` if a named value is not a tensor.
    """
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}={type(t).__name__} must be a torch.Tensor to be recognised as a source")
    with _CopyLog(named) as log:
        fn(*args)
    return log.copies
