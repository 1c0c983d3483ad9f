"""Token eviction: a cache that keeps only ``budget`` tokens per KV head, chosen by what attention did so far.

The eviction family (for notebook 08), simulated the way ``cache_shrink`` simulates windows: one causal pass
in which query ``t`` reads exactly the keys a decoder with that cache would hold at step ``t``
(tests/test_token_eviction.py decodes with a real cache, token by token, and checks both agree).
Keys keep the positions they were rotated at.

- :class:`H2O` (Zhang et al. 2023, arXiv 2306.14048): the ``recent`` newest tokens plus the heavy hitters, the
  tokens with the most attention accumulated so far; token by token from the first.
- :class:`SnapKV` (Li et al. 2024, arXiv 2404.14469): after a prompt, the tokens its last ``window`` queries
  attend to most, pooled along tokens; the budget applies to the prompt only.
- :class:`KeyNorm` (Devoto et al. 2024, arXiv 2406.11430): the keys of smallest L2 norm, plus the ``recent``.
- :class:`OracleTopK`: nothing evicted; each step reads the ``k`` keys of largest true score, as DeepSeek V3.2's
  sparse attention reads a top-k of a cache it keeps whole. Bytes read differ from bytes stored.

The GQA question: query heads that share a KV head share its cache, so a token leaves only if the whole group
lets it go. ``scoring`` says who decides: ``"kv_sum"``/``"kv_max"``, the KV head, from its query heads' scores
summed or maxed, so it keeps ``budget`` tokens; ``"query"``, each query head keeps its own ``budget`` and the
KV head stores the union of their choices, which can be larger: :attr:`EvictedPass.stored` counts it, per KV
head per step. Every query head of a group reads everything its KV head stores (what a decoder's kernel does);
only the oracle, a read pattern over a whole cache, restricts each query head to its own choice.

Each policy's ``reads(q, k)``: q (batch, n_heads, seq, head_dim), k (batch, n_kv_heads, seq, head_dim) -> bool
(batch, n_heads, seq, seq), may query head ``h`` at step ``t`` read key ``j``; :func:`evicted_attention` runs the
layer with it. Bytes: :func:`kv_bytes` prices tokens per KV head as ``core.cache_math.ElementType`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from gqa_lib.core.attention import GroupedQueryAttention
from gqa_lib.core.cache_math import as_element
from gqa_lib.core.checks import check_layer_input, check_positive_int

SCORINGS = ("kv_sum", "kv_max", "query")
POOLINGS = ("max", "avg")


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} must be one of {choices}")


def _check_recent(recent, budget: int) -> None:
    if isinstance(recent, bool) or not isinstance(recent, int) or not 0 <= recent <= budget:
        raise ValueError(f"recent={recent!r} must be an int in 0..budget={budget}: the recent tokens are part of "
                         "the budget")


@dataclass(frozen=True)
class H2O:
    """Heavy hitters plus the ``recent`` newest tokens, ``budget`` tokens per KV head (per query head: see module).

    A token's score is the attention it has received so far: the sum, over every query that read it, of that
    query's softmax weight on it (per query head; ``scoring`` joins a group's). At step ``t`` a full cache
    first evicts its lowest-scoring token outside the ``recent`` newest (the earliest on a tie), then takes token
    ``t``, whose query reads the cache. Departures from the paper's Algorithm 1, which reads ``budget + 1`` tokens
    and then evicts using step ``t``'s weights too: the cache never exceeds ``budget`` (a decoder's fixed buffer),
    so ``recent == budget`` is exactly ``cache_shrink``'s window of ``budget``; scores lag one step. The released
    code (FMInference/H2O, ``utils_real_drop``) runs the prompt with full attention before its first eviction,
    sums scores over the batch and scores per query head, a cache per query head (written for MHA); here every
    token is a step and each sequence decides alone. Errors: ValueError naming ``budget``, ``recent`` or ``scoring``.
    """

    budget: int
    recent: int
    scoring: str = "kv_sum"

    def __post_init__(self):
        check_positive_int("budget", self.budget)
        _check_recent(self.recent, self.budget)
        _check_choice("scoring", self.scoring, SCORINGS)

    def reads(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return _evict_token_by_token(_logits(q, k), k.shape[1], self.budget, self.recent, self.scoring)


@dataclass(frozen=True)
class KeyNorm:
    """The ``recent`` newest tokens plus the keys of smallest L2 norm, ``budget`` tokens per KV head.

    Devoto et al. found low-norm keys draw the most attention. The norm is the key's own, so the KV head decides
    (no ``scoring``); RoPE rotates pairs of numbers and leaves it unchanged. Evicts as :class:`H2O` does, the
    largest norm first; this keeps, of the tokens older than the recent ones, the ``budget - recent`` of smallest
    norm. Errors: ValueError naming ``budget`` or ``recent``.
    """

    budget: int
    recent: int

    def __post_init__(self):
        check_positive_int("budget", self.budget)
        _check_recent(self.recent, self.budget)

    def reads(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        norms = k.norm(dim=-1)  # (batch, n_kv_heads, seq)
        return _evict_token_by_token(_logits(q, k), k.shape[1], self.budget, self.recent, "kv_sum", norms)


@dataclass(frozen=True)
class SnapKV:
    """After a ``prompt`` of that many tokens, keep ``budget - window`` of its tokens plus its last ``window``.

    As the paper and its code (FasterDecoding/SnapKV, ``snapkv_utils.py``): the last ``window`` prompt queries
    (the observation window) read the prompt causally; each earlier token's score is the sum of their softmax
    weights on it, pooled along tokens (``pooling`` 'max' or 'avg', ``kernel`` odd, stride 1, zero-padded:
    ``F.max_pool1d``/``F.avg_pool1d``); the top ``budget - window`` stay (the earliest on a tie, a stable sort).
    Defaults kernel 5 and 'avg' are that code's. A prompt of at most ``budget`` tokens is kept whole. The prompt
    is prefilled uncompressed, so its own queries read every earlier token. Every token generated after the
    prompt is kept, as the paper does: the cache then grows past ``budget`` by one token a step.
    GQA: the released code repeats K and V per query head before choosing (each query head picks and stores its
    own), so a GQA model caches as MHA would; ``scoring="query"`` is that choice stored once, as a union.
    Errors: ValueError naming ``budget``, ``prompt``, ``window``, ``kernel``, ``pooling`` or ``scoring``.
    """

    budget: int
    prompt: int
    window: int
    kernel: int = 5
    pooling: str = "avg"
    scoring: str = "kv_sum"

    def __post_init__(self):
        check_positive_int("budget", self.budget)
        check_positive_int("prompt", self.prompt)
        check_positive_int("window", self.window)
        if self.window > min(self.budget, self.prompt):
            raise ValueError(f"window={self.window} must be at most budget={self.budget} and prompt={self.prompt}: "
                             "the observation window is the prompt's last queries, and it is always kept")
        check_positive_int("kernel", self.kernel)
        if self.kernel % 2 == 0:
            raise ValueError(f"kernel={self.kernel} must be odd: pooled with padding kernel // 2, an even kernel "
                             "gives one score more than there are tokens")
        _check_choice("pooling", self.pooling, POOLINGS)
        _check_choice("scoring", self.scoring, SCORINGS)

    def reads(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        logits = _logits(q, k)  # (batch, n_heads, seq, seq)
        b, n_heads, s, _ = logits.shape
        p, w = self.prompt, self.window
        if p > s:
            raise ValueError(f"prompt={p} must be at most the sequence's {s} tokens")
        causal = _causal(s, q.device)
        reads = causal.expand(b, n_heads, s, s).clone()
        if p <= self.budget:
            return reads
        weights = logits[:, :, p - w:p, :p].masked_fill(~causal[p - w:p, :p], -math.inf).softmax(-1)
        votes = weights.sum(2)[..., :p - w]  # (batch, n_heads, p - w): what the window gave each older token
        pool = F.max_pool1d if self.pooling == "max" else F.avg_pool1d
        votes = pool(votes, self.kernel, stride=1, padding=self.kernel // 2)
        score = _group_scores(votes, k.shape[1], self.scoring)  # (batch, choosers, p - w)
        top = score.sort(dim=-1, descending=True, stable=True).indices[..., :self.budget - w]
        chosen = torch.zeros(*score.shape[:2], p, dtype=torch.bool, device=q.device).scatter_(-1, top, True)
        chosen[..., p - w:] = True
        reads[:, :, p:, :p] = _union_per_query_head(chosen, k.shape[1], n_heads)[:, :, None, :]
        return reads


@dataclass(frozen=True)
class OracleTopK:
    """Nothing evicted; query ``t`` reads only the ``k`` keys of largest true score (all of them while ``t < k``).

    The score is the full causal attention weight (the same order as ``q . k``); ``scoring="query"``: each query
    head attends over its own ``k`` only (a read pattern, not a cache) and its KV head reads their union;
    ``"kv_sum"``/``"kv_max"``: the group picks one ``k``, as DeepSeek-V3.2-Exp's sparse attention (its 2025
    technical report) shares one top-k per token across the heads reading its one latent. An oracle: the true
    scores need the whole cache read, which a real selector (V3.2's lightning indexer, a small attention of its
    own) only estimates. Errors: ValueError naming ``k`` or ``scoring``.
    """

    k: int
    scoring: str = "query"

    def __post_init__(self):
        check_positive_int("k", self.k)
        _check_choice("scoring", self.scoring, SCORINGS)

    def reads(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        s = q.shape[2]
        causal = _causal(s, q.device)
        weights = _logits(q, k).masked_fill(~causal, -math.inf).softmax(-1)  # (batch, n_heads, seq, seq)
        n_heads = weights.shape[1]
        score = _group_scores(weights.transpose(1, 2), k.shape[1], self.scoring, dim=2)  # (batch, seq, choosers, s)
        top = score.topk(min(self.k, s), -1).indices
        chosen = torch.zeros_like(score, dtype=torch.bool).scatter_(-1, top, True) & causal[:, None, :]
        chosen = chosen.transpose(1, 2)  # (batch, choosers, seq, seq)
        return chosen if self.scoring == "query" else chosen.repeat_interleave(n_heads // k.shape[1], 1)


POLICIES = (H2O, SnapKV, KeyNorm, OracleTopK)


@dataclass(frozen=True)
class EvictedPass:
    """One layer's pass under a policy.

    out: (batch, seq, d_model), the layer's output. reads: (batch, n_heads, seq, seq) bool, query head ``h`` at
    step ``t`` reads key ``j``. stored: (batch, n_kv_heads, seq) int64, tokens the KV head's cache holds when
    step ``t`` is read. read: the same shape, tokens it gives its query heads at step ``t`` (the union of their
    rows): equal to ``stored`` except for :class:`OracleTopK`, which stores every token.
    """

    out: torch.Tensor
    reads: torch.Tensor
    stored: torch.Tensor
    read: torch.Tensor


@torch.no_grad()
def evicted_attention(layer: GroupedQueryAttention, x: torch.Tensor, policy, store_dtype=None) -> EvictedPass:
    """``layer``'s causal pass over ``x`` (batch, seq, d_model) with its cache under ``policy`` (one of POLICIES).

    A measurement: no gradients. Computes in the layer's dtype; ``store_dtype`` (e.g. ``torch.bfloat16``, what
    ``cache_shrink``'s unquantized caches store) rounds the keys and values to it first, so the policy scores and
    attends with what the cache holds.

    Errors: TypeError for another layer or policy; ValueError or TypeError for ``x`` as the layer's own checks
    give them (shape, dtype, a nan or inf), and ValueError for a SnapKV ``prompt`` longer than ``x``.
    """
    if not isinstance(layer, GroupedQueryAttention):
        raise TypeError(f"layer={type(layer).__name__} must be a GroupedQueryAttention")
    if not isinstance(policy, POLICIES):
        raise TypeError(f"policy={type(policy).__name__} must be one of {', '.join(p.__name__ for p in POLICIES)}")
    check_layer_input(x, layer.d_model, layer.q_proj.weight.dtype)
    q, k, v = layer.qkv(x)  # q (batch, n_heads, seq, head_dim); k, v (batch, n_kv_heads, seq, head_dim)
    if store_dtype is not None:
        k, v = (t.to(store_dtype).to(q.dtype) for t in (k, v))
    reads = policy.reads(q, k)  # (batch, n_heads, seq, seq)
    b, n_heads, s, d = q.shape
    n_kv = k.shape[1]
    rows = n_heads // n_kv * s  # a group's query heads stacked as rows, as grouped_attention does
    out = F.scaled_dot_product_attention(q.reshape(b, n_kv, rows, d), k, v, attn_mask=reads.reshape(b, n_kv, rows, s))
    out = layer.o_proj(out.reshape(b, n_heads, s, d).transpose(1, 2).reshape(b, s, n_heads * d))
    read = reads.view(b, n_kv, n_heads // n_kv, s, s).any(2).sum(-1)  # (batch, n_kv_heads, seq)
    everything = torch.arange(1, s + 1, device=x.device).expand(b, n_kv, s).clone()  # the oracle evicts nothing
    stored = everything if isinstance(policy, OracleTopK) else read
    return EvictedPass(out, reads, stored, read)


class EvictedCacheAttention(nn.Module):
    """A trained GQA layer whose bf16 cache is managed by an eviction ``policy``, in one causal pass.

    For ``gqa_lib.experiments.cache_pareto``: the keys and values are rounded to bf16 as ``cache_shrink``'s caches
    are, and after each pass ``last`` holds its :class:`EvictedPass` without ``out`` or ``reads`` (``stored`` and
    ``read``, tokens per KV head at every step). Input and output: (batch, seq, d_model); uncached pass only.
    """

    caches = True

    def __init__(self, base: GroupedQueryAttention, policy):
        super().__init__()
        if not isinstance(base, GroupedQueryAttention):
            raise TypeError(f"base={type(base).__name__} must be a GroupedQueryAttention")
        if not isinstance(policy, POLICIES):
            raise TypeError(f"policy={type(policy).__name__} must be one of "
                            f"{', '.join(p.__name__ for p in POLICIES)}")
        self.base, self.policy = base, policy
        self.last = None

    def numbers_per_token(self) -> int:
        return 2 * self.base.n_kv_heads * self.base.head_dim

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        if cache is not None:
            raise ValueError("EvictedCacheAttention runs the uncached pass only (cache=None)")
        p = evicted_attention(self.base, x, self.policy, store_dtype=torch.bfloat16)
        self.last = EvictedPass(None, None, p.stored, p.read)
        return p.out


def kv_bytes(tokens, head_dim: int, element="bf16"):
    """Bytes one KV head's cache holds for ``tokens`` tokens: tokens x 2 (key, value) x ``element``'s vector bytes.

    ``tokens``: an int or an integer tensor (``EvictedPass.stored`` or ``.read``; the result has its shape).
    ``element``: a name ('bf16': 2 bytes a number) or a ``core.cache_math.ElementType``, which prices scales too.
    Sum over KV heads and layers for a model's cache. Errors: ValueError for negative ``tokens`` or ``head_dim``.
    """
    check_positive_int("head_dim", head_dim)
    if bool((torch.as_tensor(tokens) < 0).any()):
        raise ValueError(f"tokens={tokens!r} must be 0 or more")
    return tokens * 2 * as_element(element).vector_bytes(head_dim)


def _causal(s: int, device=None) -> torch.Tensor:
    return torch.ones(s, s, dtype=torch.bool, device=device).tril()  # (seq, seq): query i reads key j <= i


def _logits(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q (batch, n_heads, s, d) . k (batch, n_kv_heads, s, d) / sqrt(d): (batch, n_heads, s, s), K not copied."""
    b, n_heads, s, d = q.shape
    n_kv = k.shape[1]
    qg = q.reshape(b, n_kv, n_heads // n_kv * s, d)  # (batch, n_kv_heads, group_size * s, d)
    return (qg @ k.transpose(-2, -1) / math.sqrt(d)).reshape(b, n_heads, s, k.shape[2])


def _group_scores(per_head: torch.Tensor, n_kv_heads: int, scoring: str, dim: int = 1) -> torch.Tensor:
    """Scores per query head along ``dim`` -> per chooser: each KV head's group summed or maxed, or as they are."""
    if scoring == "query":
        return per_head
    grouped = per_head.unflatten(dim, (n_kv_heads, -1))  # the group's query heads side by side at dim + 1
    return grouped.sum(dim + 1) if scoring == "kv_sum" else grouped.amax(dim + 1)


def _union_per_query_head(chosen: torch.Tensor, n_kv_heads: int, n_heads: int) -> torch.Tensor:
    """(batch, choosers, ...) bool -> (batch, n_heads, ...): what each KV head stores, the union of its choosers'
    choices, read by every query head of its group."""
    union = chosen.unflatten(1, (n_kv_heads, -1)).any(2)  # (batch, n_kv_heads, ...)
    return union.repeat_interleave(n_heads // n_kv_heads, 1)


def _evict_token_by_token(logits: torch.Tensor, n_kv_heads: int, budget: int, recent: int, scoring: str,
                          norms: torch.Tensor | None = None) -> torch.Tensor:
    """The keys each query head reads, deciding evictions token by token (H2O; KeyNorm with ``norms``).

    logits: (batch, n_heads, s, s). Each chooser (a KV head, or a query head for ``scoring="query"``) holds at
    most ``budget`` tokens; when full, before taking token ``t``, it evicts the token of lowest score among
    those at ``t - recent`` or older (H2O: accumulated attention; KeyNorm: minus the key norm).
    """
    b, n_heads, s, _ = logits.shape
    choosers = n_heads if scoring == "query" else n_kv_heads
    pos = torch.arange(s, device=logits.device)
    held = torch.zeros(b, choosers, s, dtype=torch.bool, device=logits.device)
    received = logits.new_zeros(b, n_heads, s)  # attention each token has received so far, per query head
    reads = torch.zeros(b, n_heads, s, s, dtype=torch.bool, device=logits.device)
    for t in range(s):
        score = -norms if norms is not None else _group_scores(received, n_kv_heads, scoring)  # (b, choosers, s)
        victim = score.masked_fill(~held | (pos > t - recent), math.inf).argmin(-1)  # argmin: the earliest on ties
        full = held.sum(-1) >= budget  # (b, choosers); a victim exists then, since recent <= budget
        held[full] = held[full].scatter(-1, victim[full][:, None], False)
        held[..., t] = True
        reads[:, :, t] = _union_per_query_head(held, n_kv_heads, n_heads)
        if norms is None:
            received += logits[:, :, t].masked_fill(~reads[:, :, t], -math.inf).softmax(-1)
    return reads
