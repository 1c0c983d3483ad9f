"""Exercises of notebook 04: which KV head a query head reads, copying KV heads, GQA by stacking rows."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gqa_lib.core.attention import expand_kv as lib_expand_kv
from gqa_lib.core.attention import grouped_attention
from gqa_lib.core.layout import AttentionLayout
from gqa_lib.exercises.checking import (
    Case,
    Exercise,
    Rule,
    Watch,
    attention_case,
    dtype_name,
    masked_row_hint,
    randn,
    seeded_cases,
)
from gqa_lib.exercises.museum import mistakes_for

# (n_heads, n_kv_heads): MHA and MQA ends, GQA between, SmolLM2's and Llama-3 8B's shapes.
LAYOUTS = [(1, 1), (4, 1), (4, 4), (6, 2), (6, 3), (8, 2), (9, 3), (32, 8)]


def reference_kv_head_of(query_head, n_heads, n_kv_heads):
    """gqa_lib.AttentionLayout.kv_head_of: query head i reads KV head i // group_size."""
    return AttentionLayout(n_heads, n_kv_heads, 1).kv_head_of(query_head)


def _kv_head_cases() -> list[Case]:
    return [Case(f"query_head={i}, n_heads={h}, n_kv_heads={kv}", (i, h, kv), size=h * 100 + i)
            for h, kv in LAYOUTS for i in range(h)]


kv_head_of = Exercise("kv_head_of", "kv_head_of(query_head, n_heads, n_kv_heads)", reference_kv_head_of,
                      _kv_head_cases, mistakes_for("kv_head_of"),
                      reference_name="gqa_lib.AttentionLayout.kv_head_of",
                      summary="every query head of " + ", ".join(f"{h} query / {kv} KV heads" for h, kv in LAYOUTS),
                      index=True)  # the answer indexes the KV heads: 1.0 (from `/`) is wrong, np.int64(1) right
check_kv_head_of = kv_head_of.check


def _expand_cases() -> list[Case]:
    # (batch, n_kv_heads, seq, head_dim, group_size, dtype)
    rows = [(1, 1, 1, 2, 1, torch.float32), (1, 2, 3, 4, 2, torch.float32), (2, 3, 5, 4, 3, torch.float32),
            (2, 1, 4, 8, 4, torch.float32), (2, 8, 6, 16, 4, torch.bfloat16)]
    return seeded_cases("expand_kv", rows, _expand_case)


def _expand_case(gen, b, kv, s, d, group_size, dtype) -> Case:
    """x of shape (b, kv, s, d) = (batch, n_kv_heads, seq, head_dim) and the group size."""
    label = (f"x of shape ({b}, {kv}, {s}, {d}) = (batch, n_kv_heads, seq, head_dim), group_size {group_size} "
             f"({kv * group_size} query heads), {dtype_name(dtype)}")
    return Case(label, (randn(gen, b, kv, s, d, dtype=dtype), group_size), size=b * kv * s * d * group_size,
                info={"n_heads": kv * group_size, "n_kv_heads": kv})


expand_kv = Exercise("expand_kv", "expand_kv(x, group_size)", lib_expand_kv, _expand_cases, mistakes_for("expand_kv"),
                     reference_name="gqa_lib.expand_kv (= x.repeat_interleave(group_size, dim=1))")
check_expand_kv = expand_kv.check


def reference_gqa(q, k, v):
    """gqa_lib.grouped_attention: causal, the queries being the last s_q of the s_k tokens."""
    return grouped_attention(q, k, v, causal=True)


# ------------------------------------------------------------------ the rule of gqa: K and V are never copied
_aten = torch.ops.aten
# Operators that write numbers they were given to new memory, without arithmetic (a copy): the tensors among their
# arguments are what they copy from. Views (expand, view, transpose, slicing) write nothing and share their input's
# memory; arithmetic (matmul, softmax, +) makes new numbers, not copies.
_COPIES = {_aten.clone.default, _aten._to_copy.default, _aten.repeat.default, _aten.repeat_interleave.self_int,
           _aten.repeat_interleave.self_Tensor, _aten.index_select.default, _aten.index.Tensor, _aten.gather.default,
           _aten.expand_copy.default, _aten.cat.default, _aten.stack.default, _aten.copy_.default, _aten.copy.default,
           _aten.index_put_.default, _aten.index_put.default, _aten.masked_scatter.default,
           _aten.slice_scatter.default, _aten.select_scatter.default, _aten.tile.default}


class NoCopyOfKV(TorchDispatchMode, Watch):
    """Watches one call of a learner's ``gqa``: the task is to meet each KV head once, so no tensor that holds copied
    K (or V) numbers may hold more of them than K (or V) itself (``repeat_interleave``, ``expand(...).contiguous()``,
    ``k[:, idx]``, a broadcast ``@`` over a group axis, SDPA's ``enable_gqa=True`` on PyTorch's reference path: each
    writes K out ``group_size`` times).

    How: below autograd, every operator PyTorch dispatches is seen (``TorchDispatchMode``, as in
    ``gqa_lib.core.copies``). The memory of k and v is marked; a copy whose input is marked memory marks its output
    (so a copy of a copy counts, and a view of marked memory is marked memory); and a marked block larger than K's
    (V's) count of numbers, in elements, breaks the rule. One copy of K's own size (``k.float()``, a
    ``.contiguous()`` of a transpose) is allowed.

    Limits: numbers taken out of PyTorch (``.tolist()``, numpy) and put back are not followed; a function that
    reads K once per query head through views (a loop over heads, one SDPA call each) copies nothing and passes,
    although it reads each KV head group_size times; a copy made inside a fused kernel that PyTorch does not
    dispatch (a compiled extension) is not seen.
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        TorchDispatchMode.__init__(self)
        # storage address -> (name, numbers of the original, the largest marked block seen, the operator that made it)
        self.marked: dict[int, list] = {}
        for name, t in (("K", k), ("V", v)):
            self.marked[t.untyped_storage().data_ptr()] = [name, t.numel(), t.numel(), None, tuple(t.shape)]
        self.worst: tuple | None = None
        self._held: list[torch.Tensor] = []  # marked copies kept alive: freed memory is reused at the same address

    def _mark_of(self, t):
        return self.marked.get(t.untyped_storage().data_ptr()) if isinstance(t, torch.Tensor) else None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _COPIES:
            flat = [a for a in args if isinstance(a, torch.Tensor)]
            flat += [t for a in args if isinstance(a, (list, tuple)) for t in a if isinstance(t, torch.Tensor)]
            sources = [m for m in (self._mark_of(t) for t in flat) if m is not None]
            results = out if isinstance(out, (list, tuple)) else [out]
            for r in results:
                if sources and isinstance(r, torch.Tensor):
                    name = "+".join(sorted({m[0] for m in sources}))
                    original = sum({m[0]: m[1] for m in sources}.values())  # K and V copied together count both
                    held = r.untyped_storage().nbytes() // r.element_size()
                    mark = self.marked.setdefault(r.untyped_storage().data_ptr(), [name, original, 0, None, ()])
                    self._held.append(r)
                    if held > mark[2]:
                        mark[2:5] = [held, func.overloadpacket.__name__, tuple(r.shape)]
                    if held > original and (self.worst is None or held / original > self.worst[2] / self.worst[1]):
                        self.worst = (name, original, held, func.overloadpacket.__name__, tuple(r.shape),
                                      r.element_size())
        return out

    def __exit__(self, *exc):
        self._held.clear()
        return TorchDispatchMode.__exit__(self, *exc)

    def broken(self) -> str | None:
        if self.worst is None:
            return None
        name, original, held, op, shape, size = self.worst
        return (f"your function copied {name}: `{op}` wrote a tensor of shape {shape} holding {held:,} of its numbers, "
                f"{held / original:g} times the {original:,} that {name} holds. The task is to meet each KV head once, "
                "as it is cached: stack each group's query heads as rows, q.reshape(b, n_kv_heads, group_size * s_q, "
                "head_dim), and multiply by k itself (section 5). repeat_interleave, expand(...).contiguous(), "
                "indexing with repeated heads, a broadcast `@` over a group axis and SDPA's enable_gqa=True on "
                "PyTorch's reference path all write K and V out group_size times.")


NO_COPY = Rule("without copying K or V (no tensor holds more of their numbers than they do)",
               lambda args: NoCopyOfKV(args[1], args[2]))


def _gqa_cases() -> list[Case]:
    # (batch, n_heads, n_kv_heads, s_q, s_k, head_dim, dtype)
    rows = [(1, 1, 1, 1, 1, 4, torch.float32), (1, 2, 2, 3, 3, 4, torch.float32), (2, 4, 2, 3, 3, 8, torch.float32),
            (2, 4, 1, 4, 4, 8, torch.float32), (2, 6, 3, 1, 9, 8, torch.float32), (2, 6, 2, 3, 8, 8, torch.float32),
            (3, 8, 2, 5, 5, 16, torch.float32), (2, 9, 3, 4, 11, 8, torch.bfloat16)]
    return seeded_cases("gqa", rows, attention_case)


gqa = Exercise("gqa", "gqa(q, k, v)", reference_gqa, _gqa_cases, mistakes_for("gqa"),
               reference_name="gqa_lib.grouped_attention", nan_hint=masked_row_hint, rule=NO_COPY)
check_gqa = gqa.check
