"""Auto-checked exercises for the notebooks, and a museum of real bugs they recognise.

Each notebook NN has a module ``exNN_...`` with its exercises; each exercise has a ``check_<name>(fn)``
that prints "correct", "not yet: ..." (an unfinished skeleton) or "wrong: ..." with the smallest
failing input, the expected and received values and, for a known mistake that reproduces the learner's
output on every case, its name. Reference solutions are in the repository's ``solutions/`` folder; wrong
ones in :mod:`.museum`.
"""

from __future__ import annotations

from gqa_lib.exercises import (
    ex01_kv_cache,
    ex02_mha,
    ex03_mqa,
    ex04_gqa,
    ex05_sharing,
    ex06_tradeoff,
    ex07_mla,
    ex08_cache_shrink,
    museum,
)
from gqa_lib.exercises.checking import Case, Exercise, Mistake, Result

# notebook number -> its exercises, in the order the notebook asks them
BY_NOTEBOOK: dict[str, list[Exercise]] = {
    "01": [ex01_kv_cache.cache_bytes, ex01_kv_cache.sliding_window_cache_bytes],
    "02": [ex02_mha.mha_left_padded, ex02_mha.rope, ex02_mha.decode_step],
    "03": [ex03_mqa.mqa_decode_ragged, ex03_mqa.attend_new_tokens],
    "04": [ex04_gqa.kv_head_of, ex04_gqa.expand_kv, ex04_gqa.gqa],
    "05": [ex05_sharing.same_kv_head, ex05_sharing.expand_kv_projection],
    "06": [ex06_tradeoff.decode_cost, ex06_tradeoff.decode_attention, ex06_tradeoff.mean_pool_kv],
    "07": [ex07_mla.mla_scores, ex07_mla.mla_cache_bytes],
    "08": [ex08_cache_shrink.window_mask, ex08_cache_shrink.int_round_trip, ex08_cache_shrink.quantized_cache_bytes],
}
EXERCISES: dict[str, Exercise] = {ex.name: ex for exs in BY_NOTEBOOK.values() for ex in exs}

__all__ = ["BY_NOTEBOOK", "Case", "EXERCISES", "Exercise", "Mistake", "Result", "museum"]
