"""The museum of real bugs: wrong implementations of the exercises, each a mistake made in public code.

Every exhibit is a function with the same signature as the exercise it belongs to, and a docstring
that says what the mistake is. When a learner's function fails, the checker runs the exhibits on every
case of the exercise: one that gives the learner's result on all of them (and differs from the right
answer on at least two) is named and explained; the cases are chosen so that no two exhibits agree on
all of them. Run one yourself::

    from gqa_lib.exercises import museum, ex04_gqa
    ex04_gqa.check_expand_kv(museum.expand_kv_tiled_repeat)

``EXHIBITS`` lists them all, by exercise, with the name each checker gives them.

Why one module of about 980 lines: 68 exhibits, each a few lines with its story; kept in one
file so that a reader can browse every known mistake in one place and a test can list them all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from gqa_lib.core.attention import causal_mask
from gqa_lib.exercises.checking import Case, Mistake
from gqa_lib.experiments.cache_shrink import visible


@dataclass(frozen=True)
class Exhibit:
    exercise: str  # the Exercise.name it belongs to
    mistake: Mistake


EXHIBITS: list[Exhibit] = []


def exhibit(exercise: str, name: str, explain: str | Callable[[Case], str]):
    """Register the decorated wrong implementation under ``exercise`` with its name and explanation."""

    def register(fn: Callable) -> Callable:
        EXHIBITS.append(Exhibit(exercise, Mistake(name, fn, explain)))
        return fn

    return register


def mistakes_for(exercise: str) -> list[Mistake]:
    return [e.mistake for e in EXHIBITS if e.exercise == exercise]


def _tiled_story(n_heads: int, n_kv_heads: int, query_head: int | None = None) -> str:
    group_size = n_heads // n_kv_heads
    i = query_head if query_head is not None else next(i for i in range(n_heads) if i % n_kv_heads != i // group_size)
    return (f"query head {i} reads KV head {i % n_kv_heads}: this is the tiled order of `.repeat` "
            f"(query head i reads KV head i % n_kv_heads). With contiguous groups, as `repeat_interleave`, "
            f"SDPA's `enable_gqa=True` and transformers' `repeat_kv` use, query head {i} reads KV head "
            f"i // group_size = {i} // {group_size} = {i // group_size}.")


def _tokens(n: int) -> str:
    return f"{n:,} token{'s' * (n != 1)}"


def _bf16_story(start_pos: int, seq: int) -> str:
    rounded = [(p, torch.tensor(float(p)).to(torch.bfloat16).item()) for p in range(start_pos, start_pos + seq)]
    moved = [(p, r) for p, r in rounded if r != p]
    first = (f"position {moved[0][0]:,} rounds to {moved[0][1]:,.0f} in bf16 (8 significant bits), and the "
             "frequencies lose precision too") if moved else "the frequencies lose precision in bf16"
    return (f"your angles were computed in bfloat16: {first}. Keep inv_freq and the angles in float32 "
            "(transformers keeps that buffer out of `model.to(torch.bfloat16)` for this reason) and cast only cos "
            "and sin to x's dtype.")


def _attention(q, k, v, mask=None, scale=None):
    """Plain attention with per-query-head K and V; ``mask`` True where a query may look."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return (scores.softmax(-1) @ v.float()).to(q.dtype)


# --------------------------------------------------------------------------------------- notebook 01
def _cache_bytes(n_layers, n_kv_heads, head_dim, tokens, batch, bytes_per_number):
    return 2 * n_layers * n_kv_heads * head_dim * tokens * batch * bytes_per_number


@exhibit("cache_bytes", "head_dim taken as d_model / n_heads", lambda c: (
    f"this model's head_dim is {c.args[0].head_dim}, but d_model / n_heads = {c.args[0].d_model} / "
    f"{c.args[0].n_heads} = {c.args[0].d_model // c.args[0].n_heads}. Read `head_dim` from the model: several "
    "models (Gemma among them) choose it independently of d_model."))
def cache_bytes_head_dim_from_width(model, tokens, batch=1, bytes_per_number=2):
    """Derives head_dim as d_model // n_heads, true of GPT-2 and LLaMA but not of every model: Gemma 3 1B
    has 4 query heads of 256 in a width of 1152, not 288. Calculators that assume it get such models wrong."""
    return _cache_bytes(model.n_layers, model.n_kv_heads, model.d_model // model.n_heads, tokens, batch,
                        bytes_per_number)


@exhibit("cache_bytes", "a cache sized by query heads", lambda c: (
    f"only KV heads are cached: {c.args[0].n_kv_heads} per layer here, not the {c.args[0].n_heads} query heads. "
    "Query vectors are used once and thrown away."))
def cache_bytes_query_heads(model, tokens, batch=1, bytes_per_number=2):
    """Multiplies by n_heads (query heads) instead of n_kv_heads: right for MHA only, so it hides exactly
    the saving that MQA and GQA exist for."""
    return _cache_bytes(model.n_layers, model.n_heads, model.head_dim, tokens, batch, bytes_per_number)


@exhibit("cache_bytes", "keys only",
         "a KV cache stores a key AND a value vector for every KV head: the formula starts with 2 x ...")
def cache_bytes_keys_only(model, tokens, batch=1, bytes_per_number=2):
    """Forgets the values: half the real cache. Notebook 01 found this slip behind two of the lecture's figures."""
    return _cache_bytes(model.n_layers, model.n_kv_heads, model.head_dim, tokens, batch, bytes_per_number) // 2


def _n_global(n_layers, local_per_global):
    return n_layers // (local_per_global + 1)


@exhibit("sliding_window_cache_bytes", "sliding-window layers counted as global", lambda c: (
    f"{c.args[0].n_layers - _n_global(c.args[0].n_layers, c.args[3])} of the {c.args[0].n_layers} layers are "
    f"local: they keep only the last {c.args[2]:,} tokens, not all {c.args[1]:,}."))
def sliding_counted_as_global(model, tokens, window, local_per_global, batch=1, bytes_per_number=2):
    """Treats every layer as global, as most cache calculators (and data/models.json's plain figures) do:
    an upper bound that overstates the cache of Gemma-style models several times at long context."""
    return _cache_bytes(model.n_layers, model.n_kv_heads, model.head_dim, tokens, batch, bytes_per_number)


@exhibit("sliding_window_cache_bytes", "a window longer than the text", lambda c: (
    f"a local layer keeps min(tokens, window) tokens: with {c.args[1]:,} tokens and a window of {c.args[2]:,} "
    f"it holds {min(c.args[1], c.args[2]):,}, not {c.args[2]:,}."))
def sliding_window_not_capped(model, tokens, window, local_per_global, batch=1, bytes_per_number=2):
    """Sizes every local layer for a full window even when fewer tokens exist (a preallocated ring buffer
    is that large, but the question is what is stored)."""
    n_global = _n_global(model.n_layers, local_per_global)
    per_token_layer = _cache_bytes(1, model.n_kv_heads, model.head_dim, 1, batch, bytes_per_number)
    return per_token_layer * (n_global * tokens + (model.n_layers - n_global) * window)


# --------------------------------------------------------------------------------------- notebook 02
def _split(t, n_heads):
    b, s, _ = t.shape
    return t.view(b, s, n_heads, -1).transpose(1, 2)


def _merge(t):
    b, h, s, d = t.shape
    return t.transpose(1, 2).reshape(b, s, h * d)


def _padded_mha(x, W_q, W_k, W_v, W_o, n_heads, n_pad, split_wrong=False, scale_from_width=False, causal=True,
                pad_keys=True, pad_rows="zero", right=False):
    """Multi-head attention over a padded batch, with switches for the mistakes: ``split_wrong`` views the heads as
    (b, n_heads, s, head_dim) straight away; ``scale_from_width`` scales by sqrt(d_model // n_heads); ``causal``
    False leaves the causal mask out; ``pad_keys`` False lets queries see the pad keys; ``pad_rows`` is what a pad
    position's row of weights becomes: "zero" (right), "nan" (the softmax of an all -inf row), "finite" (masked with
    float32's most negative number instead of -inf: equal weights on every key), "keep" (whatever it attended to);
    ``right`` takes the pads to be the LAST n_pad tokens."""
    b, s, d_model = x.shape
    if split_wrong:
        q, k, v = (W(x).reshape(b, n_heads, s, -1) for W in (W_q, W_k, W_v))
    else:
        q, k, v = (_split(W(x), n_heads) for W in (W_q, W_k, W_v))  # (b, n_heads, s, head_dim)
    scale = 1 / math.sqrt(d_model // n_heads if scale_from_width else q.shape[-1])
    pads = torch.tensor(n_pad)[:, None]  # (b, 1)
    pos = torch.arange(s)[None, :]  # (1, s)
    is_pad = pos >= s - pads if right else pos < pads  # (b, s)
    mask = (causal_mask(s, s) if causal else torch.ones(s, s, dtype=torch.bool))[None]  # (1, s, s)
    if pad_keys:
        mask = mask & ~is_pad[:, None, :]  # (b, s, s): no query sees a pad key
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale  # (b, n_heads, s, s)
    fill = torch.finfo(torch.float32).min if pad_rows == "finite" else float("-inf")
    weights = scores.masked_fill(~mask[:, None], fill).softmax(-1)
    if pad_rows == "zero":
        weights = weights.masked_fill(is_pad[:, None, :, None], 0.0)
    out = (weights @ v.float()).to(x.dtype)  # (b, n_heads, s, head_dim)
    return W_o(out.reshape(b, s, -1) if split_wrong else _merge(out))


def _pads(c: Case) -> str:
    return f"n_pad = {c.info['n_pad']}"


@exhibit("mha_left_padded", "padding not masked", lambda c: (
    f"with {_pads(c)}, the first n_pad[b] tokens of sequence b are padding, yet your real tokens attended to them "
    "(and your pad positions' outputs are not 0). Mask the pad keys for every query: key j of sequence b may be "
    "seen only when j >= n_pad[b] (and j <= the query's position)."))
def padded_mha_pads_seen(x, W_q, W_k, W_v, W_o, n_heads, n_pad):
    """Plain causal MHA over the padded batch: the pad tokens' keys and values mix into every real token's output,
    so a sequence's result depends on how much padding its batch needed."""
    return _padded_mha(x, W_q, W_k, W_v, W_o, n_heads, n_pad, pad_keys=False, pad_rows="keep")


@exhibit("mha_left_padded", "pad rows left to the softmax (NaN)", lambda c: (
    f"with {_pads(c)}, a pad position may see no key at all (every key up to it is padding), so its row of scores "
    "is all -inf and the softmax gives 0 / 0 = NaN, which W_o then spreads over the whole output vector. Set the "
    "weights (or the outputs) of pad positions to 0."))
def padded_mha_nan_rows(x, W_q, W_k, W_v, W_o, n_heads, n_pad):
    """Masks the pad keys with -inf and stops there: every pad query's row is fully masked and comes out NaN."""
    return _padded_mha(x, W_q, W_k, W_v, W_o, n_heads, n_pad, pad_rows="nan")


@exhibit("mha_left_padded", "a finite minimum in place of -inf", lambda c: (
    "your real tokens are right, but your pad positions are not 0. With a large finite number in place of -inf "
    "(torch.finfo(dtype).min, as transformers uses), a row whose keys are all masked gets equal weights on ALL its "
    "keys, later ones included, so a pad position returns the mean of every value. transformers never reads those "
    "positions; this exercise asks for 0 there: set their weights or outputs to 0."))
def padded_mha_finite_min(x, W_q, W_k, W_v, W_o, n_heads, n_pad):
    """Masks with float32's most negative number, as transformers' attention masks do: no NaN, but a row with no
    visible key spreads its weight evenly over every key."""
    return _padded_mha(x, W_q, W_k, W_v, W_o, n_heads, n_pad, pad_rows="finite")


@exhibit("mha_left_padded", "padding taken to be on the right", lambda c: (
    f"the batch is LEFT-padded: with {_pads(c)}, sequence b's pads are its FIRST n_pad[b] tokens and its text "
    "ends at the last position. You masked (and zeroed) the last n_pad[b] positions instead."))
def padded_mha_right(x, W_q, W_k, W_v, W_o, n_heads, n_pad):
    """Treats the padding as right padding, the layout of training batches: for a left-padded batch (the usual
    layout for generation, so that every sequence's next token is at the last position) it masks the text."""
    return _padded_mha(x, W_q, W_k, W_v, W_o, n_heads, n_pad, right=True)


@exhibit("mha_left_padded", "pad queries zeroed but pad keys seen", lambda c: (
    f"your pad positions are 0, but your real tokens still attended to the pad keys ({_pads(c)}). A pad token must "
    "be invisible as a KEY: mask the columns j < n_pad[b], not only the rows."))
def padded_mha_rows_only(x, W_q, W_k, W_v, W_o, n_heads, n_pad):
    """Zeroes the outputs at the pad positions but leaves the pad keys visible to the real tokens."""
    return _padded_mha(x, W_q, W_k, W_v, W_o, n_heads, n_pad, pad_keys=False)


@exhibit("mha_left_padded", "heads split with view(b, n_heads, seq, head_dim)",
         "`t.view(b, n_heads, seq, head_dim)` has the right shape but cuts memory in the wrong places: "
         "'head 0' gets the first tokens' whole vectors, mixing heads and positions. Split the last "
         "dimension first, then move the heads forward: `t.view(b, seq, n_heads, head_dim).transpose(1, 2)`.")
def padded_mha_split_without_transpose(x, W_q, W_k, W_v, W_o, n_heads, n_pad):
    """Reshapes (batch, seq, n_heads * head_dim) straight to (batch, n_heads, seq, head_dim) and back:
    no error, every shape right, every number wrong."""
    return _padded_mha(x, W_q, W_k, W_v, W_o, n_heads, n_pad, split_wrong=True)


@exhibit("mha_left_padded", "head_dim taken as d_model / n_heads", lambda c: (
    f"the scores must be divided by sqrt(head_dim) = sqrt({c.info['head_dim']}); d_model / n_heads = "
    f"{c.info['d_model']} / {c.info['n_heads']} = {c.info['d_model'] // c.info['n_heads']} is not this layer's "
    "head size. Take head_dim from the projections (`W_q.out_features // n_heads`) or from q's shape."))
def padded_mha_head_dim_from_width(x, W_q, W_k, W_v, W_o, n_heads, n_pad):
    """Scales by sqrt(d_model // n_heads): right only when the heads share out the model width exactly."""
    return _padded_mha(x, W_q, W_k, W_v, W_o, n_heads, n_pad, scale_from_width=True)


@exhibit("mha_left_padded", "no causal mask",
         "token t attended to tokens after it. A decoder's token t may look at tokens 0..t only (here: its own "
         "sequence's real tokens up to t): mask the scores above the diagonal with -inf as well as the pad keys.")
def padded_mha_no_causal_mask(x, W_q, W_k, W_v, W_o, n_heads, n_pad):
    """Masks the padding but forgets the causal mask: every token sees the future, as in an encoder."""
    return _padded_mha(x, W_q, W_k, W_v, W_o, n_heads, n_pad, causal=False)


def _rope_tables(head_dim, positions, base=10000.0, dtype=torch.float32):
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = positions.to(dtype)[:, None] * inv_freq.to(dtype)[None, :]
    return angles.float().cos(), angles.float().sin()


@exhibit("rope", "interleaved pairs (GPT-J layout)",
         "you rotated neighbouring pairs (x[0], x[1]), (x[2], x[3]), ... . gqa_lib, transformers' LLaMA and "
         "SmolLM2's weights use the rotate_half layout: pair i is (x[i], x[i + head_dim/2]). Both are valid "
         "RoPE, but weights trained with one give wrong scores with the other.")
def rope_interleaved(x, start_pos, base=10000.0):
    """Rotates adjacent pairs, as GPT-J and Meta's original LLaMA code do. Loading rotate_half weights
    into it (or the reverse) without permuting q_proj and k_proj is a known porting bug."""
    d = x.shape[-1]
    cos, sin = _rope_tables(d, torch.arange(start_pos, start_pos + x.shape[2]), base)
    x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.to(x.dtype)


@exhibit("rope", "RoPE not advanced by start_pos", lambda c: (
    f"token t sits at position start_pos + t, so the first token here is at position {c.args[1]:,}; you "
    "rotated it as position 0. A decode step must pass the cache length as start_pos."))
def rope_not_advanced(x, start_pos, base=10000.0):
    """Ignores start_pos: every call rotates as if its first token were at position 0."""
    d = x.shape[-1]
    cos, sin = _rope_tables(d, torch.arange(x.shape[2]), base)
    x1, x2 = x.float().chunk(2, dim=-1)
    cos, sin = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
    return (x.float() * cos + torch.cat([-x2, x1], -1) * sin).to(x.dtype)


@exhibit("rope", "positions rounded by a bf16 frequency buffer", lambda c: _bf16_story(c.args[1], c.args[0].shape[2]))
def rope_bf16_frequencies(x, start_pos, base=10000.0):
    """Computes positions * inv_freq in the model's dtype, as a model cast with ``.to(torch.bfloat16)`` does
    when inv_freq is an ordinary buffer: large positions collapse onto a few representable values."""
    d = x.shape[-1]
    cos, sin = _rope_tables(d, torch.arange(start_pos, start_pos + x.shape[2]), base, dtype=x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = torch.cat([cos, cos], -1).to(x.dtype), torch.cat([sin, sin], -1).to(x.dtype)
    return x * cos + torch.cat([-x2, x1], -1) * sin


def _decode_parts(q, k, v, k_cache, v_cache, rope, pos):
    q_r, k_r = rope(q, pos), rope(k, pos)
    return q_r, torch.cat([k_cache, k_r], dim=2), torch.cat([v_cache, v], dim=2)


@exhibit("decode_step", "RoPE not advanced by the cache length", lambda c: (
    f"the cache holds {_tokens(c.info['cached'])}, so the new token sits at position {c.info['cached']}; you "
    "rotated its query and key as position 0. Pass the cache length as start_pos: `rope(q, k_cache.shape[2])`."))
def decode_rope_not_advanced(q, k, v, k_cache, v_cache, rope):
    """Rotates the new token's q and k as if at position 0: every decode step then looks like the first
    token of a text, relative distances are wrong, and generation drifts without any error."""
    q_r, k_all, v_all = _decode_parts(q, k, v, k_cache, v_cache, rope, 0)
    return F.scaled_dot_product_attention(q_r, k_all, v_all)


@exhibit("decode_step", "RoPE position off by one", lambda c: (
    f"the new token is token number {c.info['cached']} counting from 0 (the cache holds {_tokens(c.info['cached'])}), "
    f"so its position is {c.info['cached']}; you used {c.info['cached'] + 1}, the length after appending it."))
def decode_rope_off_by_one(q, k, v, k_cache, v_cache, rope):
    """Takes the position from the sequence length after the append (cache length + 1)."""
    q_r, k_all, v_all = _decode_parts(q, k, v, k_cache, v_cache, rope, k_cache.shape[2] + 1)
    return F.scaled_dot_product_attention(q_r, k_all, v_all)


@exhibit("decode_step", "is_causal=True for a decode step (top-left mask)", lambda c: (
    f"SDPA's `is_causal=True` aligns the mask at the top-left corner, so the one new query saw key 0 only, "
    f"not all {c.info['cached'] + 1} keys. A single new token may see every key: pass no mask."))
def decode_is_causal(q, k, v, k_cache, v_cache, rope):
    """Passes ``is_causal=True`` to scaled_dot_product_attention for one query against a cache: the mask
    is built as tril(ones(1, n_keys)), which hides everything but the first key."""
    q_r, k_all, v_all = _decode_parts(q, k, v, k_cache, v_cache, rope, k_cache.shape[2])
    return F.scaled_dot_product_attention(q_r, k_all, v_all, is_causal=True)


# --------------------------------------------------------------------------------------- notebook 03
def _top_left_story(s_q: int, s_k: int) -> str:
    first = s_k - s_q
    who = "the one query is the last" if s_q == 1 else f"the {s_q} queries are the LAST {s_q}"
    return (f"{who} of the {s_k} tokens, so query 0 sits at position {first} and may see keys 0..{first}. "
            "`torch.ones(s_q, s_k).tril()` and SDPA's `is_causal=True` align the mask at the top-left corner and "
            "let it see key 0 only. Align the mask bottom-right, as `gqa_lib.causal_mask(s_q, s_k)` does "
            "(one query needs no mask at all).")



def _ragged(q, k_cache, v_cache, lengths, scale=None, keep=None):
    """One query per sequence against a padded cache; ``keep(slots, lengths)`` -> (batch, slots) bool says which
    cached slots each sequence attends to (the right one: the first lengths[b])."""
    slots = k_cache.shape[2]
    keep = keep or (lambda n, ls: torch.arange(n)[None, :] < torch.tensor(ls)[:, None])
    mask = keep(slots, lengths)[:, None, None, :]  # (batch, 1, 1, slots): broadcast over heads and the query
    return _attention(q, k_cache, v_cache, mask, scale)


def _lengths(c: Case) -> str:
    return f"lengths = {c.info['lengths']} in a cache of {c.info['slots']} slots"


@exhibit("mqa_decode_ragged", "leftover slots attended", lambda c: (
    f"with {_lengths(c)}, sequence b's cache holds lengths[b] real keys; the slots after them hold leftovers from "
    "other conversations, which your query attended to. Mask slot j of sequence b unless j < lengths[b]."))
def ragged_all_slots(q, k_cache, v_cache, lengths):
    """Attends to every slot of the padded cache, as if every sequence were as long as the longest."""
    return _ragged(q, k_cache, v_cache, lengths, keep=lambda n, ls: torch.ones(len(ls), n, dtype=torch.bool))


@exhibit("mqa_decode_ragged", "the longest length for every sequence", lambda c: (
    f"with {_lengths(c)}, each sequence has its own length: you cut every cache at the longest, "
    f"{max(c.info['lengths'])}, so the shorter sequences read slots that are not theirs. Build a mask of shape "
    "(batch, 1, 1, slots) from the lengths, one row per sequence."))
def ragged_longest(q, k_cache, v_cache, lengths):
    """Slices the cache to ``max(lengths)`` slots for the whole batch: right only for the longest sequences."""
    return _ragged(q, k_cache, v_cache, lengths,
                   keep=lambda n, ls: (torch.arange(n) < max(ls))[None, :].expand(len(ls), n))


@exhibit("mqa_decode_ragged", "one slot too many", lambda c: (
    f"with {_lengths(c)}, sequence b's real keys are slots 0 .. lengths[b] - 1 (the new token's own key is the last "
    "of them); your mask also kept slot lengths[b], a leftover. Use j < lengths[b], not j <= lengths[b]."))
def ragged_one_too_many(q, k_cache, v_cache, lengths):
    """``j <= lengths[b]``: counts the new token once more, and reads the first leftover slot."""
    return _ragged(q, k_cache, v_cache, lengths,
                   keep=lambda n, ls: torch.arange(n)[None, :] <= torch.tensor(ls)[:, None])


@exhibit("mqa_decode_ragged", "the real keys taken to be the last slots", lambda c: (
    f"with {_lengths(c)}, this cache fills its slots from the front: sequence b's keys are its FIRST lengths[b] "
    "slots. You kept the last lengths[b] (the layout of a left-padded cache)."))
def ragged_from_the_end(q, k_cache, v_cache, lengths):
    """Keeps the last ``lengths[b]`` slots, as for left padding, in a cache written from slot 0 on."""
    return _ragged(q, k_cache, v_cache, lengths,
                   keep=lambda n, ls: torch.arange(n)[None, :] >= n - torch.tensor(ls)[:, None])


@exhibit("mqa_decode_ragged", "scores not scaled", lambda c: (
    f"divide the scores by sqrt(head_dim) = sqrt({c.args[0].shape[-1]}) before the softmax; without it the "
    "softmax saturates as head_dim grows."))
def ragged_no_scale(q, k_cache, v_cache, lengths):
    """Leaves out 1/sqrt(head_dim)."""
    return _ragged(q, k_cache, v_cache, lengths, scale=1.0)


@exhibit("attend_new_tokens", "a causal mask for several new tokens against a longer cache, aligned top-left",
         lambda c: _top_left_story(c.info["s_q"], c.info["s_k"]))
def new_tokens_top_left_mask(q, k, v):
    """Builds the mask as tril(ones(s_q, s_k)) (what is_causal=True does): right for a prefill, wrong as
    soon as the keys include a cache: the new tokens lose sight of most of the cache."""
    s_q, s_k = q.shape[2], k.shape[2]
    return _attention(q, k, v, torch.ones(s_q, s_k, dtype=torch.bool).tril())


@exhibit("attend_new_tokens", "no mask for several new tokens",
         "with one new token no mask is needed, but with several, new token t must not see the new tokens after "
         "it: use a bottom-right aligned causal mask (`gqa_lib.causal_mask(s_q, s_k)`).")
def new_tokens_no_mask(q, k, v):
    """Drops the mask because 'decode steps need none': true for one query, not for several."""
    return _attention(q, k, v)


# --------------------------------------------------------------------------------------- notebook 04
@exhibit("kv_head_of", "tiled `.repeat` order", lambda c: _tiled_story(c.args[1], c.args[2], c.args[0]))
def kv_head_of_tiled(query_head, n_heads, n_kv_heads):
    """query_head % n_kv_heads: the order ``.repeat`` gives. It works as long as the model is trained with it;
    loading weights trained with contiguous groups into it silently scrambles every layer (notebook 04)."""
    return query_head % n_kv_heads


@exhibit("kv_head_of", "n_kv_heads used as the group size", lambda c: (
    f"you computed query_head // n_kv_heads = {c.args[0]} // {c.args[2]}: you divided by the number of KV heads "
    f"(= groups), not by group_size = n_heads // n_kv_heads = {c.args[1] // c.args[2]}, the query heads per group. "
    "'Groups' means one thing in some texts and the other in others; a published calculator made this slip."))
def kv_head_of_groups_confused(query_head, n_heads, n_kv_heads):
    """query_head // n_kv_heads: mixes up the two meanings of "groups" (how many, and how big)."""
    return query_head // n_kv_heads


@exhibit("expand_kv", "tiled `.repeat` order", lambda c: _tiled_story(c.info["n_heads"], c.info["n_kv_heads"]))
def expand_kv_tiled_repeat(x, group_size):
    """``x.repeat(1, group_size, 1, 1)``: tiles the whole block of KV heads instead of copying each in place."""
    return x.repeat(1, group_size, 1, 1)


@exhibit("expand_kv", "copied along the token axis",
         "you copied along dim=2 (tokens): every KV head got group_size times as many tokens. Copy along the "
         "head axis, dim=1, so that there is one KV head per query head.")
def expand_kv_tokens_axis(x, group_size):
    """``repeat_interleave(group_size, dim=2)``: the right call on the wrong axis."""
    return x.repeat_interleave(group_size, dim=2)


@exhibit("gqa", "tiled `.repeat` order", lambda c: _tiled_story(c.info["n_heads"], c.info["n_kv_heads"]))
def gqa_tiled_repeat(q, k, v):
    """Expands K and V with ``.repeat`` before attending: query head i reads KV head i % n_kv_heads."""
    group_size = q.shape[1] // k.shape[1]
    s_q, s_k = q.shape[2], k.shape[2]
    return _attention(q, k.repeat(1, group_size, 1, 1), v.repeat(1, group_size, 1, 1), causal_mask(s_q, s_k, q.device))


@exhibit("gqa", "the stacked rows' mask repeated row by row", lambda c: (
    f"row r of a group's stacked queries is query head r // s_q at position r % s_q, so the ({c.info['s_q']}, "
    f"{c.info['s_k']}) mask must be tiled once per head, `mask.repeat(group_size, 1)`; `repeat_interleave` "
    "gave each position's row to a whole head."))
def gqa_mask_interleaved(q, k, v):
    """Stacks each group's query heads into rows correctly, then repeats the mask with
    ``repeat_interleave(group_size, dim=0)``: the masks of different positions land on the wrong rows."""
    b, n_heads, s_q, d = q.shape
    n_kv, s_k = k.shape[1], k.shape[2]
    group_size = n_heads // n_kv
    rows = q.reshape(b, n_kv, group_size * s_q, d)
    mask = causal_mask(s_q, s_k, q.device).repeat_interleave(group_size, dim=0)
    return _attention(rows, k, v, mask).reshape(b, n_heads, s_q, d)


@exhibit("gqa", "a causal mask for several new tokens against a longer cache, aligned top-left",
         lambda c: _top_left_story(c.info["s_q"], c.info["s_k"]))
def gqa_top_left_mask(q, k, v):
    """Grouped attention with a mask built as tril(ones(s_q, s_k)): right for a prefill only."""
    group_size = q.shape[1] // k.shape[1]
    s_q, s_k = q.shape[2], k.shape[2]
    mask = torch.ones(s_q, s_k, dtype=torch.bool).tril()
    return _attention(q, k.repeat_interleave(group_size, 1), v.repeat_interleave(group_size, 1), mask)


# --------------------------------------------------------------------------------------- notebook 05
@exhibit("expand_kv_projection", "tiled `.repeat` order", lambda c: _tiled_story(c.args[1], c.args[2]))
def projection_tiled(w, n_heads, n_kv_heads):
    """``w.repeat(group_size, 1)``: the whole stack of KV-head blocks tiled, so query head i gets KV head
    i % n_kv_heads's projection."""
    return w.repeat(n_heads // n_kv_heads, 1)


@exhibit("expand_kv_projection", "rows copied instead of head blocks",
         "`w.repeat_interleave(group_size, dim=0)` copies every ROW group_size times; what must be copied is each "
         "KV head's block of head_dim rows. View the weight as (n_kv_heads, head_dim, d_model) first, then "
         "repeat_interleave along the head axis.")
def projection_rows_interleaved(w, n_heads, n_kv_heads):
    """repeat_interleave on the flat (n_kv_heads * head_dim, d_model) weight: rows, not heads, are copied."""
    return w.repeat_interleave(n_heads // n_kv_heads, dim=0)


@exhibit("same_kv_head", "tiled `.repeat` order", lambda c: _tiled_story(c.args[0], c.args[1]))
def same_kv_head_tiled(n_heads, n_kv_heads):
    """Groups heads i % n_kv_heads: the zeros of the difference matrix would fall on stripes, not blocks."""
    kv = torch.arange(n_heads) % n_kv_heads
    return kv[:, None] == kv[None, :]


@exhibit("same_kv_head", "n_kv_heads used as the group size", lambda c: (
    f"you divided the query head by n_kv_heads = {c.args[1]}; the group size is n_heads // n_kv_heads = "
    f"{c.args[0] // c.args[1]} (query heads per KV head)."))
def same_kv_head_groups_confused(n_heads, n_kv_heads):
    """Uses i // n_kv_heads: the "groups" ambiguity again."""
    kv = torch.arange(n_heads) // n_kv_heads
    return kv[:, None] == kv[None, :]


# --------------------------------------------------------------------------------------- notebook 06
@exhibit("mean_pool_kv", "tiled `.repeat` order", lambda c: (
    f"new KV head 0 must be the mean of old KV heads 0..{c.args[1] // c.args[2] - 1}, the contiguous block whose "
    f"query heads it will serve; you averaged old heads 0, {c.args[2]}, ... ({c.args[2]} apart): the tiled "
    "order of `.repeat`."))
def pool_tiled(w, n_kv_heads, new_n_kv_heads):
    """Averages old heads j, j + new, j + 2 new, ...: each new head mixes heads from different groups, so no
    query head keeps keys close to the ones it was trained with."""
    d = w.shape[-1]
    r = n_kv_heads // new_n_kv_heads
    return w.reshape(r, new_n_kv_heads, -1, d).mean(0).reshape(-1, d)


@exhibit("mean_pool_kv", "rows averaged inside a head",
         "your reshape cut the (n_kv_heads * head_dim) rows in the wrong place: it averaged rows from inside one "
         "head. View the weight as (new_n_kv_heads, r, head_dim, d_model), r = old heads per new head, and "
         "average over the r axis.")
def pool_wrong_axis(w, n_kv_heads, new_n_kv_heads):
    """``w.reshape(new, head_dim, r, d).mean(2)``: the right shapes, but it averages interleaved rows."""
    d = w.shape[-1]
    r = n_kv_heads // new_n_kv_heads
    head_dim = w.shape[0] // n_kv_heads
    return w.reshape(new_n_kv_heads, head_dim, r, d).mean(2).reshape(-1, d)


@exhibit("decode_attention", "is_causal=True for a decode step (top-left mask)", lambda c: (
    f"SDPA's `is_causal=True` aligns its mask at the top-left, so the one query saw key 0 of {c.info['s_k']} "
    "only (its output is token 0's value). The newest token may see every cached token: pass no mask."))
def decode_is_causal_gqa(q, k, v):
    """``scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)`` with one query row."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


@exhibit("decode_attention", "tiled `.repeat` order", lambda c: _tiled_story(c.info["n_heads"], c.info["n_kv_heads"]))
def decode_tiled_gqa(q, k, v):
    """Expands the KV heads with ``.repeat`` before the decode step."""
    group_size = q.shape[1] // k.shape[1]
    return _attention(q, k.repeat(1, group_size, 1, 1), v.repeat(1, group_size, 1, 1))


@exhibit("decode_cost", "a cache sized by query heads", lambda c: (
    f"the step reads the cached K and V of the {c.args[1]} KV heads, not of the {c.args[0]} query heads: "
    "that is the whole point of GQA and MQA."))
def cost_bytes_by_query_heads(n_heads, n_kv_heads, seq_len, head_dim, bytes_per_elem):
    """Counts the bytes read as if every query head had its own cached K and V."""
    flops = 2 * 2 * n_heads * seq_len * head_dim
    return 2 * n_heads * seq_len * head_dim * bytes_per_elem, flops


@exhibit("decode_cost", "arithmetic counted per KV head",
         "fewer KV heads cut the bytes, not the arithmetic: every QUERY head still takes a dot product with every "
         "key and a weighted sum of every value, 2 x 2 x n_heads x seq_len x head_dim FLOPs.")
def cost_flops_by_kv_heads(n_heads, n_kv_heads, seq_len, head_dim, bytes_per_elem):
    """Lets the FLOPs shrink with the KV heads, which would make MQA's step n_heads times cheaper in arithmetic."""
    return 2 * n_kv_heads * seq_len * head_dim * bytes_per_elem, 2 * 2 * n_kv_heads * seq_len * head_dim


@exhibit("decode_cost", "keys only", "the step reads the cached values as well as the keys: 2 x n_kv_heads x ...")
def cost_keys_only(n_heads, n_kv_heads, seq_len, head_dim, bytes_per_elem):
    """Counts the keys but not the values."""
    return n_kv_heads * seq_len * head_dim * bytes_per_elem, 2 * 2 * n_heads * seq_len * head_dim


# --------------------------------------------------------------------------------------- notebook 07
def _mla_scores(q_c, q_r, latent, k_rope, w_uk, scale_dim, rope=True):
    """The absorbed scores q_C . k_C (+ q_R . k_R, the RoPE part, when ``rope``) / sqrt(scale_dim), in q_c's dtype."""
    q_lat = torch.einsum("bhsd,hdc->bhsc", q_c.float(), w_uk.float())
    scores = q_lat @ latent.float()[:, None].transpose(-2, -1)
    if rope:
        scores = scores + q_r.float() @ k_rope.float()[:, None].transpose(-2, -1)
    return (scores / math.sqrt(scale_dim)).to(q_c.dtype)


def _mla_story(template: str) -> Callable[[Case], str]:
    """An mla_scores explanation: ``template`` with the case's {head_dim}, {d_rope} and {d_c} filled in, and
    {length} = head_dim + d_rope, the length of the dot product that the scores are scaled for."""
    return lambda c: template.format(**c.info, length=c.info["head_dim"] + c.info["d_rope"])


@exhibit("mla_scores", "MLA's softmax scale without the RoPE dims", _mla_story(
    "each head's query and key have head_dim + d_rope = {head_dim} + {d_rope} numbers, so the dot product is scaled "
    "by 1/sqrt({length}), not 1/sqrt({head_dim}) (DeepSeek-V2, eq. 18)."))
def mla_scale_without_rope(q_c, q_r, latent, k_rope, w_uk):
    """Scales by 1/sqrt(head_dim), forgetting that the decoupled RoPE part lengthens the dot product."""
    return _mla_scores(q_c, q_r, latent, k_rope, w_uk, scale_dim=q_c.shape[-1])


@exhibit("mla_scores", "scaled by the latent size", _mla_story(
    "the score is a dot product between a head's query and key, of head_dim + d_rope = {length} numbers; that it is "
    "computed in latent space (d_c = {d_c}) changes nothing. Scale by 1/sqrt(head_dim + d_rope)."))
def mla_scale_latent(q_c, q_r, latent, k_rope, w_uk):
    """Scales by 1/sqrt(d_c) because the absorbed product runs over the latent."""
    return _mla_scores(q_c, q_r, latent, k_rope, w_uk, scale_dim=latent.shape[-1])


@exhibit("mla_scores", "the decoupled RoPE part left out",
         "the score is q_C . k_C + q_R . k_R: add the position part, `q_r @ k_rope^T` (one RoPE key per token, "
         "shared by all heads).")
def mla_rope_part_missing(q_c, q_r, latent, k_rope, w_uk):
    """Scores the absorbed content part only: no position information reaches the attention."""
    return _mla_scores(q_c, q_r, latent, k_rope, w_uk, scale_dim=q_c.shape[-1] + q_r.shape[-1], rope=False)


def _mla(model):
    return model.mla


@exhibit("mla_cache_bytes", "an MLA cache holding per-head keys and values", lambda c: (
    f"MLA caches the latent ({_mla(c.args[0]).d_c} numbers) and one RoPE key ({_mla(c.args[0]).d_rope}) per token "
    f"and layer; the {c.args[0].n_heads} heads' keys and values are rebuilt from them and never stored."))
def mla_cache_per_head_kv(model, tokens, batch=1, bytes_per_number=2):
    """Caches the rebuilt per-head keys (head_dim + d_rope) and values (v_head_dim), as DeepSeek's reference
    code does in its non-default "naive" mode: 500 GB instead of 7 GB for DeepSeek-V3 at 100,000 tokens."""
    m = _mla(model)
    per_token_layer = model.n_heads * (model.head_dim + m.d_rope + m.v_head_dim)
    return per_token_layer * model.n_layers * tokens * batch * bytes_per_number


@exhibit("mla_cache_bytes", "a RoPE key per head", lambda c: (
    f"the decoupled RoPE key is ONE vector of d_rope = {_mla(c.args[0]).d_rope} per token, shared by all "
    f"{c.args[0].n_heads} heads (like an MQA key); only the queries have a RoPE part per head."))
def mla_cache_rope_per_head(model, tokens, batch=1, bytes_per_number=2):
    """Counts n_heads RoPE keys per token."""
    m = _mla(model)
    return (m.d_c + model.n_heads * m.d_rope) * model.n_layers * tokens * batch * bytes_per_number


@exhibit("mla_cache_bytes", "a latent for the keys and another for the values", lambda c: (
    f"MLA compresses keys and values into ONE joint latent, c_KV, of d_c = {_mla(c.args[0]).d_c} numbers per token "
    f"and layer; the keys' and the values' up-projections both read it. The cache holds it once, with the RoPE key: "
    f"d_c + d_rope = {_mla(c.args[0]).d_c + _mla(c.args[0]).d_rope}, not 2 x d_c + d_rope = "
    f"{2 * _mla(c.args[0]).d_c + _mla(c.args[0]).d_rope}."))
def mla_cache_latent_twice(model, tokens, batch=1, bytes_per_number=2):
    """Counts a latent for K and another for V, as if MLA were MHA's K and V cache with each compressed on its
    own: 2 d_c + d_rope numbers per token and layer."""
    m = _mla(model)
    return (2 * m.d_c + m.d_rope) * model.n_layers * tokens * batch * bytes_per_number


@exhibit("mla_cache_bytes", "d_rope taken as head_dim / 2", lambda c: (
    f"the RoPE key has d_rope = {_mla(c.args[0]).d_rope} numbers here (`model.mla.d_rope`), not head_dim / 2 = "
    f"{c.args[0].head_dim // 2}. DeepSeek-V2 and V3 chose d_rope = 64 = 128 / 2, but d_rope is a size of its own."))
def mla_cache_rope_half_head(model, tokens, batch=1, bytes_per_number=2):
    """Derives the RoPE key's size from the head size (DeepSeek's 64 = 128 / 2) instead of reading d_rope."""
    return (_mla(model).d_c + model.head_dim // 2) * model.n_layers * tokens * batch * bytes_per_number


@exhibit("mla_cache_bytes", "the RoPE key left out", lambda c: (
    f"besides the latent of d_c = {_mla(c.args[0]).d_c}, each token and layer caches its RoPE key of "
    f"d_rope = {_mla(c.args[0]).d_rope}, already rotated: d_c + d_rope numbers."))
def mla_cache_without_rope(model, tokens, batch=1, bytes_per_number=2):
    """Counts the latent only."""
    return _mla(model).d_c * model.n_layers * tokens * batch * bytes_per_number


# --------------------------------------------------------------------------------------- notebook 08
def _positions(n):
    return torch.arange(n)[:, None], torch.arange(n)[None, :]  # query i (rows), key j (columns)


def _first_wrong(case: Case, fn: Callable) -> tuple[int, int]:
    """(query, key) of the first entry where the mistake ``fn``'s mask differs from the right one."""
    wrong = (fn(*case.args) != visible(*case.args)).nonzero()
    return tuple(wrong[0].tolist())


def _mask_exhibit(name: str, story: Callable[[int, int, int, int, int], str]):
    """Register the decorated wrong window_mask under ``name``; its explanation is ``story(n, window, sinks, i, j)``,
    (i, j) being the first (query, key) where its mask differs from the right one."""

    def register(fn: Callable) -> Callable:
        return exhibit("window_mask", name, lambda c: story(*c.args, *_first_wrong(c, fn)))(fn)

    return register


@_mask_exhibit("a window of window + 1 keys", lambda n, w, sinks, i, j: (
    f"a window of {w} keeps {w} key{'s' * (w > 1)}, the query's own included: query {i} may see keys "
    f"{i} - {w} + 1 = {i - w + 1} to {i}. Your mask also lets it see key {j}, {w} back: that is "
    "i - j <= window; the window is i - j < window."))
def window_one_too_wide(n, window, sinks):
    """``j >= i - window``: the last ``window`` keys before the query and the query itself, window + 1 in all
    (the off-by-one of counting the cached tokens and then adding the new one)."""
    i, j = _positions(n)
    return (j <= i) & ((j >= i - window) | (j < sinks))


@exhibit("window_mask", "the query's own key left out", lambda c: (
    f"the window of {c.args[1]} key{'s' * (c.args[1] > 1)} includes the query's own key, which is cached before "
    f"it attends: query i sees keys i - {c.args[1]} + 1 to i. Your mask leaves out the diagonal, so query 0 sees "
    "no key at all (its softmax would be 0 / 0). Use j <= i, not j < i."))
def window_without_itself(n, window, sinks):
    """``j < i``: the ``window`` keys before the query, not counting its own key (a strict lower triangle,
    ``tril(-1)``); the first token attends to nothing."""
    i, j = _positions(n)
    return (j < i) & ((j >= i - window) | (j < sinks))


@_mask_exhibit("sinks that ignore causality", lambda n, window, s, i, j: (
    f"the {s} sinks are the first {s} keys, kept after they leave the window; they are still in the past "
    f"of the queries that see them. Your mask lets query {i} see key {j}, a later token. Keep j <= i for "
    "the sinks too: (j <= i) & ((i - j < window) | (j < sinks))."))
def sinks_not_causal(n, window, sinks):
    """``causal & in_window | is_sink``: the sink columns are added after the causal mask, so an early query
    sees sinks that come after it (query 0 sees key 1 with 2 sinks)."""
    i, j = _positions(n)
    return ((j <= i) & (j > i - window)) | (j < sinks)


@exhibit("window_mask", "one sink too many", lambda c: (
    f"sinks = {c.args[2]} keeps keys 0 to {c.args[2] - 1}" if c.args[2] else "sinks = 0 keeps no sink"
) + f"; your mask also keeps key {c.args[2]} (j <= sinks). The first sinks keys are j < sinks.")
def sinks_off_by_one(n, window, sinks):
    """``j <= sinks``: keeps sinks + 1 first keys; with no sinks, key 0 is still kept."""
    i, j = _positions(n)
    return (j <= i) & ((j > i - window) | (j <= sinks))


def _to_bf16(v, side=0):
    """``v`` (float32) rounded to a bf16 number, returned as float32: ``side`` 0 the nearest, -1 the largest at or
    below ``v``, 1 the smallest at or above it."""
    b = v.to(torch.bfloat16)
    if side:
        wrong_side = b.float() > v if side < 0 else b.float() < v
        b = torch.where(wrong_side, torch.nextafter(b, torch.full_like(b, side * math.inf)), b)
    return b.float()


def _stored(g, levels, stored=True, min_first=True, nearest=False):
    """The minimum and the scale (float32, (..., n_groups, 1)) of each group of ``g`` (..., n_groups, group).

    As the exercise stores them: the minimum rounded down to bf16, the scale (measured from that stored minimum)
    rounded up, so that the levels cover the group. ``stored=False``: both kept in float32; ``min_first=False``: the
    scale measured from the float32 minimum; ``nearest``: both rounded to the nearest bf16 (the rule before issue 25).
    """
    low, high = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    tiny = torch.finfo(torch.bfloat16).tiny
    if not stored:
        return low, ((high - low) / levels).clamp_min(tiny)
    stored_low = _to_bf16(low, 0 if nearest else -1)
    span = high - (stored_low if min_first else low)
    return stored_low, _to_bf16((span / levels).clamp_min(tiny), 0 if nearest else 1)


def _round_trip(x, bits, levels=None, group=64, **rule):
    """Asymmetric round trip per group of ``group`` numbers along the last dim, with switches for the mistakes
    (``levels``, ``group``, and ``rule``: how the minimum and the scale are stored, see :func:`_stored`)."""
    g = x.float().reshape(*x.shape[:-1], -1, group)  # (..., n_groups, group)
    low, scale = _stored(g, 2 ** bits - 1 if levels is None else levels, **rule)
    q = ((g - low) / scale).round().clamp(0, 2 ** bits - 1)
    return (q * scale + low).reshape(x.shape).to(x.dtype)


def _unused_levels(x) -> str:
    g = x.float().flatten()[:64]  # the first group
    low, high, top = g.min().item(), g.max().item(), g.abs().max().item()
    lo, hi = (high, top) if top > high else (-top, low)
    return (f"the first group spans {low:.4f} to {high:.4f}; a symmetric scale spreads the levels over -{top:.4f} "
            f"to {top:.4f}, and those between {lo:.4f} and {hi:.4f} go unused")


@exhibit("int_round_trip", "2**bits steps instead of 2**bits - 1", lambda c: (
    f"{c.args[1]} bits hold {2 ** c.args[1]} integers, 0 to {2 ** c.args[1] - 1}: {2 ** c.args[1] - 1} steps from "
    f"the minimum to the maximum, so scale = (max - min) / {2 ** c.args[1] - 1}. With / {2 ** c.args[1]} the "
    f"maximum lands on q = {2 ** c.args[1]}, which does not fit in {c.args[1]} bits."))
def round_trip_too_many_levels(x, bits):
    """``scale = (max - min) / 2**bits``: counts the integers instead of the steps between them; the largest
    numbers of each group are clamped one step short."""
    return _round_trip(x, bits, levels=2 ** bits)


@exhibit("int_round_trip", "symmetric absmax without the minimum", lambda c: (
    f"the cache stores a minimum as well as a scale (asymmetric), so its {2 ** c.args[1]} levels span each group's "
    f"own minimum to maximum: {_unused_levels(c.args[0])}."))
def round_trip_symmetric(x, bits):
    """Symmetric absmax quantization per group (q in -(2**(bits-1) - 1) .. 2**(bits-1) - 1, no minimum): a common
    format for weights, but not the cache's; it wastes the levels beyond the group's own minimum or maximum."""
    top = 2 ** (bits - 1) - 1
    g = x.float().reshape(*x.shape[:-1], -1, 64)
    scale = _to_bf16((g.abs().amax(-1, keepdim=True) / top).clamp_min(torch.finfo(torch.bfloat16).tiny), 1)
    return ((g / scale).round().clamp(-top, top) * scale).reshape(x.shape).to(x.dtype)


@exhibit("int_round_trip", "one scale for the whole tensor", lambda c: (
    f"each group of 64 numbers has its own minimum and scale: x of shape {tuple(c.args[0].shape)} holds "
    f"{c.args[0].numel() // 64} groups. One range for all {c.args[0].numel():,} numbers makes every group's "
    "step as coarse as the whole tensor's range needs."))
def round_trip_whole_tensor(x, bits):
    """``x.min()`` and ``x.max()`` over the whole tensor: one scale for every token and head."""
    return _round_trip(x.flatten(), bits, group=x.numel()).reshape(x.shape)


@exhibit("int_round_trip", "one scale per row instead of per group of 64", lambda c: (
    f"a row of {c.args[0].shape[-1]} numbers holds {c.args[0].shape[-1] // 64} groups of 64, each with its own "
    "minimum and scale (for SmolLM2, one group is one head's key or value of one token). Reshape the last dim to "
    "(n // 64, 64) before taking the minimum and maximum."))
def round_trip_per_row(x, bits):
    """``x.amin(-1)``: one range per row of the last dim, right only where a row is exactly 64 numbers."""
    return _round_trip(x, bits, group=x.shape[-1])


def _worst(x, bits, **rule) -> dict:
    """The number of ``x`` where ``_round_trip(x, bits, **rule)`` differs most from the exercise's rule: that
    number, what comes back (and what the rule gives back), how many steps of its stored scale it is off, whether it
    lies below or above the levels, and its group's minimum, maximum, stored minimum, scale (and the rule's) and top
    level, with how many numbers of the group lie on that side of the levels."""
    levels = 2 ** bits - 1
    g = x.float().reshape(-1, 64)  # (n_groups, 64)
    low, scale = _stored(g, levels, **rule)  # (n_groups, 1) each
    out = _round_trip(g, bits, **rule).float()  # (n_groups, 64)
    off = (out - g).abs() / scale  # (n_groups, 64): steps off
    right = _round_trip(g, bits)  # (n_groups, 64): the rule's round trip
    apart = (out - right).abs()  # (n_groups, 64)
    r, i = (int(k) for k in torch.unravel_index(apart.argmax(), apart.shape))
    top = (low[r] + levels * scale[r]).item()
    value = g[r, i].item()
    side = "below" if value < low[r].item() else "above" if value > top else ""
    outside = int((g[r] < low[r]).sum()) if side == "below" else int((g[r] > top).sum())
    return dict(value=value, back=out[r, i].item(), right=right[r, i].item(), steps=off[r, i].item(),
                side=side, outside=outside, min=g[r].min().item(), max=g[r].max().item(), low=low[r].item(),
                scale=scale[r].item(), right_scale=_stored(g[r:r + 1], levels)[1].item(), top=top)


def _clipped(n: int, where: str) -> str:
    """'the 2 numbers below 199 come back clipped', 'the one number above it comes back clipped'."""
    return f"the {n} numbers {where} come back clipped" if n != 1 else f"the one number {where} comes back clipped"


def _minus(low: float) -> str:
    """'max - low' written for a negative low too: 'max + 2.34375'."""
    return f"max - {low:g}" if low >= 0 else f"max + {-low:g}"


def _nearest_story(x, bits) -> str:
    w, levels = _worst(x, bits, nearest=True), 2 ** bits - 1
    if w["side"] == "below":
        below = f"below {w['low']:g}"
        where = (f"a group's minimum {w['min']:.4f} rounds to {w['low']:g}, the nearest bf16 number, which is above "
                 f"it: {_clipped(w['outside'], below)}, {w['value']:.4f} as "
                 f"{w['back']:.4f}, {w['steps']:.1f} steps (of {w['scale']:.6g}) off")
    elif w["side"] == "above":
        where = (f"a group's scale rounds down to {w['scale']:.6g}, the nearest bf16 number, so its top level, "
                 f"{w['low']:g} + {levels} x scale = {w['top']:.4f}, is below its maximum {w['max']:.4f}: "
                 f"{_clipped(w['outside'], 'above it')}, {w['value']:.4f} as {w['back']:.4f}, "
                 f"{w['steps']:.1f} steps off")
    else:
        where = (f"a group's minimum and scale, rounded to the nearest bf16 numbers ({w['low']:g} and "
                 f"{w['scale']:.6g}), are not the ones this cache stores (the minimum rounded down, the scale up): "
                 f"{w['value']:.4f} comes back as {w['back']:.4f}, not {w['right']:.4f}")
    return (f"{where}, where a round trip whose levels cover the group is at most half a step off. Store the largest "
            "bf16 number at or below the minimum, and the smallest at or above (max - that stored minimum) / "
            f"{levels}: then no number lies outside the levels (torch.nextafter moves a bf16 number to its "
            "neighbour).")


@exhibit("int_round_trip", "minimum and scale rounded to the nearest bf16", lambda c: _nearest_story(*c.args))
def round_trip_nearest(x, bits):
    """Rounds the minimum and the scale to the nearest bf16 (``.to(torch.bfloat16)``): a minimum rounded up lies
    above the group's smallest numbers, and a scale rounded down leaves its largest beyond the top level; both are
    clipped. Far from zero, where bf16 numbers are far apart (1 apart near 200), that is dozens of steps."""
    return _round_trip(x, bits, nearest=True)


def _stored_story(x, bits) -> str:
    levels = 2 ** bits - 1
    g = x.float().flatten()[:64]  # the first group
    low, scale = (v.item() for v in _stored(g, levels, stored=False))
    stored_low, stored_scale = (v.item() for v in _stored(g, levels))
    return (f"the cache stores each group's minimum and scale in bf16 (2 bytes each) and gives back q x scale + "
            f"minimum with those stored numbers: the first group's minimum {low:.4f} is stored as {stored_low:g} (the "
            f"largest bf16 number at or below it), and its scale is {stored_scale:.7f} (the smallest bf16 number at "
            f"or above ({_minus(stored_low)}) / {levels}), not your float32 {scale:.7f}. Round the minimum down to "
            "bf16, then measure the scale from it and round it up.")


@exhibit("int_round_trip", "scale and minimum kept in float32", lambda c: _stored_story(*c.args))
def round_trip_not_stored(x, bits):
    """Keeps the scale and the minimum in float32: a round trip through a cache that stores 4 bytes more per
    group than the one counted."""
    return _round_trip(x, bits, stored=False)


def _unrounded_story(x, bits) -> str:
    w, levels = _worst(x, bits, min_first=False), 2 ** bits - 1
    start = (f"the levels start at the stored minimum, a group's minimum {w['min']:.4f} rounded down to {w['low']:g}, "
             f"so the scale must span from there to the maximum: ({_minus(w['low'])}) / {levels}, stored as "
             f"{w['right_scale']:.6g}. Yours spans from the unrounded minimum")
    if w["side"] == "above":
        start += (f", so the top level, {w['low']:g} + {levels} x {w['scale']:.6g} = {w['top']:.4f}, falls short "
                  f"of the maximum {w['max']:.4f}: {w['value']:.4f} comes back as {w['back']:.4f}, "
                  f"{w['steps']:.1f} steps off")
    else:
        start += f" and is {w['scale']:.6g}: {w['value']:.4f} comes back as {w['back']:.4f}, not {w['right']:.4f}"
    return start + ". Round the minimum to bf16 first, and measure the scale from that."


@exhibit("int_round_trip", "scale measured from the unrounded minimum", lambda c: _unrounded_story(*c.args))
def round_trip_scale_before_min(x, bits):
    """Measures the scale from the float32 minimum, (max - min) / (2**bits - 1), then rounds the minimum down:
    the levels start lower than the scale was measured from, so the top level can fall short of the maximum and
    the largest numbers of the group are clipped."""
    return _round_trip(x, bits, min_first=False)


def _groups(numbers: int) -> str:
    return f"{numbers // 64} group{'s' * (numbers > 64)} of 64"


@exhibit("int_round_trip", "a group of equal numbers divided by zero", lambda c: (
    "where a group's numbers are all equal, max - min = 0 and so is the scale: (x - min) / 0 is 0 / 0 = NaN. Such "
    "a group needs one level only: keep the scale above zero (`scale.clamp_min(torch.finfo(torch.bfloat16).tiny)`) "
    "so that every q is 0 and the group comes back as its minimum."))
def round_trip_zero_scale(x, bits):
    """Divides by a zero scale in a constant group (padding, a dead channel): NaN where the minimum was meant."""
    levels = 2 ** bits - 1
    g = x.float().reshape(*x.shape[:-1], -1, 64)
    low = _to_bf16(g.amin(-1, keepdim=True), -1)
    scale = _to_bf16((g.amax(-1, keepdim=True) - low) / levels, 1)  # 0 stays 0
    q = ((g - low) / scale).round().clamp(0, levels)
    return (q * scale + low).reshape(x.shape).to(x.dtype)


def _int_bytes(n_layers, numbers_per_token, tokens, bits, scale_bytes=4, groups=None):
    groups = numbers_per_token // 64 if groups is None else groups
    return round(n_layers * tokens * (numbers_per_token * bits / 8 + groups * scale_bytes))


@exhibit("quantized_cache_bytes", "scales and minima forgotten", lambda c: (
    f"each group of 64 numbers also stores a bf16 scale and a bf16 minimum, 4 bytes: {c.args[1]:,} numbers per "
    f"token and layer are {_groups(c.args[1])}, {4 * (c.args[1] // 64)} bytes on top of the "
    f"{c.args[1] * c.args[3] // 8:,} bytes of {c.args[3]}-bit integers."))
def int_bytes_without_scales(n_layers, numbers_per_token, tokens, bits):
    """Counts the integers only: the 1/16 byte per number of scale and minimum goes missing (an eighth of an
    int4 cache)."""
    return _int_bytes(n_layers, numbers_per_token, tokens, bits, scale_bytes=0)


@exhibit("quantized_cache_bytes", "bits used as bytes", lambda c: (
    f"each {c.args[3]}-bit integer takes {c.args[3]} / 8 = {c.args[3] / 8:g} byte{'s' * (c.args[3] > 8)}: "
    f"{c.args[1]:,} numbers are {c.args[1] * c.args[3] // 8:,} bytes, not {c.args[1] * c.args[3]:,}."))
def int_bytes_bits_as_bytes(n_layers, numbers_per_token, tokens, bits):
    """Multiplies by ``bits`` where ``bits / 8`` bytes are meant: eight times the integers' real size."""
    return _int_bytes(n_layers, numbers_per_token, tokens, bits * 8)


@exhibit("quantized_cache_bytes", "one scale per token instead of per group of 64", lambda c: (
    f"'per token' means each token's numbers are quantized on their own, in groups of 64 (with head_dim 64, one "
    f"head's key or value): {c.args[1]:,} numbers per token and layer are {c.args[1] // 64} groups with 4 bytes each, "
    f"{4 * (c.args[1] // 64)} bytes, not 4."))
def int_bytes_one_scale_per_token(n_layers, numbers_per_token, tokens, bits):
    """One scale and one minimum for all of a token's numbers in a layer."""
    return _int_bytes(n_layers, numbers_per_token, tokens, bits, groups=1)


@exhibit("quantized_cache_bytes", "a scale without the minimum", lambda c: (
    "the format is asymmetric: each group of 64 stores a bf16 scale AND a bf16 minimum, 2 + 2 = 4 bytes, not 2."))
def int_bytes_scale_only(n_layers, numbers_per_token, tokens, bits):
    """Counts 2 bytes a group, as for a symmetric format with a scale only."""
    return _int_bytes(n_layers, numbers_per_token, tokens, bits, scale_bytes=2)
