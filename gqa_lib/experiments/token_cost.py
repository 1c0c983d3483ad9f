"""What one new token costs when a model generates text, with and without a KV cache (notebook 01).

Generating is a loop: read the text so far, predict one more token, append it, repeat. Step ``i``
of a generation from a prompt of ``p`` tokens predicts the token at position ``p + i``.

- Without a cache, step ``i`` runs the whole model over all ``p + i`` tokens again.
- With a cache, step 0 runs over the prompt (the *prefill*) and stores every layer's keys and
  values; each later step runs the model over the one newest token, which attends to the stored
  keys and values.

This module counts the multiply-adds (MACs) of every step exactly, from the shapes alone, for
:class:`gqa_lib.models.tiny_lm.TinyLM`; measures the same count by running the model under PyTorch's
FLOP counter (the brute-force check); times each step; and holds the small computations the
notebook does around cache sizes: the search for the assumptions behind a quoted cache figure,
and where a cache outgrows the weights.

What is counted: the multiply-adds of matrix products (linear layers, ``q @ k^T``, ``weights @ v``).
Norms, RoPE, softmax and the residual additions are left out; they cost O(d_model) per token and
do not change how the cost grows.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from gqa_lib.core.cache_math import DTYPE_BYTES, GB, GIB, dtype_bytes, kv_cache_bytes
from gqa_lib.core.checks import check_positive_int
from gqa_lib.models.catalog import ModelSpec
from gqa_lib.models.tiny_lm import TinyLM, TinyLMConfig

# --------------------------------------------------------------------------------------------
# Counting multiply-adds
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepMacs:
    """Multiply-adds of one forward pass, split by where they happen (all layers together)."""

    projections: int  # q, k, v and output projections
    scores: int  # q @ k^T
    weighted_sum: int  # attention weights @ v
    mlp: int  # gate, up and down projections
    head: int  # final projection to the vocabulary

    @property
    def attention(self) -> int:
        """The part that depends on how many tokens are attended to."""
        return self.scores + self.weighted_sum

    @property
    def total(self) -> int:
        return self.projections + self.scores + self.weighted_sum + self.mlp + self.head

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def _check_config(cfg) -> TinyLMConfig:
    if not isinstance(cfg, TinyLMConfig):
        raise TypeError(f"cfg={cfg!r} must be a TinyLMConfig (got {type(cfg).__name__})")
    return cfg


def forward_macs(cfg: TinyLMConfig, n_queries: int, n_keys: int) -> StepMacs:
    """MACs of one TinyLM forward pass over ``n_queries`` new tokens that attend to ``n_keys`` tokens.

    Without a cache ``n_queries == n_keys`` (the whole sequence); a cached decode step has
    ``n_queries == 1``. Per layer, with d = d_model, h = n_heads, kv = n_kv_heads, d_h = head_dim:

    - projections: n_queries * d * (h*d_h [q] + 2*kv*d_h [k, v] + h*d_h [out])
    - scores and weighted sum: h * n_queries * n_keys * d_h each. The causal mask is applied
      after the product, so masked entries are computed too (as the code does).
    - MLP: 3 * n_queries * d * d_ff
    and once for the model, the head: n_queries * d * vocab (TinyLM scores every position).
    """
    cfg = _check_config(cfg)
    check_positive_int("n_queries", n_queries)
    check_positive_int("n_keys", n_keys)
    if n_keys < n_queries:
        raise ValueError(f"n_keys={n_keys} must be at least n_queries={n_queries} (the new tokens are keys too)")
    d, h, kv, layers = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.n_layers
    d_h = d // h
    per_layer_proj = n_queries * d * (2 * h * d_h + 2 * kv * d_h)
    per_layer_scores = h * n_queries * n_keys * d_h
    per_layer_mlp = 3 * n_queries * d * cfg.d_ff
    return StepMacs(
        projections=layers * per_layer_proj,
        scores=layers * per_layer_scores,
        weighted_sum=layers * per_layer_scores,
        mlp=layers * per_layer_mlp,
        head=n_queries * d * cfg.vocab_size,
    )


def step_shapes(prompt_len: int, n_new: int, use_cache: bool) -> list[tuple[int, int]]:
    """(n_queries, n_keys) of every generation step, as :meth:`TinyLM.generate` runs them."""
    check_positive_int("prompt_len", prompt_len)
    check_positive_int("n_new", n_new)
    shapes = []
    for step in range(n_new):
        seen = prompt_len + step  # tokens in the sequence when this step starts
        n_queries = seen if (not use_cache or step == 0) else 1
        shapes.append((n_queries, seen))
    return shapes


def generation_macs(cfg: TinyLMConfig, prompt_len: int, n_new: int, use_cache: bool) -> list[StepMacs]:
    """MACs of each of the ``n_new`` steps of a greedy generation from a ``prompt_len``-token prompt."""
    return [forward_macs(cfg, q, k) for q, k in step_shapes(prompt_len, n_new, use_cache)]


def context_lengths(prompt_len: int, n_new: int) -> np.ndarray:
    """Tokens already in the sequence at each step (the x axis of the per-token plots)."""
    check_positive_int("prompt_len", prompt_len)
    check_positive_int("n_new", n_new)
    return np.arange(prompt_len, prompt_len + n_new)


def counted_generation_macs(model: TinyLM, idx: torch.Tensor, n_new: int, use_cache: bool) -> list[int]:
    """MACs of each generation step, counted by running the model under ``FlopCounterMode``.

    PyTorch's counter sees every matrix product the model really performs and reports FLOPs,
    2 per multiply-add. This is the brute-force check of :func:`generation_macs`. Attention runs on
    PyTorch's reference ("math") kernel here, which is built from matrix products the counter sees;
    the fused CPU kernel it uses otherwise does the same products but is not counted by this version.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counts, previous = [], [0]
    counter = FlopCounterMode(display=False)

    def record(step):
        total = counter.get_total_flops()
        counts.append((total - previous[0]) // 2)
        previous[0] = total

    with sdpa_kernel(SDPBackend.MATH), counter:
        model.generate(idx, n_new, use_cache=use_cache, on_step=record)
    return counts


# --------------------------------------------------------------------------------------------
# A model to generate with, and timing
# --------------------------------------------------------------------------------------------


def random_tiny_lm(cfg: TinyLMConfig | None = None, seed: int = 0) -> TinyLM:
    """An untrained TinyLM with its own (untied) random output head, in eval mode.

    TinyLM ties its head to its embedding, as trained models do. Untrained, that makes the model
    echo its last input byte forever, which would make "both ways give the same text" a weak
    test. A separate random head makes the greedy output vary from step to step.
    """
    cfg = TinyLMConfig() if cfg is None else _check_config(cfg)
    torch.manual_seed(seed)
    model = TinyLM(cfg)
    model.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
    return model.eval()


class _StepTimer:
    """An ``on_step`` callback that records the seconds since the previous call (or since it was made)."""

    def __init__(self):
        self.seconds: list[float] = []
        self._last = time.perf_counter()

    def __call__(self, step: int) -> None:
        now = time.perf_counter()
        self.seconds.append(now - self._last)
        self._last = now


def time_generation(model: TinyLM, idx: torch.Tensor, n_new: int, use_cache: bool, repeats: int = 1,
                    threads: int | None = 1) -> tuple[torch.Tensor, np.ndarray]:
    """Generate ``n_new`` tokens and time every step; return (tokens, seconds per step).

    With ``repeats > 1`` the generation runs again and each step keeps its fastest time (other
    programs on the machine only ever add time). ``threads`` sets PyTorch's thread count while
    timing (one thread is steadier on a busy machine); the previous setting is restored after.
    """
    check_positive_int("n_new", n_new)
    check_positive_int("repeats", repeats)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(check_positive_int("threads", threads))
    try:
        best = np.full(n_new, np.inf)
        for _ in range(repeats):
            timer = _StepTimer()
            out = model.generate(idx, n_new, use_cache=use_cache, on_step=timer)
            best = np.minimum(best, np.array(timer.seconds))
    finally:
        torch.set_num_threads(old_threads)
    return out, best


def rolling_median(values, window: int = 15) -> np.ndarray:
    """Median of each value and its neighbours (window centred, shrinking at the ends): a steady trend line."""
    check_positive_int("window", window)
    values = np.asarray(values, dtype=float)
    half = window // 2
    return np.array([np.median(values[max(0, i - half): i + half + 1]) for i in range(len(values))])


# --------------------------------------------------------------------------------------------
# Auditing a quoted cache figure: which assumptions reproduce it?
# --------------------------------------------------------------------------------------------

UNIT_BYTES = {"MB": 10**6, "MiB": 2**20, "GB": GB, "GiB": GIB, "TB": 10**12, "TiB": 2**40}
CACHED_TENSORS = {2: "K and V", 1: "K only"}


@dataclass(frozen=True)
class CacheShape:
    """What a cache-size claim is about: a name and the numbers that set the cache per token."""

    name: str
    n_layers: int
    n_kv_heads: int
    head_dim: int

    @classmethod
    def from_spec(cls, spec: ModelSpec, mha: bool = False) -> CacheShape:
        """The shape of a model in ``data/``; ``mha=True`` gives every query head its own K and V."""
        if mha or spec.mla is not None:
            if not mha:
                raise ValueError(f"{spec.name} uses MLA, which caches a latent; pass mha=True for the MHA count")
            return cls(f"{spec.name} (as MHA)", spec.n_layers, spec.n_heads, spec.head_dim)
        return cls(spec.name, spec.n_layers, spec.n_kv_heads, spec.head_dim)


def round_sig(value: float, sig: int) -> float:
    """``value`` rounded to ``sig`` significant figures."""
    check_positive_int("sig", sig)
    return float(f"{value:.{sig}g}")


def search_cache_figure(figure: float, shapes, seq_lens, dtypes, units, tensors=(2, 1), batch: int = 1,
                        sig: int = 2) -> list[dict]:
    """Every combination of assumptions, its cache size in the given unit, and whether it gives ``figure``.

    A combination reproduces the figure when its value rounded to ``sig`` significant figures
    equals the figure (so 36 matches 35.5 to 36.4 with ``sig=2``). ``tensors`` is 2 for keys and
    values (a real KV cache) or 1 for keys only (a common slip).
    """
    if isinstance(figure, bool) or not isinstance(figure, (int, float)) or figure <= 0:
        raise ValueError(f"figure={figure!r} must be a positive number")
    for unit in units:
        if unit not in UNIT_BYTES:
            raise ValueError(f"unit={unit!r} is not known (valid: {', '.join(UNIT_BYTES)})")
    for t in tensors:
        if t not in CACHED_TENSORS:
            raise ValueError(f"tensors={t!r} must be 2 (K and V) or 1 (K only)")
    rows = []
    for shape in shapes:
        for seq_len in seq_lens:
            for dtype in dtypes:
                per_kv = kv_cache_bytes(shape.n_layers, shape.n_kv_heads, shape.head_dim, seq_len, batch,
                                        dtype_bytes(dtype))
                for t in tensors:
                    n_bytes = per_kv * t // 2
                    for unit in units:
                        value = n_bytes / UNIT_BYTES[unit]
                        rows.append({"model": shape.name, "tokens": seq_len, "batch": batch, "dtype": dtype,
                                     "cached": CACHED_TENSORS[t], "unit": unit, "bytes": n_bytes,
                                     "value": value, "matches": round_sig(value, sig) == figure})
    return rows


# --------------------------------------------------------------------------------------------
# Caches of real models, and cache against weights
# --------------------------------------------------------------------------------------------


def weight_bytes(spec: ModelSpec, dtype: str = "bf16") -> int:
    """Bytes of the weights: nominal parameter count times bytes per number."""
    if spec.params_billion is None:
        raise ValueError(f"{spec.name} has no params_billion in data/models.json")
    return round(spec.params_billion * 1e9) * dtype_bytes(dtype)


def cache_bytes_per_token(spec: ModelSpec, batch: int = 1, dtype: str = "bf16", mha: bool = False) -> int:
    """Cache bytes one more token of context adds, for ``batch`` sequences (MLA handled by the spec)."""
    if mha:
        return spec.mha_cache_bytes(1, batch, dtype)
    return spec.cache_bytes(1, batch, dtype)


def crossover_tokens(spec: ModelSpec, batch: int = 1, dtype: str = "bf16", mha: bool = False) -> int:
    """The smallest context at which the cache of ``batch`` sequences holds more bytes than the weights."""
    return math.floor(weight_bytes(spec, dtype) / cache_bytes_per_token(spec, batch, dtype, mha)) + 1


def cache_table(models, dtype: str = "bf16", batch: int = 1) -> list[dict]:
    """One row a model: its attention shape and its cache at its released context (for a DataFrame).

    ``bytes``, ``cache GB`` and ``cache GiB`` are the cache as the model is built: sliding-window
    (local) layers keep only their window. ``all-global GiB`` is the figure if every layer kept every
    token (the same for models without local layers; an upper bound for the others). ``local layers``
    says which layers are local and their window, e.g. "22 of 26, window 512" (empty when none).
    ``KiB per token`` is what one token adds before any window fills.
    """
    if dtype not in DTYPE_BYTES:
        dtype_bytes(dtype)  # raises with the valid names
    rows = []
    for spec in models:
        n_bytes = spec.cache_bytes(None, batch, dtype, windowed=True)
        all_global = spec.cache_bytes(None, batch, dtype)
        sw = spec.sliding_window
        local = "" if sw is None else \
            f"{spec.cache_recipe().local_layers()} of {spec.n_layers}, window {sw.window:,}"
        rows.append({
            "model": spec.name, "attention": spec.attention, "layers": spec.n_layers, "q heads": spec.n_heads,
            "kv heads": spec.n_kv_heads if spec.mla is None else None, "head dim": spec.head_dim,
            "context": spec.context, "local layers": local, "KiB per token": spec.cache_bytes(1, 1, dtype) / 2**10,
            "cache GB": n_bytes / GB, "cache GiB": n_bytes / GIB, "all-global GiB": all_global / GIB,
            "bytes": n_bytes, "all-global bytes": all_global,
        })
    return rows
