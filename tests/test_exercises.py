"""The exercises' checkers: references pass, other valid formulations pass, every museum bug fails with its
own message, unfinished skeletons print "not yet", and nothing a learner writes makes a checker raise."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import gqa_lib.exercises as ex
from gqa_lib import MultiHeadLatentAttention, causal_mask
from gqa_lib.exercises import checking, museum
from gqa_lib.exercises.checking import compare

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"
DTYPE_NAME = {1: "int8", 2: "bf16", 4: "fp32"}

pytestmark = pytest.mark.usefixtures("single_thread")


def _solution_module(notebook: str):
    (path,) = SOLUTIONS.glob(f"nb{notebook}_*.py")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def printed(exercise, fn) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exercise.check(fn)
    return out.getvalue()


ALL = [(nb, e) for nb, exs in ex.BY_NOTEBOOK.items() for e in exs]


def test_every_notebook_has_two_to_four_exercises():
    assert sorted(ex.BY_NOTEBOOK) == ["01", "02", "03", "04", "05", "06", "07", "08"]
    for nb, exs in ex.BY_NOTEBOOK.items():
        assert 2 <= len(exs) <= 4, f"notebook {nb} has {len(exs)} exercises"


@pytest.mark.parametrize(("notebook", "exercise"), ALL, ids=[e.name for _, e in ALL])
def test_reference_solution_passes(notebook, exercise):
    solution = getattr(_solution_module(notebook), exercise.name)
    result = exercise.evaluate(solution)
    assert result.status == "correct", result.message
    assert printed(exercise, solution).startswith(f"correct: {exercise.title}")


@pytest.mark.parametrize("exhibit", museum.EXHIBITS, ids=[f"{e.exercise}-{e.mistake.name}" for e in museum.EXHIBITS])
def test_museum_entry_fails_with_its_own_message(exhibit):
    assert exhibit.mistake.fn.__doc__, f"{exhibit.mistake.fn.__name__} needs a docstring saying what the mistake is"
    result = ex.EXERCISES[exhibit.exercise].evaluate(exhibit.mistake.fn)
    assert result.status == "wrong", result.message
    assert result.mistake == exhibit.mistake.name, result.message
    assert f"known mistake, {exhibit.mistake.name}:" in " ".join(result.message.split())  # the message is wrapped
    assert "smallest failing input:" in result.message


def test_museum_names_are_unique_within_an_exercise_and_cover_the_issue_list():
    names = [(e.exercise, e.mistake.name) for e in museum.EXHIBITS]
    assert len(names) == len(set(names))
    all_names = {n for _, n in names}
    for wanted in ("tiled `.repeat` order", "is_causal=True for a decode step (top-left mask)",
                   "RoPE not advanced by the cache length", "a cache sized by query heads",
                   "head_dim taken as d_model / n_heads",
                   "a causal mask for several new tokens against a longer cache, aligned top-left",
                   "sliding-window layers counted as global", "MLA's softmax scale without the RoPE dims",
                   "an MLA cache holding per-head keys and values", "positions rounded by a bf16 frequency buffer"):
        assert wanted in all_names


def test_tiled_repeat_message_names_the_head_and_the_order():
    msg = " ".join(ex.ex04_gqa.kv_head_of.evaluate(museum.kv_head_of_tiled).message.split())
    assert "query head 1 reads KV head 1: this is the tiled order of `.repeat`" in msg
    assert "i // group_size = 1 // 3 = 0" in msg


def test_window_and_int_cache_messages_name_the_case():
    msg = " ".join(ex.ex08_cache_shrink.window_mask.evaluate(museum.sinks_not_causal).message.split())
    assert "smallest failing input: 6 tokens, window 2, 2 sinks" in msg
    assert "Your mask lets query 0 see key 1, a later token" in msg
    msg = " ".join(ex.ex08_cache_shrink.quantized_cache_bytes.evaluate(museum.int_bytes_without_scales).message.split())
    assert "expected 68, received 64" in msg


def test_int_round_trip_names_the_nearest_bf16_rule_on_the_group_far_from_zero():
    # issue 25: rounding the minimum to the nearest bf16 clips the numbers below it, far from zero by dozens of steps
    msg = " ".join(ex.ex08_cache_shrink.int_round_trip.evaluate(museum.round_trip_nearest).message.split())
    assert "smallest failing input: x of shape (1, 64), float32: 1 token of 64 numbers from 198.6 to 200.8" in msg
    assert "expected 198.5966, received 199.0000" in msg
    assert ("a group's minimum 198.6000 rounds to 199, the nearest bf16 number, which is above it: the 2 numbers "
            "below 199 come back clipped, 198.6000 as 199.0000, 56.5 steps (of 0.00708008) off") in msg


def test_int_round_trip_tolerance_hides_no_other_rounding():
    # every case tells the nearest-bf16 rule from the reference wherever the two differ at all (the default bf16
    # tolerance let it pass on the bf16 case)
    exercise = ex.EXERCISES["int_round_trip"]
    for case in exercise.cases():
        expected, nearest = exercise.reference(*case.args), museum.round_trip_nearest(*case.args)
        assert (compare(expected, nearest, case.tol) is None) == torch.equal(expected, nearest), case.label


def test_int_cache_reference_counts_a_scale_and_a_minimum_per_64_numbers():
    # SmolLM2-135M at 8,192 tokens in int8: 384 bytes of integers and 6 groups x 4 bytes per token and layer
    assert ex.ex08_cache_shrink.reference_quantized_cache_bytes(30, 384, 8192, 8) == 30 * 8192 * (384 + 6 * 4)
    assert ex.ex08_cache_shrink.reference_quantized_cache_bytes(30, 384, 8192, 4) == 30 * 8192 * (192 + 6 * 4)


# ---------------------------------------------------------------- other valid formulations must pass
def _mha_loop(x, W_q, W_k, W_v, W_o, n_heads, n_pad):
    b, s, d_model = x.shape
    head_dim = W_q.out_features // n_heads
    out = torch.zeros(b, s, d_model, dtype=x.dtype)
    for i, pad in enumerate(n_pad):  # each sequence's real tokens alone, one head at a time, through SDPA
        xs, heads = x[i:i + 1, pad:], []
        if pad == s:
            continue
        for h in range(n_heads):
            cols = slice(h * head_dim, (h + 1) * head_dim)
            q, k, v = (W(xs)[..., cols][:, None] for W in (W_q, W_k, W_v))
            heads.append(F.scaled_dot_product_attention(q, k, v, is_causal=True)[:, 0])
        out[i, pad:] = W_o(torch.cat(heads, dim=-1))[0]
    return out


def _rope_complex(x, start_pos, base=10000.0):
    d = x.shape[-1]
    inv_freq = 1.0 / base ** (torch.arange(d // 2, dtype=torch.float64) * 2 / d)
    angles = torch.arange(start_pos, start_pos + x.shape[2], dtype=torch.float64)[:, None] * inv_freq
    x1, x2 = x.double().chunk(2, dim=-1)
    z = torch.complex(x1, x2) * torch.polar(torch.ones_like(angles), angles)  # rotate each pair as a complex number
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def _decode_sdpa(q, k, v, k_cache, v_cache, rope):
    n = k_cache.shape[2]
    keys, values = torch.cat([k_cache, rope(k, n)], 2), torch.cat([v_cache, v], 2)
    return F.scaled_dot_product_attention(rope(q, n), keys, values)


def _mqa_ragged_loop(q, k_cache, v_cache, lengths):
    h = q.shape[1]
    rows = [F.scaled_dot_product_attention(q[i:i + 1], k_cache[i:i + 1, :, :n].expand(-1, h, -1, -1),
                                           v_cache[i:i + 1, :, :n].expand(-1, h, -1, -1))
            for i, n in enumerate(lengths)]  # each sequence's own keys, handed to every head as a view
    return torch.cat(rows)


def _new_tokens_loop(q, k, v):
    s_q, s_k = q.shape[2], k.shape[2]
    rows = []
    for t in range(s_q):  # query t may see keys 0 .. s_k - s_q + t
        seen = s_k - s_q + t + 1
        w = (q[:, :, t:t + 1] @ k[:, :, :seen].transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
        rows.append(w @ v[:, :, :seen])
    return torch.cat(rows, dim=2)


def _gqa_per_head(q, k, v):
    g = q.shape[1] // k.shape[1]
    mask = causal_mask(q.shape[2], k.shape[2])
    heads = [F.scaled_dot_product_attention(q[:, i], k[:, i // g], v[:, i // g], attn_mask=mask)
             for i in range(q.shape[1])]
    return torch.stack(heads, dim=1)


def _projection_cat(w, n_heads, n_kv_heads):
    head_dim = w.shape[0] // n_kv_heads
    return torch.cat([w[(i // (n_heads // n_kv_heads)) * head_dim:][:head_dim] for i in range(n_heads)])


def _pool_loop(w, n_kv_heads, new_n_kv_heads):
    head_dim, r = w.shape[0] // n_kv_heads, n_kv_heads // new_n_kv_heads
    blocks = [sum(w[(j * r + i) * head_dim:(j * r + i + 1) * head_dim].float() for i in range(r)) / r
              for j in range(new_n_kv_heads)]
    return torch.cat(blocks).to(w.dtype)


def _mla_explicit(q_c, q_r, latent, k_rope, w_uk):
    k_c = torch.einsum("bsc,hdc->bhsd", latent, w_uk)  # rebuild every head's keys
    h = q_c.shape[1]
    k = torch.cat([k_c, k_rope[:, None].expand(-1, h, -1, -1)], dim=-1)
    q = torch.cat([q_c, q_r], dim=-1)
    return q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])


def _sliding_loop(model, tokens, window, local_per_global, batch=1, bytes_per_number=2):
    kept = sum(tokens if (i + 1) % (local_per_global + 1) == 0 else min(tokens, window)
               for i in range(model.n_layers))
    return 2 * model.n_kv_heads * model.head_dim * kept * batch * bytes_per_number


def _window_triangles(n, window, sinks):
    ones = torch.ones(n, n, dtype=torch.bool)
    in_window = ones.triu(-(window - 1))  # key j at most window - 1 before query i
    return ones.tril() & (in_window | (torch.arange(n) < sinks))


def _bf16_cut(v: float, up: bool) -> float:
    """A float32 number rounded down or up to bf16 by bits, not by torch's rounding: bf16 is float32's top 16 bits,
    so cutting the low 16 rounds toward zero; where that went the wrong way, one bf16 step away from zero."""
    bits = np.array(v, dtype=np.float32).view(np.uint32)
    cut = bits & np.uint32(0xFFFF0000)
    if cut.view(np.float32) != np.float32(v) and (v > 0) == up:
        cut = cut + np.uint32(0x10000)
    return float(cut.view(np.float32))


def _round_trip_loop(x, bits):
    out = torch.empty_like(x)
    flat_in, flat_out = x.reshape(-1, 64), out.view(-1, 64)
    for r in range(flat_in.shape[0]):  # one group of 64 at a time
        low, high = torch.aminmax(flat_in[r].float())
        low = _bf16_cut(low.item(), up=False)  # at or below every number of the group
        scale = max(_bf16_cut(((high - low) / (2 ** bits - 1)).item(), up=True), torch.finfo(torch.bfloat16).tiny)
        q = torch.clamp(torch.round((flat_in[r].float() - low) / scale), 0, 2 ** bits - 1)
        flat_out[r] = (q * scale + low).to(x.dtype)
    return out


ALTERNATIVES = {
    "cache_bytes": lambda m, t, b=1, n=2: m.cache_bytes(t, b, DTYPE_NAME[n]),
    "sliding_window_cache_bytes": _sliding_loop,
    "mha_left_padded": _mha_loop,
    "rope": _rope_complex,
    "decode_step": _decode_sdpa,
    "mqa_decode_ragged": _mqa_ragged_loop,
    "attend_new_tokens": _new_tokens_loop,
    "kv_head_of": lambda i, h, kv: i * kv // h,
    "expand_kv": lambda x, g: x[:, torch.arange(x.shape[1] * g) // g],
    "gqa": _gqa_per_head,
    "same_kv_head": lambda h, kv: torch.tensor([[i * kv // h == j * kv // h for j in range(h)] for i in range(h)]),
    "expand_kv_projection": _projection_cat,
    "decode_cost": lambda h, kv, s, d, nb: (kv * s * d * nb * 2, h * s * d * 4),
    "decode_attention": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
    "mean_pool_kv": _pool_loop,
    "mla_scores": _mla_explicit,
    "mla_cache_bytes": lambda m, t, b=1, n=2: m.cache_bytes(t, b, DTYPE_NAME[n]),
    "window_mask": _window_triangles,
    "int_round_trip": _round_trip_loop,
    # bits / 8 bytes a number plus 4 bytes per 64 numbers = (2 bits + 1) / 16 bytes a number
    "quantized_cache_bytes": lambda n_layers, per, tokens, bits: n_layers * tokens * per * (2 * bits + 1) // 16,
}


def test_every_exercise_has_an_alternative_formulation():
    assert set(ALTERNATIVES) == set(ex.EXERCISES)


@pytest.mark.parametrize("name", sorted(ALTERNATIVES))
def test_a_differently_written_correct_solution_passes(name):
    result = ex.EXERCISES[name].evaluate(ALTERNATIVES[name])
    assert result.status == "correct", result.message


# ---------------------------------------------------------------- unfinished and broken learner code
def _skeleton(*args):
    # the learner's code goes here
    raise NotImplementedError


@pytest.mark.parametrize("name", sorted(ex.EXERCISES))
def test_a_skeleton_prints_not_yet_and_does_not_raise(name):
    text = printed(ex.EXERCISES[name], _skeleton)
    assert text.startswith(f"not yet: {ex.EXERCISES[name].title}"), text
    assert "NotImplementedError" in text
    assert text == printed(ex.EXERCISES[name], _skeleton), "the message must be the same every run (nbval checks it)"


def test_returning_none_is_not_yet():
    result = ex.EXERCISES["gqa"].evaluate(lambda q, k, v: None)
    assert result.status == "not yet" and "returned None" in result.message


def test_exceptions_in_learner_code_are_reported_not_raised():
    def broken(q, k, v):
        return q @ k  # wrong inner dimensions
    text = printed(ex.EXERCISES["gqa"], broken)
    assert text.startswith("wrong: gqa(q, k, v)") and "your function raised RuntimeError" in text
    assert "smallest failing input: batch 1, 1 query head, 1 KV head (MHA), 1 query against 1 key" in text


def test_wrong_shape_is_reported_with_both_shapes():
    result = ex.EXERCISES["expand_kv"].evaluate(lambda x, g: x)
    assert result.status == "wrong"
    assert "expected shape (1, 4, 3, 4), received shape (1, 2, 3, 4)" in result.message


def test_wrong_dtype_is_reported():
    result = ex.EXERCISES["decode_attention"].evaluate(
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True).float())
    assert result.status == "wrong"
    assert "expected dtype bfloat16 (the inputs' dtype), received float32" in result.message


def test_an_unknown_mistake_gets_the_smallest_input_expected_and_received():
    result = ex.EXERCISES["cache_bytes"].evaluate(lambda m, t, b=1, n=2: 7)
    assert result.status == "wrong" and result.mistake is None
    assert "smallest failing input: GPT-2 small" in result.message
    assert "expected 37,748,736, received 7" in result.message


def test_not_a_function_and_a_checker_defect_never_raise(capsys):
    ex.EXERCISES["mqa_decode_ragged"].check(42)
    assert "expected a function" in capsys.readouterr().out
    broken = ex.Exercise("broken", "broken()", lambda: 1 / 0, lambda: [ex.Case("no input", ())])
    broken.check(lambda: 1)
    assert "the checker for 'broken()' failed (ZeroDivisionError" in capsys.readouterr().out


def test_learner_cannot_change_the_checkers_inputs():
    def in_place(x, g):
        x.zero_()  # would corrupt the next comparison if the checker shared its tensors
        return x.repeat_interleave(g, dim=1)
    result = ex.EXERCISES["expand_kv"].evaluate(in_place)
    assert result.status == "wrong" and result.mistake is None


# ---------------------------------------------------------------- the cases a careful reviewer would choose
TENSOR_EXERCISES = ["mha_left_padded", "rope", "decode_step", "mqa_decode_ragged", "attend_new_tokens", "expand_kv",
                    "gqa", "expand_kv_projection", "decode_attention", "mean_pool_kv", "mla_scores", "int_round_trip"]


@pytest.mark.parametrize("name", TENSOR_EXERCISES)
def test_tensor_cases_include_bf16_and_a_one_element_edge(name):
    cases = ex.EXERCISES[name].cases()
    tensors = [[a for a in c.args if isinstance(a, torch.Tensor)] for c in cases]
    assert any(t.dtype == torch.bfloat16 for ts in tensors for t in ts)
    assert any(ts[0].ndim != 4 or ts[0].shape[0] > 1 for ts in tensors)  # batch above 1 where there is a batch
    ints = [[a for a in c.args if isinstance(a, int)] for c in cases]
    # an edge of size one: one token, one head, one query; for weight matrices, one KV head
    assert any(min(ts[0].shape) == 1 for ts in tensors) or any(1 in i for i in ints)


@pytest.mark.parametrize("name", ["gqa", "decode_attention", "attend_new_tokens"])
def test_attention_cases_span_mha_mqa_and_a_longer_cache(name):
    infos = [c.info for c in ex.EXERCISES[name].cases()]
    kinds = {"MHA" if i["n_kv_heads"] == i["n_heads"] else "MQA" if i["n_kv_heads"] == 1 else "GQA" for i in infos}
    assert kinds >= ({"MQA"} if name == "attend_new_tokens" else {"MHA", "MQA", "GQA"})
    assert any(i.get("s_k", 0) > i.get("s_q", 1) for i in infos)


def test_mla_reference_equals_the_library_layer():
    torch.manual_seed(0)
    layer = MultiHeadLatentAttention(d_model=32, n_heads=4, d_c=12, d_rope=4, head_dim=8, d_q=16)
    x = torch.randn(2, 5, 32)
    q_c, q_r = layer.queries(x)
    latent, k_rope = layer.compress_kv(x)
    scores = ex.ex07_mla.reference_mla_scores(q_c, q_r, latent, k_rope, layer.absorbed_key_weight())
    _, weights = layer.attend_explicit(q_c, q_r, latent, k_rope, return_weights=True)
    masked = scores.masked_fill(~causal_mask(5, 5), float("-inf")).softmax(-1)
    torch.testing.assert_close(masked, weights)


# ---------------------------------------------------------------- integers of any kind (issue 25)
# The exercises whose answer is an int (a byte count, a head index) or a tuple of ints (decode_cost).
INT_EXERCISES = ["cache_bytes", "sliding_window_cache_bytes", "kv_head_of", "decode_cost", "mla_cache_bytes",
                 "quantized_cache_bytes"]


def _ints_as(kind, value):
    """``value`` (an int or a tuple of ints) with every int made a ``kind``: np.int32 only where it fits."""
    if isinstance(value, tuple):
        return tuple(_ints_as(kind, v) for v in value)
    if kind is np.int32 and not -2**31 <= value < 2**31:
        return np.int64(value)
    return kind(value)


INT_KINDS = {"np.int64": np.int64, "np.int32": np.int32, "np.uint64": np.uint64, "0-d numpy array": np.array,
             "0-d int64 tensor": torch.tensor}


def test_the_int_exercises_are_the_ones_answering_ints():
    answers_int = {name for name, e in ex.EXERCISES.items()
                   if isinstance(e.reference(*e.cases()[0].args), (int, tuple))}
    assert answers_int == set(INT_EXERCISES)


@pytest.mark.parametrize("kind", INT_KINDS, ids=list(INT_KINDS))
@pytest.mark.parametrize("name", INT_EXERCISES)
def test_a_right_answer_as_a_numpy_integer_is_correct(name, kind):
    notebook = next(nb for nb, exs in ex.BY_NOTEBOOK.items() if ex.EXERCISES[name] in exs)
    solution = getattr(_solution_module(notebook), name)
    result = ex.EXERCISES[name].evaluate(lambda *args: _ints_as(INT_KINDS[kind], solution(*args)))
    assert result.status == "correct", result.message


INT_EXHIBITS = [e for e in museum.EXHIBITS if e.exercise in INT_EXERCISES]


@pytest.mark.parametrize("kind", [np.int64, np.int32], ids=["np.int64", "np.int32"])
@pytest.mark.parametrize("exhibit", INT_EXHIBITS, ids=[f"{e.exercise}-{e.mistake.name}" for e in INT_EXHIBITS])
def test_a_wrong_answer_as_a_numpy_integer_gets_the_same_named_mistake(exhibit, kind):
    exercise, buggy = ex.EXERCISES[exhibit.exercise], exhibit.mistake.fn
    as_int = exercise.evaluate(buggy)
    as_numpy = exercise.evaluate(lambda *args: _ints_as(kind, buggy(*args)))
    assert as_numpy.status == "wrong" and as_numpy.mistake == exhibit.mistake.name, as_numpy.message
    assert as_numpy.message == as_int.message


def test_floats_posing_as_ints_are_refused_where_they_are_mistakes():
    cache_bytes, kv_head_of = ex.EXERCISES["cache_bytes"], ex.EXERCISES["kv_head_of"]
    # a byte count computed with `/` has a whole value: right, as before; so is a float32 that holds it exactly
    assert cache_bytes.evaluate(lambda m, t, b=1, n=2: ex.ex01_kv_cache.reference_cache_bytes(m, t, b, n) / 1).status \
        == "correct"
    assert cache_bytes.evaluate(
        lambda m, t, b=1, n=2: np.float32(ex.ex01_kv_cache.reference_cache_bytes(m, t, b, n))).status == "correct"
    # ... unless its value is not whole, or it comes as a float32 that cannot hold it exactly; the message prints
    # the float's digits, so that it cannot read as the expected count
    msg = cache_bytes.evaluate(lambda m, t, b=1, n=2: ex.ex01_kv_cache.reference_cache_bytes(m, t, b, n) + 0.5).message
    assert "expected 37,748,736, received 37,748,736.5 (float)" in msg
    assert compare(2**24 + 1, np.float32(2**24 + 1)) == "expected 16,777,217, received 16,777,216.0 (float32)"
    # an index is never a float: `/` in place of `//`
    for divided in (lambda i, h, kv: i / (h // kv), lambda i, h, kv: np.floor(i / (h // kv)),
                    lambda i, h, kv: torch.tensor(i // (h // kv), dtype=torch.float32)):
        result = kv_head_of.evaluate(divided)
        assert result.status == "wrong", result.message
        assert "expected 0, received 0.0 (float): an index must be an int, as `//` gives" in result.message
    for boolean in (lambda i, h, kv: i >= h, lambda i, h, kv: np.bool_(i >= h)):  # False is not KV head 0
        assert "expected 0, received False (bool)" in kv_head_of.evaluate(boolean).message


# ---------------------------------------------------------------- naming only the mistake made (issue 23)
def colliding_mistakes(exercise) -> list[tuple[str, str]]:
    """Pairs of known mistakes whose outputs agree on EVERY case of ``exercise``: a checker could not tell which of
    the two a learner made."""
    cases = exercise.cases()
    outputs = {m.name: [exercise.mistake_output(m, c) for c in cases] for m in exercise.mistakes}
    names = list(outputs)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
            if all(exercise.same(outputs[a][j], outputs[b][j], c) for j, c in enumerate(cases))]


@pytest.mark.parametrize("name", sorted(ex.EXERCISES))
def test_no_two_known_mistakes_give_the_same_outputs_on_every_case(name):
    assert colliding_mistakes(ex.EXERCISES[name]) == []


def test_the_collision_check_finds_notebook_07s_toy_collision():
    # at notebook 07's toy sizes (4 heads, d_c 24, d_rope 8) "the latent twice" and "a RoPE key per head" are both
    # 56 numbers a token: on that case alone the two cannot be told apart
    mla = ex.EXERCISES["mla_cache_bytes"]
    toy_only = ex.Exercise("mla_cache_bytes", mla.title, mla.reference, lambda: [mla.cases()[0]], mla.mistakes)
    assert ("a RoPE key per head", "a latent for the keys and another for the values") in colliding_mistakes(toy_only)


@pytest.mark.parametrize("exhibit", museum.EXHIBITS, ids=[f"{e.exercise}-{e.mistake.name}" for e in museum.EXHIBITS])
def test_every_known_mistake_runs_on_every_case_and_differs_on_two(exhibit):
    exercise = ex.EXERCISES[exhibit.exercise]
    differs = 0
    for case in exercise.cases():
        out = exercise.mistake_output(exhibit.mistake, case)
        assert out is not checking._FAILED, f"{exhibit.mistake.name} raised on {case.label}"
        differs += not exercise.same(exercise.reference(*checking.clone(case.args)), out, case)
    assert differs >= 2, f"{exhibit.mistake.name} differs from the reference on {differs} case(s): never named"


# Wrong solutions that no exhibit is: each must be rejected, on the case that exposes it, with a message that is
# true (no name, or the name of the mistake it is).
def _cache_bytes_without_bytes(model, tokens, batch=1, bytes_per_number=2):
    return 2 * model.n_layers * model.n_kv_heads * model.head_dim * tokens * batch  # bytes_per_number forgotten


def _sliding_round(model, tokens, window, local_per_global, batch=1, bytes_per_number=2):
    n_global = round(model.n_layers / (local_per_global + 1))  # 10.67 -> 11 for Llama-3 8B at 2 local per global
    kept = n_global * tokens + (model.n_layers - n_global) * min(tokens, window)
    return 2 * model.n_kv_heads * model.head_dim * kept * batch * bytes_per_number


def _round_trip_constant_as_zero(x, bits):
    solution = _solution_module("08")
    g = x.float().unflatten(-1, (-1, 64))
    constant = g.amax(-1, keepdim=True) == g.amin(-1, keepdim=True)  # "nothing to quantize": returned as 0
    back = solution.int_round_trip(x, bits).float().unflatten(-1, (-1, 64))
    return torch.where(constant, torch.zeros_like(back), back).flatten(-2).to(x.dtype)


def _round_trip_in_bf16(x, bits):
    solution = _solution_module("08")
    levels = 2 ** bits - 1
    g = x.unflatten(-1, (-1, 64))  # in x's own dtype: bf16 arithmetic for a bf16 input
    low = solution.bf16_toward(g.amin(-1, keepdim=True).float(), -math.inf).to(x.dtype)
    step = ((g.amax(-1, keepdim=True) - low) / levels).float().clamp_min(torch.finfo(torch.bfloat16).tiny)
    scale = solution.bf16_toward(step, math.inf).to(x.dtype)
    return (((g - low) / scale).round().clamp(0, levels) * scale + low).flatten(-2)


def _rope_without_base(x, start_pos, base=10000.0):
    return _solution_module("02").rope(x, start_pos)  # the base argument never reaches the frequencies


def _gqa_copying(q, k, v):
    g = q.shape[1] // k.shape[1]
    mask = causal_mask(q.shape[2], k.shape[2])
    return F.scaled_dot_product_attention(q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), attn_mask=mask)


def _new_tokens_mask_upside_down(q, k, v):
    s_q, s_k = q.shape[2], k.shape[2]
    mask = torch.ones(s_q, s_k, dtype=torch.bool).tril(diagonal=s_q - s_k)  # the offset with the wrong sign
    weights = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).masked_fill(~mask, float("-inf")).softmax(-1)
    return weights @ v


HOLES = {  # name: (exercise, wrong solution, what the message must say, the mistake it names or None)
    "bytes_per_number forgotten, not 'keys only'": (
        "cache_bytes", _cache_bytes_without_bytes, ["smallest failing input: GPT-2 small",
                                                    "expected 37,748,736, received 18,874,368"], None),
    "round() for the global layers": (
        "sliding_window_cache_bytes", _sliding_round,
        ["Llama-3 8B (32 layers", "2 local layers per global one, window 512, 8,192 tokens",
         "expected 381,681,664, received 413,138,944"], None),
    "a constant group returned as 0": (
        "int_round_trip", _round_trip_constant_as_zero,
        ["x of shape (1, 64), float32: 1 token of 64 numbers all equal to 0.5", "expected 0.5000, received 0.0000"],
        None),
    "a round trip in bf16 arithmetic": (
        "int_round_trip", _round_trip_in_bf16, ["x of shape (2, 3, 5, 64), bfloat16", "(compared exactly)"], None),
    "rope's base ignored": (
        "rope", _rope_without_base, ["start_pos 5, base 500,000", "largest difference"], None),
    "MLA's cache with d_rope = head_dim // 2": (
        "mla_cache_bytes", museum.mla_cache_rope_half_head,
        ["toy MLA B", "expected 960, received 1,120"], "d_rope taken as head_dim / 2"),
    "MLA's latent cached twice": (
        "mla_cache_bytes", museum.mla_cache_latent_twice,
        ["toy MLA of notebook 07", "2 x d_c + d_rope = 56"], "a latent for the keys and another for the values"),
    "gqa that copies K and V": (
        "gqa", _gqa_copying,
        ["4 query heads, 2 KV heads (GQA), 3 queries against 3 keys",
         "the numbers are right on every input, but your function copied K", "2 times the 96 that K holds"], None),
    "a causal mask whose offset has the wrong sign": (
        "attend_new_tokens", _new_tokens_mask_upside_down,
        ["received NaN at", "hint: softmax of a row whose scores are all -inf is 0 / 0 = NaN"], None),
    "pad rows left to the softmax": (
        "mha_left_padded", museum.padded_mha_nan_rows, ["received NaN at"], "pad rows left to the softmax (NaN)"),
}


@pytest.mark.parametrize("hole", HOLES, ids=list(HOLES))
def test_each_hole_is_closed_with_a_true_message(hole):
    name, fn, says, mistake = HOLES[hole]
    result = ex.EXERCISES[name].evaluate(fn)
    text = " ".join(result.message.split())
    assert result.status == "wrong", result.message
    assert result.mistake == mistake, result.message
    for words in says:
        assert words in text, (words, result.message)
    if mistake is None:
        assert "known mistake" not in text


def test_a_mistake_matched_on_the_failing_case_only_is_not_named():
    # forgetting bytes_per_number gives exactly the "keys only" number on GPT-2 at 2 bytes, the smallest case; the
    # cases in 4 and 1 bytes tell the two apart, so the checker names neither
    exercise, case = ex.EXERCISES["cache_bytes"], ex.EXERCISES["cache_bytes"].cases()[0]
    assert _cache_bytes_without_bytes(*case.args) == museum.cache_bytes_keys_only(*case.args)
    assert exercise.evaluate(_cache_bytes_without_bytes).mistake is None


def test_a_correct_gqa_that_copies_nothing_passes_and_the_rule_is_said():
    result = ex.EXERCISES["gqa"].evaluate(_solution_module("04").gqa)
    assert result.status == "correct" and "without copying K or V" in result.message
    result = ex.EXERCISES["gqa"].evaluate(ALTERNATIVES["gqa"])  # one SDPA call per query head, on views of K and V
    assert result.status == "correct", result.message


def test_right_answers_of_any_integer_or_float_kind_are_accepted():
    kv_head_of, cache_bytes = ex.EXERCISES["kv_head_of"], ex.EXERCISES["cache_bytes"]
    assert kv_head_of.evaluate(lambda i, h, kv: np.int64(i // (h // kv))).status == "correct"
    # a count computed in floating point, a few float64 roundings off, is the same count
    assert cache_bytes.evaluate(
        lambda m, t, b=1, n=2: ex.ex01_kv_cache.reference_cache_bytes(m, t, b, n) * (1 + 4e-16)).status == "correct"
    msg = compare(270_582_939_648, 270_582_939_648.5)
    assert msg == "expected 270,582,939,648, received 270,582,939,648.5 (float)"


def test_nan_must_sit_where_the_expected_nan_sits():
    expected = torch.tensor([1.0, float("nan")])
    assert compare(expected, expected.clone()) is None
    assert compare(expected, torch.tensor([1.0, 2.0])) == "expected NaN at [1], received 2.0000"
    assert compare(torch.tensor([1.0, 2.0]), expected).startswith("received NaN at [1]")
