"""Values outside their domain, tried through the calls a learner makes, each answered clearly (issue 16).

Every case below is one bad input; the message must name the argument as the caller wrote it, the
value, and what would be valid. In brackets: what the same call answered before these fixes (main at
8e2fc38, run case by case, each stopped after 3 s). "accepted" means no error: a silently wrong result.

Positions and RoPE
 1. ``RotaryEmbedding(8)(x, start_pos=-1)``                    [accepted: negative positions]
 2. ``RotaryEmbedding(8)(x, start_pos=2.5)``                   [accepted: positions 2.5, 3.5]
 3. ``RotaryEmbedding(8)(x, start_pos=True)``                  [accepted as position 1]
 4. ``RotaryEmbedding(8)(x, start_pos='3')``                   [TypeError: can only concatenate str (not "int") to str]
 5. ``GroupedQueryAttention.qkv(x, start_pos=-4)``             [accepted]
 6. ``MultiHeadLatentAttention.compress_kv(x, start_pos=-1)``  [accepted]
 7. ``RotaryEmbedding(8, base='10000')``                       [TypeError: '>' not supported between 'str' and 'int']
 8. ``RotaryEmbedding(8, base=nan)``                           [clear already: "base=nan must be positive"]
 9. ``RotaryEmbedding(8, base=inf)``                           [accepted: every angle 0 but the first pair's]
10. ``GroupedQueryAttention(32, 8, 2, rope_base='10000')``     [TypeError: '>' not supported ...]
11. ``GroupedQueryAttention(32, 8, 2, rope_base=-1)``          ["base=-1 must be positive": not the caller's name]
12. ``MultiHeadLatentAttention(..., rope_base='1e4')``         [TypeError: '>' not supported ...]
13. ``RotaryEmbedding(8)(x.long())``                           [accepted: integers rotated and truncated]
Caches
14. ``KVCache(..., dtype='bf16')``                             [zeros(): argument 'dtype' must be torch.dtype, not str]
15. ``layer.new_cache(1, 8, dtype='bf16')``                    [the same, from inside torch]
16. ``KVCache(..., dtype=torch.int8)``                         [accepted: keys and values truncated to integers]
17. ``KVCache(..., dtype=torch.int64)``                        [accepted: the same]
18. ``KVCache(..., device='gpu')``                             [RuntimeError: Expected one of cpu, cuda, ipu, ... ]
19. ``KVCache(1, 8, 128, max_len=10**12)``                     [DefaultCPUAllocator: can't allocate memory]
20. ``cache.append('k', v)``                                   [AttributeError: 'str' object has no attribute 'ndim']
21. ``cache.append(k.long(), v.long())``                       [accepted: integers stored in a float cache]
21a. ``GroupedQueryAttention(16, 4, 2).to('bf16')``             [RuntimeError: Invalid device string: 'bf16']
21b. ``TinyLM(cfg).to('fp16')``                                 [RuntimeError: Invalid device string: 'fp16']
21c. ``KVCache(..., device='bf16')``                            [RuntimeError: Invalid device string: 'bf16']
The attention layer
22. ``layer(x.long())`` (an integer tensor)                    [expected m1 and m2 to have the same dtype]
23. ``layer(x.double())`` into a float32 layer                 [the same]
24. ``layer.to(torch.bfloat16)(x)`` with float32 x             [the same]
25. ``layer(x, cache=(k, v))``                                 [AttributeError: 'tuple' object has no attribute 'batch']
26. ``layer(x, cache=MLACache(...))``                          [a message about latent.shape, never given]
27. ``layer(x, cache=[])``                                     [AttributeError: 'list' object has no attribute 'batch']
28. ``layer(x, cache)`` with a cache made for another layer    [a message about k.shape, not about the cache]
29. ``layer('text')``                                          [AttributeError: 'str' object has no attribute 'ndim']
30. ``grouped_attention(q, k.double(), v, return_weights=True)`` [expected scalar type Float but found Double]
31. ``grouped_attention(q.int(), k, v)``                       [Expected query, key, and value to have the same dtype]
32. ``grouped_attention(q, k_list, v_list)``                   [AttributeError: 'list' object has no attribute 'ndim']
Heads
33. ``attention_kind(10**12, 7)``                              [still running after 3 s: hours, building the divisors]
34. ``AttentionLayout(10**18 + 9, 7, 64)``                     [still running after 3 s]
35. ``GroupedQueryAttention(720720, 720720, 2431, head_dim=2)`` [a message listing all 240 divisors]
Non-finite values
36. a nan in token 3 of 6, full causal pass                    [accepted: tokens 0..2 became nan too]
37. the same, token by token through a cache                   [accepted: tokens 0..2 finite; the paths disagreed]
38. an inf in x                                                [accepted: nan outputs]
39. float16 projections that overflow                          [accepted: nan outputs]
40. ``grouped_attention`` prefill with a nan in a later value  [accepted: earlier rows nan]
Tiny LM and training
41. ``TinyLM(cfg)(torch.tensor([[1, 300]]))`` (vocab 256)      [IndexError: index out of range in self]
42. ``TinyLM(cfg)(torch.rand(1, 4))`` (float ids)              [Expected tensor for argument #1 'indices' to have ...]
43. ``TinyLM(cfg)(ids, a_single_kv_cache)``                    [TypeError: object of type 'KVCache' has no len()]
44. ``TinyLM(cfg).generate([[1, 2]], 3)`` (a list)             [AttributeError: 'list' object has no attribute 'ndim']
45. ``encode(b'bytes')``                                       [AttributeError: 'bytes' object has no ... 'encode']
46. ``decode(torch.tensor([300]))``                            [ValueError: bytes must be in range(0, 256)]
47. ``TrainConfig(lr='3e-3')``                                 [TypeError: '>' not supported ...]
48. ``TrainConfig(lr=nan)``                                    [clear already: "lr=nan must be positive"]
49. ``TrainConfig(min_lr_ratio=2)``                            [accepted: the learning rate would rise]
50. ``TrainConfig(weight_decay=-0.1)``                         [accepted]
51. ``TrainConfig(grad_clip=0)``                               [accepted: every gradient clipped to 0]
52. ``TrainConfig(warmup=2.5)``                                [accepted]
53. ``train_lm(..., seed=-1)``                                 [accepted: training started]
54. ``sample_batch(tokens, batch=0, ...)``                     [accepted: an empty batch]
55. ``fixed_windows(tokens, n_windows=0, ...)``                [accepted: an empty validation set]
Conversion
56. ``reduce_kv_heads(nn.Linear(4, 4), 1)``                    [AttributeError: 'Linear' object has no ... 'n_heads']
57. ``reduce_kv_heads(layer, 2, 'random', generator=0)``       [randn() received an invalid combination of arguments]
58. ``expand_to_mha('layer')``                                 [AttributeError]
59. ``mean_nll(model, windows of 1 token)``                    [ZeroDivisionError after the forward pass]
60. ``uptrain(model, windows, 2, lr=-1)``                      [torch's "Invalid learning rate: -1", after the model's
                                                                requires_grad flags were changed]
61. ``uptrain(model, windows, 2, batch=0)``                    [an empty batch reached the model]
Results files
62. ``write_results(a_folder, rows, meta)``                    ["exists; pass --overwrite", and --overwrite then failed]

Case 37 is in test_a_nan_is_refused_by_the_full_pass_and_by_decoding_at_the_same_position; the other 64
are in CASES. Cases 59 to 61 are checked here without a model (the input check comes first); the
bracketed answers for them are what the old code does with one.

Benchmark options (tests/test_benchmark_options.py): 8 bad options of benchmarks/train_kv_sweep.py,
13 of benchmarks/convert_smollm.py, 5 bad ``--out`` paths for each of the two commands, 8 bad values
given to the argparse types of gqa_lib.experiments.bench_cli, and ``--warmup -3`` through one: 40 more. Before, the
numbers were checked after parsing by name only where they had to be at least 1 (``--lr -1``,
``--window 1``, ``--seed -3`` went on to load the model), and an ``--out`` folder or an ``--out`` under a
file failed at the end, with a traceback, losing the rows.

Issue 25 (tests/test_benchmark_options.py, PROBED): 24 bad options of five commands (8 of mla_smollm, 8 of
cache_pareto, 1 of convert_smollm, 5 of decode_attention, 2 of decode_smollm), run in one process by
tests/command_probe.py and each refused in under a second, before the corpus, the model or any measuring; and
4 bad values given to the bounded argparse types: 28 more. Before, every one of the 24 was accepted: a 1-token
window's losses all nan, windows past SmolLM2's 8,192-token context, latent ranks 0, 500 and 384 (and a repeated
one), ``--seed -1``, per-channel (KIVI) rows that never saw a quantized key, ``--flush-factor nan`` and a repeated
``--seq-lens`` each went on to load the model or to measure, and failed or wrote a wrong table at the end.

In all, 65 + 40 + 28 = 133 bad inputs through the public surface, each now refused at once with a message
that names the argument, the value and what is valid (for non-finite values, the position).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from gqa_lib.core import attention, kv_head_conversion, layout, mla, rope
from gqa_lib.core.kv_cache import KVCache
from gqa_lib.experiments import corpus, kv_sweep, results, smollm_conversion
from gqa_lib.models import tiny_lm

pytestmark = pytest.mark.usefixtures("single_thread")

AT_ONCE_S = 5.0  # as in test_reliability_bad_input.py: generous for a loaded machine
NAN, INF = float("nan"), float("inf")
TINY = tiny_lm.TinyLMConfig(n_layers=1, d_model=16, n_heads=2, n_kv_heads=1, d_ff=16, max_len=16)


def _x(*shape, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dtype)


def _layer():
    return attention.GroupedQueryAttention(16, 4, 2)


def _mla():
    return mla.MultiHeadLatentAttention(16, 2, d_c=8, d_rope=4, head_dim=4)


def _nan_at(shape, index, value=NAN):
    x = _x(*shape)
    x[index] = value
    return x


@dataclass
class Case:
    id: str
    call: object
    exc: type | tuple
    needles: list[str] = field(default_factory=list)


def case(id, call, exc, *needles):
    return Case(id, call, exc, list(needles))


Q, K, V = _x(1, 4, 3, 8), _x(1, 2, 3, 8), _x(1, 2, 3, 8)

CASES = [
    case("rope-negative-start", lambda: rope.RotaryEmbedding(8)(_x(1, 1, 2, 8), start_pos=-1), ValueError,
         "start_pos=-1", "non-negative integer"),
    case("rope-fractional-start", lambda: rope.RotaryEmbedding(8)(_x(1, 1, 2, 8), start_pos=2.5), TypeError,
         "start_pos=2.5", "non-negative integer"),
    case("rope-bool-start", lambda: rope.RotaryEmbedding(8)(_x(1, 1, 2, 8), start_pos=True), TypeError,
         "start_pos=True"),
    case("rope-string-start", lambda: rope.RotaryEmbedding(8)(_x(1, 1, 2, 8), start_pos="3"), TypeError,
         "start_pos='3'"),
    case("layer-negative-start", lambda: _layer().qkv(_x(1, 2, 16), start_pos=-4), ValueError, "start_pos=-4"),
    case("mla-negative-start", lambda: _mla().compress_kv(_x(1, 2, 16), start_pos=-1), ValueError, "start_pos=-1"),
    case("rope-string-base", lambda: rope.RotaryEmbedding(8, base="10000"), TypeError,
         "base='10000'", "finite positive number"),
    case("rope-nan-base", lambda: rope.RotaryEmbedding(8, base=NAN), ValueError, "base=nan", "finite positive"),
    case("rope-inf-base", lambda: rope.RotaryEmbedding(8, base=INF), ValueError, "base=inf", "finite positive"),
    case("layer-string-rope-base", lambda: attention.GroupedQueryAttention(32, 8, 2, rope_base="10000"), TypeError,
         "rope_base='10000'", "finite positive number"),
    case("layer-negative-rope-base", lambda: attention.GroupedQueryAttention(32, 8, 2, rope_base=-1), ValueError,
         "rope_base=-1", "finite positive number"),
    case("mla-string-rope-base",
         lambda: mla.MultiHeadLatentAttention(16, 2, d_c=8, d_rope=4, head_dim=4, rope_base="1e4"), TypeError,
         "base='1e4'", "rope_base", "finite positive number"),
    case("rope-integer-x", lambda: rope.RotaryEmbedding(8)(torch.ones(1, 1, 2, 8, dtype=torch.long)), TypeError,
         "x.dtype=torch.int64", "floating dtype"),
    # caches
    case("cache-dtype-string", lambda: KVCache(1, 2, 4, 8, dtype="bf16"), TypeError,
         "dtype='bf16'", "torch.bfloat16", "valid: torch.float32"),
    case("new-cache-dtype-string", lambda: _layer().new_cache(1, 8, dtype="bf16"), TypeError,
         "dtype='bf16'", "did you mean torch.bfloat16"),
    case("cache-int8", lambda: KVCache(1, 2, 4, 8, dtype=torch.int8), ValueError,
         "dtype=torch.int8", "not a floating dtype", "truncate", "scales", "valid: torch.float32"),
    case("cache-int64", lambda: KVCache(1, 2, 4, 8, dtype=torch.int64), ValueError, "dtype=torch.int64", "floating"),
    case("cache-device-typo", lambda: KVCache(1, 2, 4, 8, device="gpu"), ValueError,
         "device='gpu'", "valid: 'cpu', 'cuda'"),
    case("cache-too-large", lambda: KVCache(1, 8, 128, 10**12), MemoryError,
         "max_len=1000000000000", "8,192,000.0 GB for K and V"),
    case("layer-to-dtype-name", lambda: _layer().to("bf16"), TypeError,
         "layer.to('bf16')", "name of a dtype", "layer.to(torch.bfloat16)"),
    case("model-to-dtype-name", lambda: tiny_lm.TinyLM(TINY).to("fp16"), TypeError,
         "model.to('fp16')", "model.to(torch.float16)"),
    case("cache-device-is-a-dtype", lambda: KVCache(1, 2, 4, 8, device="bf16"), ValueError,
         "device='bf16' is not a device", "pass dtype=torch.bfloat16"),
    case("cache-append-string", lambda: KVCache(1, 2, 4, 8).append("k", _x(1, 2, 1, 4)), TypeError,
         "k=str", "tensor"),
    case("cache-append-integers",
         lambda: KVCache(1, 2, 4, 8).append(torch.ones(1, 2, 1, 4, dtype=torch.long), torch.ones(1, 2, 1, 4).long()),
         TypeError, "k.dtype=torch.int64", "floating"),
    # the layer
    case("layer-integer-x", lambda: _layer()(torch.ones(1, 3, 16, dtype=torch.long)), TypeError,
         "x.dtype=torch.int64", "torch.float32", "embedding"),
    case("layer-float64-x", lambda: _layer()(_x(1, 3, 16, dtype=torch.float64)), TypeError,
         "x.dtype=torch.float64", "layer's dtype torch.float32", "x.to(torch.float32)"),
    case("bf16-layer-float32-x", lambda: _layer().to(torch.bfloat16)(_x(1, 3, 16)), TypeError,
         "x.dtype=torch.float32", "torch.bfloat16"),
    case("layer-tuple-cache", lambda: _layer()(_x(1, 1, 16), (K, V)), TypeError,
         "cache=tuple", "must be a KVCache", "new_cache"),
    case("layer-mla-cache", lambda: _layer()(_x(1, 1, 16), _mla().new_cache(1, 4)), TypeError,
         "cache=MLACache", "MultiHeadLatentAttention"),
    case("layer-list-cache", lambda: _layer()(_x(1, 1, 16), []), TypeError, "cache=list", "KVCache"),
    case("layer-cache-of-another-layer",
         lambda: _layer()(_x(1, 1, 16), attention.GroupedQueryAttention(16, 4, 4).new_cache(1, 4)), ValueError,
         "cache (n_kv_heads=4, head_dim=4)", "this one has n_kv_heads=2"),
    case("layer-string-x", lambda: _layer()("text"), TypeError, "x=str", "tensor"),
    case("weights-mixed-dtypes", lambda: attention.grouped_attention(Q, K.double(), V, return_weights=True),
         TypeError, "q.dtype=torch.float32, k.dtype=torch.float64", "must be the same"),
    case("attention-integer-q", lambda: attention.grouped_attention(Q.int(), K, V), TypeError,
         "q.dtype=torch.int32", "floating"),
    case("attention-lists", lambda: attention.grouped_attention(Q, K.tolist(), V.tolist()), TypeError,
         "k=list", "tensor"),
    # heads
    case("kind-huge-n-heads", lambda: layout.attention_kind(10**12, 7), ValueError,
         "n_kv_heads=7", "n_heads=1000000000000", "1, 2, 4, 5, 8, 10, ...", "(169 in all)"),
    case("layout-prime-n-heads", lambda: layout.AttentionLayout(10**18 + 9, 7, 64), ValueError,
         "n_kv_heads=7", "not searched"),
    case("layer-many-divisors",
         lambda: attention.GroupedQueryAttention(720720, 720720, 11 * 13 * 17, head_dim=2), ValueError,
         "n_kv_heads=2431", "(240 in all)"),
    # non-finite values
    case("nan-full-pass", lambda: _layer()(_nan_at((1, 6, 16), (0, 3, 5))), ValueError,
         "x holds a non-finite value (nan at batch 0, position 3)", "earlier token"),
    case("inf-full-pass", lambda: _layer()(_nan_at((2, 4, 16), (1, 2, 0), INF)), ValueError,
         "inf at batch 1, position 2"),
    case("fp16-projection-overflow", lambda: _overflowing_half_layer()(torch.full((1, 2, 16), 6e4).half()),
         ValueError, "k = k_proj(x) holds a non-finite value", "position 0", "overflowed"),
    case("attention-nan-in-later-value",
         lambda: attention.grouped_attention(Q, K, _nan_at((1, 2, 3, 8), (0, 1, 2, 0))), ValueError,
         "v holds a non-finite value (nan at batch 0, position 2)"),
    # tiny LM and training
    case("tiny-lm-id-out-of-vocab", lambda: tiny_lm.TinyLM(TINY)(torch.tensor([[1, 300]])), ValueError,
         "token ids 1..300", "valid: 0..255"),
    case("tiny-lm-float-ids", lambda: tiny_lm.TinyLM(TINY)(torch.rand(1, 4)), TypeError,
         "idx.dtype=torch.float32", "integer dtype"),
    case("tiny-lm-single-cache", lambda: tiny_lm.TinyLM(TINY)(torch.tensor([[1]]), KVCache(1, 1, 8, 16)), TypeError,
         "caches=KVCache", "list of one KVCache per layer", "new_caches"),
    case("tiny-lm-generate-list", lambda: tiny_lm.TinyLM(TINY).generate([[1, 2]], 3), TypeError,
         "idx=list", "encode"),
    case("encode-bytes", lambda: tiny_lm.encode(b"bytes"), TypeError, "text=b'bytes'", "string"),
    case("decode-not-a-byte", lambda: tiny_lm.decode(torch.tensor([300])), ValueError, "300", "0..255"),
    case("train-lr-string", lambda: kv_sweep.TrainConfig(lr="3e-3"), TypeError, "lr='3e-3'", "number"),
    case("train-lr-nan", lambda: kv_sweep.TrainConfig(lr=NAN), ValueError, "lr=nan", "finite"),
    case("train-min-lr-ratio", lambda: kv_sweep.TrainConfig(min_lr_ratio=2), ValueError,
         "min_lr_ratio=2", "at most 1"),
    case("train-weight-decay", lambda: kv_sweep.TrainConfig(weight_decay=-0.1), ValueError,
         "weight_decay=-0.1", "0 or more"),
    case("train-grad-clip", lambda: kv_sweep.TrainConfig(grad_clip=0), ValueError, "grad_clip=0", "more than 0"),
    case("train-warmup-float", lambda: kv_sweep.TrainConfig(warmup=2.5), TypeError, "warmup=2.5", "integer"),
    case("train-negative-seed",
         lambda: kv_sweep.train_lm(TINY, kv_sweep.TrainConfig(steps=2, warmup=0), torch.zeros(100, dtype=torch.uint8),
                                torch.zeros(100, dtype=torch.uint8), seed=-1), ValueError, "seed=-1", "non-negative"),
    case("sample-zero-batch",
         lambda: corpus.sample_batch(torch.zeros(100, dtype=torch.uint8), 0, 8, torch.Generator()), ValueError,
         "batch=0", "positive integer"),
    case("zero-validation-windows", lambda: corpus.fixed_windows(torch.zeros(100, dtype=torch.uint8), 0, 8),
         ValueError, "n_windows=0", "positive integer"),
    # conversion
    case("reduce-not-a-layer", lambda: kv_head_conversion.reduce_kv_heads(nn.Linear(4, 4), 1), TypeError,
         "layer=Linear", "GroupedQueryAttention"),
    case("reduce-generator-int",
         lambda: kv_head_conversion.reduce_kv_heads(attention.GroupedQueryAttention(32, 4, 4), 2, "random",
                                                    generator=0),
         TypeError, "generator=0", "torch.Generator"),
    case("expand-not-a-layer", lambda: kv_head_conversion.expand_to_mha("layer"), TypeError, "layer=str"),
    case("nll-one-token-windows", lambda: smollm_conversion.mean_nll(None, torch.zeros(2, 1, dtype=torch.long)),
         ValueError, "windows.shape=(2, 1)", "2 or more tokens"),
    case("uptrain-negative-lr",
         lambda: smollm_conversion.uptrain(None, torch.zeros(4, 8, dtype=torch.long), 2, lr=-1), ValueError,
         "lr=-1", "finite positive"),
    case("uptrain-zero-batch",
         lambda: smollm_conversion.uptrain(None, torch.zeros(4, 8, dtype=torch.long), 2, batch=0), ValueError,
         "batch=0", "positive integer"),
    # results
    case("results-into-a-folder", lambda: results.write_results(results.RESULTS_DIR, [{"a": 1}], {}),
         IsADirectoryError, "is a folder", "results go to a file"),
]


def _overflowing_half_layer():
    layer = _layer().half()
    with torch.no_grad():
        layer.q_proj.weight.zero_()  # q stays finite, so the message is about k
        layer.k_proj.weight.fill_(1.0)  # 16 inputs of 6e4 sum to 9.6e5, past float16's largest number, 65504
    return layer


def test_the_docstring_lists_every_case():
    """The docstring's 65 entries: 64 in CASES, and number 37 (decoding) in the tests of non-finite values."""
    assert len(CASES) == 64
    assert len({c.id for c in CASES}) == len(CASES)
    assert "62. ``write_results" in __doc__


@pytest.mark.parametrize("c", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input_is_refused_at_once_naming_argument_value_and_valid(c):
    start = time.perf_counter()
    with pytest.raises(c.exc) as info:
        c.call()
    message = str(info.value)
    missing = [n for n in c.needles if n not in message]
    assert not missing, f"the message lacks {missing}: {message!r}"
    assert time.perf_counter() - start < AT_ONCE_S


# ---- non-finite values: the full pass and token-by-token decoding agree ------------------------

def test_a_nan_is_refused_by_the_full_pass_and_by_decoding_at_the_same_position():
    torch.manual_seed(0)
    layer = _layer()
    x = _nan_at((1, 6, 16), (0, 3, 5))
    with pytest.raises(ValueError, match=r"nan at batch 0, position 3") as full:
        layer(x)
    cache = layer.new_cache(1, 6)
    with torch.no_grad():
        steps = [layer(x[:, t:t + 1], cache) for t in range(3)]  # tokens 0..2 are finite
        with pytest.raises(ValueError, match=r"nan at batch 0, position 3") as step:
            layer(x[:, 3:4], cache)
        assert str(step.value) == str(full.value)
        assert cache.length == 3  # nothing of the refused token was cached
        torch.testing.assert_close(torch.cat(steps, dim=1), layer(x[:, :3]), atol=1e-6, rtol=0)


def test_a_prefill_chunk_against_the_cache_names_the_absolute_position():
    layer = _layer()
    cache = layer.new_cache(1, 8)
    with torch.no_grad():
        layer(_x(1, 4, 16), cache)
        with pytest.raises(ValueError, match=r"inf at batch 0, position 5"):
            layer(_nan_at((1, 3, 16), (0, 1, 7), INF), cache)
    assert cache.length == 4


def test_grouped_attention_refuses_a_masked_nan_but_a_decode_step_sees_it():
    """With a mask (s_q > 1) a later nan would leak into earlier rows: refused. A single query sees every
    key, so its output is nan in any exact computation, and nothing is hidden: not refused, not checked."""
    v = _nan_at((1, 2, 3, 8), (0, 0, 2, 0))
    with pytest.raises(ValueError, match=r"v holds a non-finite value \(nan at batch 0, position 2\)"):
        attention.grouped_attention(Q, K, v)
    out = attention.grouped_attention(Q[:, :, -1:], K, v)  # one decode step
    # only feature 0 of KV head 0's value is nan: it reaches feature 0 of that group's query heads (0 and 1)
    assert torch.isnan(out[0, :2, :, 0]).all() and torch.isfinite(out[0, :2, :, 1:]).all()
    assert torch.isfinite(out[0, 2:]).all()
    assert torch.isfinite(attention.grouped_attention(Q, K, V)).all()  # the control: finite in, finite out


def test_a_cache_that_fits_in_memory_is_still_made():
    """The control of the size check: an ordinary cache is allocated, with the predicted bytes."""
    cache = KVCache(2, 8, 128, 1024, dtype=torch.bfloat16)
    assert cache.nbytes == 2 * 2 * 8 * 128 * 1024 * 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_every_floating_cache_dtype_is_accepted(dtype):
    assert _layer().new_cache(1, 4, dtype=dtype).k.dtype == dtype


def test_start_pos_accepts_python_and_0d_tensor_integers():
    r = rope.RotaryEmbedding(8)
    x = _x(1, 1, 2, 8)
    assert torch.equal(r(x, 3), r(x, torch.tensor(3)))
    with pytest.raises(TypeError, match=r"start_pos=tensor\(3\.\) must be a non-negative integer"):
        r(x, torch.tensor(3.0))


def test_divisors_of_a_large_number_are_found_quickly_and_completely():
    ds = layout.divisors(10**12)
    assert len(ds) == 169 and ds[:4] == [1, 2, 4, 5] and ds[-1] == 10**12
    assert all(10**12 % d == 0 for d in ds) and ds == sorted(set(ds))
    assert layout.divisors(49) == [1, 7, 49] and layout.divisors(1) == [1]


def test_a_cache_larger_than_free_memory_is_refused_before_allocating(monkeypatch):
    from gqa_lib.core import kv_cache

    monkeypatch.setattr(kv_cache, "_available_bytes", lambda device: 10**9)  # pretend 1 GB is free
    message = (r"head_dim=500, max_len=500000, dtype=torch\.float16\) needs 2\.0 GB for K and V on cpu, "
               r"but only 1\.0 GB is free; lower max_len or batch")
    with pytest.raises(MemoryError, match=message):
        KVCache(1, 2, 500, 500_000, dtype=torch.float16)  # K and V: 2 * 2 heads * 500 * 500,000 * 2 bytes = 2 GB


def test_autocast_may_mix_dtypes_and_a_string_with_a_cache_is_still_refused():
    layer = _layer()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast hands bf16 activations to fp32 weights on purpose
        assert layer(_x(1, 3, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16
    with pytest.raises(TypeError, match=r"x=str must be a tensor"):
        layer("text", layer.new_cache(1, 4))
