"""The group picture of notebooks 04 and 05 must show the mapping PyTorch and transformers really use."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from gqa_lib.core.attention import expand_kv
from gqa_lib.core.layout import AttentionLayout
from gqa_lib.pictures.group_map import (
    GROUP_COLORS,
    draw_group_diagram,
    draw_max_diff,
    draw_per_head_rows,
    group_color,
    kv_head_map,
    max_abs_diff_matrix,
    per_query_head,
)

shapes = st.tuples(st.integers(1, 8), st.integers(1, 6)).map(lambda t: (t[0] * t[1], t[0]))  # (n_heads, n_kv)


def test_llama3_8b_groups_are_contiguous():
    mapping = kv_head_map(32, 8)
    assert mapping[:5] == [0, 0, 0, 0, 1] and mapping[-4:] == [7, 7, 7, 7]
    assert kv_head_map(9, 3, order="repeat") == [0, 1, 2, 0, 1, 2, 0, 1, 2]


@given(shapes)
def test_contiguous_map_is_what_repeat_interleave_and_layout_do(shape):
    n_heads, n_kv = shape
    labels = torch.arange(n_kv, dtype=torch.float32).view(1, n_kv, 1, 1)  # KV head j holds the number j
    expanded = expand_kv(labels, n_heads // n_kv)[0, :, 0, 0].long().tolist()
    assert kv_head_map(n_heads, n_kv) == expanded
    assert kv_head_map(n_heads, n_kv) == [AttentionLayout(n_heads, n_kv, 1).kv_head_of(i) for i in range(n_heads)]
    repeated = labels.repeat(1, n_heads // n_kv, 1, 1)[0, :, 0, 0].long().tolist()
    assert kv_head_map(n_heads, n_kv, order="repeat") == repeated


def test_pytorch_enable_gqa_uses_the_contiguous_order_not_repeat():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 6, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    idx = torch.tensor(kv_head_map(6, 2))
    torch.testing.assert_close(sdpa, F.scaled_dot_product_attention(q, k[:, idx], v[:, idx], is_causal=True))
    rep = torch.tensor(kv_head_map(6, 2, order="repeat"))
    assert not torch.allclose(sdpa, F.scaled_dot_product_attention(q, k[:, rep], v[:, rep], is_causal=True))


@given(shapes)
def test_the_two_orders_differ_exactly_when_there_are_several_groups_of_several_heads(shape):
    n_heads, n_kv = shape
    differ = kv_head_map(n_heads, n_kv) != kv_head_map(n_heads, n_kv, order="repeat")
    assert differ == (1 < n_kv < n_heads)


def test_bad_mapping_input_fails_clearly():
    with pytest.raises(ValueError, match=r"n_kv_heads=3 must divide n_heads=32 \(valid: 1, 2, 4, 8, 16, 32\)"):
        kv_head_map(32, 3)
    with pytest.raises(ValueError, match=r"order='interleaved' is not known \(valid: contiguous, repeat\)"):
        kv_head_map(8, 2, order="interleaved")


@pytest.mark.parametrize("order", ["contiguous", "repeat"])
def test_diagram_draws_one_line_per_query_head_to_its_kv_head(order):
    fig = Figure()
    ax = draw_group_diagram(fig.add_subplot(), 8, 2, order=order)
    lines = [c for c in ax.collections if isinstance(c, LineCollection)][0]
    segments = lines.get_segments()
    assert len(segments) == 8
    kv_x = [2.0, 6.0]  # KV heads spread over the width of 8 query heads
    for i, (seg, j) in enumerate(zip(segments, kv_head_map(8, 2, order), strict=True)):
        assert tuple(seg[0]) == (i + 0.5, 1.0) and tuple(seg[1]) == (kv_x[j], 0.0)
    assert "GQA: 8 query heads, 2 KV heads, group size 4" in ax.get_title()
    # each line has its group's colour
    colors = [tuple(c) for c in lines.get_colors()]
    assert colors == [to_rgba(group_color(j)) for j in kv_head_map(8, 2, order)]


def test_group_colours_repeat_only_after_all_are_used():
    assert len(set(GROUP_COLORS)) == len(GROUP_COLORS) == 9
    assert group_color(9) == group_color(0) != group_color(1)


def test_max_diff_is_exactly_zero_inside_groups_and_positive_across():
    torch.manual_seed(1)
    kv = torch.randn(4, 6, 16)  # (n_kv_heads, seq, head_dim)
    per_head = per_query_head(kv, 12)  # (12, 6, 16)
    diff = max_abs_diff_matrix(per_head)
    group = torch.arange(12) // 3
    same = group[:, None] == group[None, :]
    assert torch.all(diff[same] == 0)
    assert torch.all(diff[~same] > 0)
    brute = (per_head.reshape(12, 1, -1) - per_head.reshape(1, 12, -1)).abs().amax(-1)
    torch.testing.assert_close(diff, brute, rtol=0, atol=0)


def test_per_head_and_diff_input_checks():
    with pytest.raises(ValueError, match=r"kv.shape=\(2, 3\) must be \(n_kv_heads, seq, head_dim\)"):
        per_query_head(torch.zeros(2, 3), 4)
    with pytest.raises(ValueError, match="n_kv_heads=3 must divide n_heads=4"):
        per_query_head(torch.zeros(3, 2, 2), 4)
    with pytest.raises(ValueError, match=r"per_head.shape=\(5,\) must be \(n_heads, ...\)"):
        max_abs_diff_matrix(torch.zeros(5))
    fig = Figure()
    with pytest.raises(ValueError, match="group_size=3 must be a positive integer that divides n_heads=4"):
        draw_per_head_rows(fig.add_subplot(), torch.zeros(4, 2, 2), 3, 1.0)
    with pytest.raises(ValueError, match=r"diff.shape=\(4, 3\) must be \(n_heads, n_heads\)"):
        draw_max_diff(fig.add_subplot(), torch.zeros(4, 3), 2)


def test_heatmaps_show_every_query_head_row_on_a_shared_scale():
    torch.manual_seed(2)
    per_head = per_query_head(torch.randn(2, 3, 4), 6)  # (6, 3, 4)
    fig = Figure()
    img = draw_per_head_rows(fig.add_subplot(), per_head, 3, vmax=5.0)
    assert img.get_array().shape == (6, 12) and img.get_clim() == (-5.0, 5.0)
    img = draw_max_diff(fig.add_subplot(), max_abs_diff_matrix(per_head), 3)
    assert img.get_array().shape == (6, 6) and img.get_clim()[0] == 0.0
