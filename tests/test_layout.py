"""AttentionLayout: group size, kind and which KV head each query head reads."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gqa_lib.core.checks import check_kv_heads, divisors
from gqa_lib.core.layout import AttentionLayout, attention_kind


@st.composite
def layouts(draw):
    n_kv_heads = draw(st.integers(1, 16))
    group_size = draw(st.integers(1, 16))
    return AttentionLayout(n_kv_heads * group_size, n_kv_heads, draw(st.integers(1, 256)), draw(st.integers(1, 128)))


def test_divisors_of_32_are_the_valid_kv_head_counts():
    assert divisors(32) == [1, 2, 4, 8, 16, 32]
    assert divisors(1) == [1]
    assert divisors(9) == [1, 3, 9]  # SmolLM2-135M's 9 query heads


@given(st.integers(1, 500))
def test_divisors_are_exactly_the_numbers_that_divide(n):
    ds = divisors(n)
    assert ds == sorted(set(ds))
    assert all(n % d == 0 for d in ds)
    assert sum(1 for d in range(1, n + 1) if n % d == 0) == len(ds)


@pytest.mark.parametrize(("n_heads", "n_kv_heads", "kind"), [
    (32, 32, "MHA"), (32, 8, "GQA"), (32, 1, "MQA"), (9, 3, "GQA"), (1, 1, "MHA"), (71, 1, "MQA"),
])
def test_kind_follows_the_number_of_kv_heads(n_heads, n_kv_heads, kind):
    assert attention_kind(n_heads, n_kv_heads) == kind
    assert AttentionLayout(n_heads, n_kv_heads, 64).kind == kind


def test_llama3_8b_layout():
    layout = AttentionLayout(n_heads=32, n_kv_heads=8, head_dim=128, n_layers=32)
    assert layout.group_size == 4
    assert layout.kv_head_of(0) == 0 and layout.kv_head_of(3) == 0 and layout.kv_head_of(4) == 1
    assert layout.kv_head_of(31) == 7
    assert layout.query_heads_of(1) == [4, 5, 6, 7]
    assert layout.valid_kv_heads() == [1, 2, 4, 8, 16, 32]


@given(layouts())
def test_groups_are_contiguous_and_cover_every_query_head_once(layout):
    seen = []
    for j in range(layout.n_kv_heads):
        heads = layout.query_heads_of(j)
        assert len(heads) == layout.group_size
        assert all(layout.kv_head_of(i) == j for i in heads)
        assert heads == list(range(heads[0], heads[0] + layout.group_size))  # contiguous, like repeat_interleave
        seen += heads
    assert seen == list(range(layout.n_heads))
    assert layout.n_kv_heads in layout.valid_kv_heads()


def test_layout_is_immutable():
    layout = AttentionLayout(8, 2, 16)
    with pytest.raises(AttributeError):
        layout.n_kv_heads = 4


def test_head_index_out_of_range_names_the_valid_range():
    layout = AttentionLayout(8, 2, 16)
    with pytest.raises(ValueError, match=r"query_head=8 must be an integer in 0\.\.7"):
        layout.kv_head_of(8)
    with pytest.raises(ValueError, match=r"kv_head=-1 must be an integer in 0\.\.1"):
        layout.query_heads_of(-1)


def test_check_kv_heads_lists_the_valid_divisors():
    with pytest.raises(ValueError, match=r"^n_kv_heads=3 must divide n_heads=32 \(valid: 1, 2, 4, 8, 16, 32\)$"):
        check_kv_heads(32, 3)


def test_head_indices_must_be_integers():
    layout = AttentionLayout(8, 2, 16)
    with pytest.raises(ValueError, match=r"query_head=1\.5 must be an integer"):
        layout.kv_head_of(1.5)
    with pytest.raises(ValueError, match=r"kv_head=True must be an integer"):
        layout.query_heads_of(True)
