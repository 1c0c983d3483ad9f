"""Conversions of the GQA paper (Ainslie et al. 2023, section 2.1): mean-pool KV heads, or expand back to MHA."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gqa_lib.core.attention import GroupedQueryAttention
from gqa_lib.core.kv_head_conversion import expand_to_mha, reduce_kv_heads

pytestmark = pytest.mark.usefixtures("single_thread")
ATOL = 1e-5


@st.composite
def gqa_layers(draw):
    n_kv = draw(st.integers(1, 4))
    n_heads = n_kv * draw(st.integers(1, 4))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    layer = GroupedQueryAttention(draw(st.sampled_from([8, 16])), n_heads, n_kv, head_dim=draw(st.sampled_from([2, 4])),
                                  bias=draw(st.booleans()), rope=draw(st.booleans()))
    x = torch.randn(draw(st.integers(1, 2)), draw(st.integers(1, 5)), layer.d_model)  # (batch, seq, d_model)
    return layer, x


def per_head(weight: torch.Tensor, n: int) -> torch.Tensor:
    return weight.reshape(n, -1, *weight.shape[1:])  # (n_kv_heads, head_dim, d_model) or (n_kv_heads, head_dim)


def with_equal_heads_in_blocks(layer: GroupedQueryAttention, block: int) -> GroupedQueryAttention:
    """Make every run of ``block`` consecutive KV heads identical (their K and V projections are copies)."""
    with torch.no_grad():
        for proj in (layer.k_proj, layer.v_proj):
            w = per_head(proj.weight, layer.n_kv_heads)
            w.copy_(w[::block].repeat_interleave(block, dim=0))
            if proj.bias is not None:
                b = per_head(proj.bias, layer.n_kv_heads)
                b.copy_(b[::block].repeat_interleave(block, dim=0))
    return layer


@given(gqa_layers())
def test_expanded_mha_layer_equals_its_gqa_source(layer_x):
    layer, x = layer_x
    before = layer.k_proj.weight.clone()
    mha = expand_to_mha(layer)
    assert mha.kind == "MHA" and mha.n_kv_heads == mha.n_heads == layer.n_heads
    assert mha.k_proj.weight.shape == (layer.n_heads * layer.head_dim, layer.d_model)
    with torch.no_grad():
        torch.testing.assert_close(mha(x), layer(x), atol=ATOL, rtol=0)
        cache = mha.new_cache(x.shape[0], x.shape[1])
        steps = torch.cat([mha(x[:, t:t + 1], cache) for t in range(x.shape[1])], dim=1)
        torch.testing.assert_close(steps, layer(x), atol=ATOL, rtol=0)
    assert torch.equal(layer.k_proj.weight, before)  # the source is left as it was


@given(st.data())
def test_mean_pooling_heads_that_are_already_equal_changes_nothing(data):
    n_new = data.draw(st.integers(1, 3))
    block = data.draw(st.integers(1, 3))  # old KV heads merged into each new one
    n_heads = n_new * block * data.draw(st.integers(1, 2))
    torch.manual_seed(data.draw(st.integers(0, 2**16)))
    layer = with_equal_heads_in_blocks(
        GroupedQueryAttention(8, n_heads, n_new * block, head_dim=4, bias=data.draw(st.booleans())), block)
    x = torch.randn(2, data.draw(st.integers(1, 5)), 8)
    for method in ("mean", "first"):
        reduced = reduce_kv_heads(layer, n_new, method=method)
        assert reduced.n_kv_heads == n_new
        with torch.no_grad():
            torch.testing.assert_close(reduced(x), layer(x), atol=ATOL, rtol=0)


def test_mean_pooling_averages_each_groups_projections():
    torch.manual_seed(0)
    mha = GroupedQueryAttention(16, 8, 8, bias=True)
    gqa = reduce_kv_heads(mha, 2, method="mean")
    assert gqa.kind == "GQA" and gqa.group_size == 4 and gqa.new_cache(1, 10).k.shape[1] == 2
    for new, old in ((gqa.k_proj, mha.k_proj), (gqa.v_proj, mha.v_proj)):
        w_old, w_new = per_head(old.weight, 8), per_head(new.weight, 2)
        for j in range(2):
            torch.testing.assert_close(w_new[j], sum(w_old[i] for i in range(4 * j, 4 * j + 4)) / 4)
            torch.testing.assert_close(per_head(new.bias, 2)[j], per_head(old.bias, 8)[4 * j:4 * j + 4].mean(0))
    assert torch.equal(gqa.q_proj.weight, mha.q_proj.weight) and torch.equal(gqa.o_proj.weight, mha.o_proj.weight)


def test_first_keeps_the_first_head_of_each_group_and_random_is_seeded():
    torch.manual_seed(0)
    mha = GroupedQueryAttention(16, 4, 4)
    first = reduce_kv_heads(mha, 2, method="first")
    torch.testing.assert_close(per_head(first.k_proj.weight, 2), per_head(mha.k_proj.weight, 4)[[0, 2]])
    a = reduce_kv_heads(mha, 1, method="random", generator=torch.Generator().manual_seed(5))
    b = reduce_kv_heads(mha, 1, method="random", generator=torch.Generator().manual_seed(5))
    mean = reduce_kv_heads(mha, 1, method="mean")
    assert torch.equal(a.k_proj.weight, b.k_proj.weight)
    assert not torch.allclose(a.k_proj.weight, mean.k_proj.weight)


def test_gqa_to_mqa_then_back_to_mha_gives_equal_heads():
    torch.manual_seed(0)
    mqa = reduce_kv_heads(GroupedQueryAttention(16, 4, 2), 1)
    assert mqa.kind == "MQA"
    mha = expand_to_mha(mqa)
    heads = per_head(mha.k_proj.weight, 4)
    assert all(torch.equal(heads[0], heads[i]) for i in range(4))


def test_bad_conversions_name_the_argument():
    layer = GroupedQueryAttention(24, 12, 4)
    with pytest.raises(ValueError, match=r"method='median' is not known \(valid: mean, first, random\)"):
        reduce_kv_heads(layer, 2, method="median")
    with pytest.raises(ValueError, match=r"n_kv_heads=5 must divide n_heads=12 \(valid: 1, 2, 3, 4, 6, 12\)"):
        reduce_kv_heads(layer, 5)
    with pytest.raises(ValueError, match=r"n_kv_heads=3 must divide the layer's n_kv_heads=4"):
        reduce_kv_heads(layer, 3)
