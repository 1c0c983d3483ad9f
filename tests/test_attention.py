"""GroupedQueryAttention against independent references: a per-head loop, PyTorch's SDPA, and the cache path.

The references here are written from the definitions (one query head at a time, RoPE as a complex
rotation), not from gqa_lib's code, so an equality means the layer computes what the lecture says.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.overrides import TorchFunctionMode

from gqa_lib.core.attention import GroupedQueryAttention, causal_mask, expand_kv, grouped_attention

ATOL = 1e-5  # float32 everywhere below
pytestmark = pytest.mark.usefixtures("single_thread")


# ---------- independent references ----------

def rope_reference(x: torch.Tensor, start_pos: int = 0, base: float = 10000.0) -> torch.Tensor:
    """RoPE as a complex rotation: the pair (x[i], x[i + d/2]) is the number x[i] + j*x[i + d/2], turned by
    the angle position * base**(-2i/d). x: (..., seq, d)."""
    d = x.shape[-1]
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2:].double())  # (..., seq, d/2)
    positions = torch.arange(start_pos, start_pos + x.shape[-2], dtype=torch.float64)
    freqs = base ** (-2 * torch.arange(d // 2, dtype=torch.float64) / d)
    turned = z * torch.polar(torch.ones(len(positions), d // 2, dtype=torch.float64), positions[:, None] * freqs)
    return torch.cat([turned.real, turned.imag], dim=-1).to(x.dtype)


def per_head_reference(layer: GroupedQueryAttention, x: torch.Tensor, kv_head_for) -> torch.Tensor:
    """Causal attention written one query head at a time; query head i reads KV head kv_head_for(i)."""
    d, seq = layer.head_dim, x.shape[1]

    def project(linear, head):  # the rows of one head's projection: (batch, seq, head_dim)
        rows = slice(head * d, (head + 1) * d)
        return F.linear(x, linear.weight[rows], None if linear.bias is None else linear.bias[rows])

    allowed = torch.ones(seq, seq, dtype=torch.bool).tril()  # token t sees tokens 0..t
    heads = []
    for i in range(layer.n_heads):
        j = kv_head_for(i)
        q, k, v = project(layer.q_proj, i), project(layer.k_proj, j), project(layer.v_proj, j)
        if layer.rope is not None:
            q, k = rope_reference(q), rope_reference(k)
        scores = (q @ k.transpose(1, 2) / math.sqrt(d)).masked_fill(~allowed, float("-inf"))  # (batch, seq, seq)
        heads.append(scores.softmax(-1) @ v)
    return layer.o_proj(torch.cat(heads, dim=-1))


def bottom_right_mask(s_q: int, s_k: int) -> torch.Tensor:
    """The last s_q of s_k tokens are the queries: query t (absolute s_k - s_q + t) sees keys 0..that."""
    return torch.tensor([[k <= s_k - s_q + t for k in range(s_k)] for t in range(s_q)])


# ---------- random shapes ----------

@st.composite
def layer_and_input(draw, n_kv_heads=None, group_size=None):
    n_kv = draw(st.integers(1, 3)) if n_kv_heads is None else n_kv_heads
    g = draw(st.integers(1, 4)) if group_size is None else group_size
    n_heads = n_kv * g
    head_dim = draw(st.sampled_from([2, 4, 8]))
    d_model = draw(st.sampled_from([8, 12, 16]))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    layer = GroupedQueryAttention(d_model, n_heads, n_kv if n_kv_heads != "all" else n_heads, head_dim=head_dim,
                                  bias=draw(st.booleans()), rope=draw(st.booleans()))
    x = torch.randn(draw(st.integers(1, 2)), draw(st.integers(1, 6)), d_model)  # (batch, seq, d_model)
    return layer, x


@st.composite
def qkv_tensors(draw):
    n_kv, g = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    b, s, d = draw(st.integers(1, 2)), draw(st.integers(1, 7)), draw(st.sampled_from([1, 4, 8, 16]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    q = torch.randn(b, n_kv * g, s, d, generator=gen)  # (batch, n_heads, seq, head_dim)
    k = torch.randn(b, n_kv, s, d, generator=gen)  # (batch, n_kv_heads, seq, head_dim)
    v = torch.randn(b, n_kv, s, d, generator=gen)
    return q, k, v


# ---------- equivalences ----------

def test_rope_reference_agrees_with_the_rope_module():
    from gqa_lib.core.rope import RotaryEmbedding

    x = torch.randn(2, 3, 5, 8)
    torch.testing.assert_close(RotaryEmbedding(8)(x, start_pos=4), rope_reference(x, 4), atol=ATOL, rtol=0)


@given(st.data())
def test_gqa_with_as_many_kv_heads_as_query_heads_is_mha(data):
    n_heads = data.draw(st.integers(1, 4))
    layer, x = data.draw(layer_and_input(n_kv_heads=n_heads, group_size=1))
    assert layer.kind == "MHA"
    with torch.no_grad():
        torch.testing.assert_close(layer(x), per_head_reference(layer, x, lambda i: i), atol=ATOL, rtol=0)


@given(st.data())
def test_gqa_with_one_kv_head_is_mqa(data):
    layer, x = data.draw(layer_and_input(n_kv_heads=1, group_size=data.draw(st.integers(2, 6))))
    assert layer.kind == "MQA"
    with torch.no_grad():
        torch.testing.assert_close(layer(x), per_head_reference(layer, x, lambda i: 0), atol=ATOL, rtol=0)


@given(layer_and_input())
def test_query_head_i_reads_kv_head_i_over_group_size(layer_x):
    layer, x = layer_x
    g = layer.group_size
    with torch.no_grad():
        torch.testing.assert_close(layer(x), per_head_reference(layer, x, lambda i: i // g), atol=ATOL, rtol=0)


@given(qkv_tensors())
def test_grouped_attention_equals_torch_sdpa_with_enable_gqa(qkv):
    q, k, v = qkv
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(grouped_attention(q, k, v), expected, atol=ATOL, rtol=0)
    expected = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    torch.testing.assert_close(grouped_attention(q, k, v, causal=False), expected, atol=ATOL, rtol=0)


@given(layer_and_input())
def test_layer_equals_its_projections_through_torch_sdpa(layer_x):
    layer, x = layer_x
    with torch.no_grad():
        q, k, v = layer.qkv(x)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # (batch, n_heads, seq, d)
        expected = layer.o_proj(out.transpose(1, 2).flatten(2))
        torch.testing.assert_close(layer(x), expected, atol=ATOL, rtol=0)


@given(qkv_tensors(), st.integers(1, 7))
def test_fewer_queries_than_keys_align_bottom_right_like_a_decode_step(qkv, s_q):
    q, k, v = qkv
    s_q = min(s_q, k.shape[2])
    q = q[:, :, -s_q:]  # the newest s_q tokens ask; all s_k tokens answer
    mask = bottom_right_mask(s_q, k.shape[2])
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(grouped_attention(q, k, v), expected, atol=ATOL, rtol=0)
    assert torch.equal(causal_mask(s_q, k.shape[2]), mask)


@given(qkv_tensors())
def test_grouped_attention_equals_expand_then_attend(qkv):
    q, k, v = qkv
    g = q.shape[1] // k.shape[1]
    expected = F.scaled_dot_product_attention(q, expand_kv(k, g), expand_kv(v, g), is_causal=True)
    torch.testing.assert_close(grouped_attention(q, k, v), expected, atol=ATOL, rtol=0)


@given(qkv_tensors())
def test_attention_weights_are_causal_rows_that_sum_to_one(qkv):
    q, k, v = qkv
    out, weights = grouped_attention(q, k, v, return_weights=True)  # weights: (batch, n_heads, seq, seq)
    s = q.shape[2]
    assert weights.shape == (q.shape[0], q.shape[1], s, s)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    assert torch.all(weights.masked_select(~causal_mask(s, s)) == 0)
    torch.testing.assert_close(out, weights @ expand_kv(v, q.shape[1] // k.shape[1]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("s_q,s_k", [(1, 9), (5, 5), (3, 11)])  # decode, prefill, a chunk against a cache
@pytest.mark.parametrize("n_kv_heads", [6, 3, 2, 1])
def test_fused_path_equals_the_path_that_writes_out_the_weights(n_kv_heads, s_q, s_k, causal):
    g = torch.Generator().manual_seed(s_q * 10 + n_kv_heads)
    q = torch.randn(2, 6, s_q, 8, generator=g)
    k, v = torch.randn(2, 2, n_kv_heads, s_k, 8, generator=g)
    out_w, _ = grouped_attention(q, k, v, causal, return_weights=True)
    torch.testing.assert_close(grouped_attention(q, k, v, causal), out_w, atol=1e-5, rtol=1e-5)


class ShapeRecorder(TorchFunctionMode):
    """Records the size of every tensor that a torch function takes or returns while the mode is on.

    A fused kernel (scaled_dot_product_attention) hides what it allocates inside, so what it is
    handed is recorded too: ``inputs`` holds (name, shapes of the tensor arguments) per call.
    """

    def __init__(self):
        super().__init__()
        self.sizes, self.inputs = [], []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", str(func))
        self.inputs.append((name, [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]))
        if isinstance(out, torch.Tensor):
            self.sizes.append((name, tuple(out.shape)))
        return out


def test_decode_step_never_builds_the_n_heads_wide_copy_of_k_and_v():
    torch.manual_seed(0)
    layer = GroupedQueryAttention(d_model=32, n_heads=8, n_kv_heads=2, head_dim=16)
    cache = layer.new_cache(batch=1, max_len=16)
    with torch.no_grad():
        layer(torch.randn(1, 15, 32), cache)  # prefill 15 tokens
        expanded = 1 * layer.n_heads * 16 * layer.head_dim  # K for 16 tokens copied to all 8 query heads
        with ShapeRecorder() as rec:
            layer(torch.randn(1, 1, 32), cache)  # one decode step
    biggest = max(rec.sizes, key=lambda item: math.prod(item[1]))
    assert math.prod(biggest[1]) < expanded, f"{biggest} is as large as an expanded K or V"
    # The fused kernel is handed K and V with 2 heads, the 8 query heads stacked as rows of those 2.
    sdpa = [shapes for name, shapes in rec.inputs if name == "scaled_dot_product_attention"]
    assert sdpa == [[(1, 2, 4, 16), (1, 2, 16, 16), (1, 2, 16, 16)]]
    # The recorder does see such a copy when one is made:
    with ShapeRecorder() as rec:
        expand_kv(cache.k[:, :, :16], layer.group_size)
    assert max(math.prod(shape) for _, shape in rec.sizes) == expanded


# ---------- decoding through the cache ----------
# That decoding token by token, or in chunks, equals the full causal pass is the attention contract's, for every
# kind and for GQA layouts drawn at random: tests/test_attention_contract.py. Here: the weights, and a lower-precision
# cache under a float32 layer.

def test_prefill_then_single_steps_returns_the_same_weights():
    torch.manual_seed(1)
    layer = GroupedQueryAttention(16, 4, 2)
    x = torch.randn(1, 6, 16)
    with torch.no_grad():
        _, full_w = layer(x, return_weights=True)  # (1, 4, 6, 6)
        cache = layer.new_cache(1, 6)
        layer(x[:, :4], cache)
        _, w5 = layer(x[:, 4:5], cache, return_weights=True)  # (1, 4, 1, 5)
    torch.testing.assert_close(w5[:, :, 0], full_w[:, :, 4, :5], atol=ATOL, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_lower_precision_cache_decodes_close_to_float32(dtype):
    torch.manual_seed(2)
    layer = GroupedQueryAttention(16, 4, 2)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        cache = layer.new_cache(2, 5, dtype=dtype)
        steps = torch.cat([layer(x[:, t:t + 1], cache) for t in range(5)], dim=1)
        full = layer(x)
    assert cache.k.dtype == dtype and steps.dtype == torch.float32
    torch.testing.assert_close(steps, full, atol=3e-2, rtol=0)


# ---------- expand_kv, the teaching helper ----------

@given(qkv_tensors(), st.integers(1, 4))
def test_expand_kv_equals_repeat_interleave(qkv, group_size):
    _, k, _ = qkv
    out = expand_kv(k, group_size)
    assert torch.equal(out, k.repeat_interleave(group_size, dim=1))
    assert out.untyped_storage().data_ptr() != k.untyped_storage().data_ptr()  # a real copy, as documented


@given(st.integers(2, 4), st.integers(2, 4), st.integers(0, 2**16))
def test_expand_kv_differs_from_repeat_on_real_data(n_kv_heads, group_size, seed):
    k = torch.randn(1, n_kv_heads, 3, 4, generator=torch.Generator().manual_seed(seed))
    # repeat tiles the heads (0, 1, 0, 1); query heads of one group need the same KV head (0, 0, 1, 1)
    assert not torch.equal(expand_kv(k, group_size), k.repeat(1, group_size, 1, 1))


def test_layer_reports_its_kind():
    assert GroupedQueryAttention(64, 8, 8).kind == "MHA"
    assert GroupedQueryAttention(64, 8, 2).kind == "GQA"
    assert GroupedQueryAttention(64, 8, 1).kind == "MQA"
    assert "kind=GQA, n_heads=8, n_kv_heads=2, head_dim=8" in repr(GroupedQueryAttention(64, 8, 2))
