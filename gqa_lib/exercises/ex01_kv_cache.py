"""Exercises of notebook 01: the KV-cache formula, for any model, and with sliding-window layers.

Models come from ``data/models.json`` (``gqa_lib.models.catalog.get_model``): a ``ModelSpec`` with ``n_layers``,
``d_model``, ``n_heads``, ``n_kv_heads`` and ``head_dim``.
"""

from __future__ import annotations

from gqa_lib.core.cache_math import kv_cache_bytes
from gqa_lib.exercises.checking import Case, Exercise
from gqa_lib.exercises.museum import mistakes_for
from gqa_lib.models.catalog import get_model


def reference_cache_bytes(model, tokens, batch=1, bytes_per_number=2):
    """Bytes of ``model``'s KV cache for ``tokens`` tokens: gqa_lib.kv_cache_bytes with the model's own head_dim."""
    return kv_cache_bytes(model.n_layers, model.n_kv_heads, model.head_dim, tokens, batch, bytes_per_number)


def _describe(m) -> str:
    return (f"{m.name} ({m.n_layers} layers, d_model {m.d_model:,}, {m.n_heads} query heads, {m.n_kv_heads} KV "
            f"head{'s' * (m.n_kv_heads > 1)}, head_dim {m.head_dim})")


def _cache_cases() -> list[Case]:
    # Two models whose head_dim is not d_model / n_heads (Gemma 3 1B, PaLM 540B), and bytes per number other
    # than 2 (Qwen2.5-0.5B in fp32, Llama-3.1 405B in one byte), so that leaving a factor out never gives the
    # number of another mistake on every case.
    rows = [("GPT-2 small", 1024, 1, 2), ("Llama-3 8B", 8192, 1, 2), ("Gemma 3 1B", 32768, 1, 2),
            ("Falcon-7B", 2048, 4, 2), ("Qwen2.5-0.5B", 1, 1, 4), ("PaLM 540B", 2048, 2, 2),
            ("Llama-3.1 405B", 131072, 8, 1)]
    cases = []
    for i, (name, tokens, batch, nbytes) in enumerate(rows):
        m = get_model(name)
        cases.append(Case(f"{_describe(m)}, {tokens:,} tokens, batch {batch}, {nbytes} bytes per number",
                          (m, tokens, batch, nbytes), size=i))
    return cases


cache_bytes = Exercise(
    "cache_bytes", "cache_bytes(model, tokens, batch, bytes_per_number)", reference_cache_bytes, _cache_cases,
    mistakes_for("cache_bytes"), reference_name="gqa_lib.kv_cache_bytes with each model's own head_dim")
check_cache_bytes = cache_bytes.check


def reference_sliding_window_cache_bytes(model, tokens, window, local_per_global, batch=1, bytes_per_number=2):
    """Cache bytes when ``local_per_global`` local layers alternate with one global layer.

    Layer i (from 0) is global when (i + 1) % (local_per_global + 1) == 0, so there are
    n_layers // (local_per_global + 1) global layers; they keep every token. Local layers keep the
    last min(tokens, window) tokens. ``local_per_global = 0``: every layer is global.
    """
    n_global = model.n_layers // (local_per_global + 1)
    n_local = model.n_layers - n_global
    per_layer_token = kv_cache_bytes(1, model.n_kv_heads, model.head_dim, 1, batch, bytes_per_number)
    return per_layer_token * (n_global * tokens + n_local * min(tokens, window))


def _sliding_cases() -> list[Case]:
    gemma, llama = get_model("Gemma 3 1B"), get_model("Llama-3 8B")
    # Llama-3 8B with 2 local layers per global one: 32 / 3 = 10.67 global layers, which `round` makes 11 and
    # `//` 10 (layers 2, 5, ..., 29): only a fraction of a half or more tells the two apart.
    rows = [(llama, 8192, 4096, 0, 1, 2, "every layer global"),
            (gemma, 100, 512, 5, 1, 2, "5 local layers per global one, window 512"),
            (gemma, 32768, 512, 5, 1, 2, "5 local layers per global one, window 512"),
            (llama, 8192, 4096, 1, 2, 2, "local and global layers alternating, window 4,096"),
            (llama, 8192, 512, 2, 1, 2, "2 local layers per global one, window 512"),
            (llama, 1000, 4096, 1, 1, 2, "local and global layers alternating, window 4,096"),
            (gemma, 1000, 512, 5, 4, 4, "5 local layers per global one, window 512")]
    return [Case(f"{_describe(m)}, {why}, {tokens:,} tokens, batch {b}, {nb} bytes per number",
                 (m, tokens, w, k, b, nb), size=i) for i, (m, tokens, w, k, b, nb, why) in enumerate(rows)]


sliding_window_cache_bytes = Exercise(
    "sliding_window_cache_bytes", "sliding_window_cache_bytes(model, tokens, window, local_per_global, ...)",
    reference_sliding_window_cache_bytes, _sliding_cases, mistakes_for("sliding_window_cache_bytes"),
    reference_name="gqa_lib.kv_cache_bytes applied to the global and the local layers separately")
check_sliding_window_cache_bytes = sliding_window_cache_bytes.check
