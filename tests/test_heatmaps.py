"""gqa_lib.pictures.heatmaps: the attention-map pictures of notebooks 02-05 (shapes, labels, shared scales, bad
input)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from gqa_lib.core.diversity import pairwise_head_distance
from gqa_lib.pictures.heatmaps import (
    check_head_maps,
    plot_attention_map,
    plot_distance_matrix,
    plot_head_maps,
    token_labels,
)

TOKENS = ["The", " cat", " sat", " on", " the", " mat"]


def causal_maps(n_heads=4, seq=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n_heads, seq, seq, generator=g)
    mask = torch.ones(seq, seq, dtype=torch.bool).tril()
    return scores.masked_fill(~mask, float("-inf")).softmax(-1)  # (n_heads, seq, seq)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def tick_texts(labels):
    return [t.get_text() for t in labels]


# --- checking input -------------------------------------------------------------------------------

def test_check_head_maps_accepts_one_map_and_many():
    assert check_head_maps(causal_maps()[0], TOKENS).shape == (1, 6, 6)
    assert check_head_maps(causal_maps(), TOKENS).shape == (4, 6, 6)
    assert check_head_maps(causal_maps().numpy()).dtype == np.float64


@pytest.mark.parametrize("shape", [(4, 6, 5), (6,), (2, 3, 6, 6), (0, 6, 6)])
def test_bad_shape_names_weights_shape(shape):
    with pytest.raises(ValueError, match=r"weights\.shape=.*must be \(n_heads, seq, seq\)"):
        check_head_maps(torch.zeros(shape))


def test_token_count_must_match_seq():
    with pytest.raises(ValueError, match=r"len\(tokens\)=5 must equal seq=6"):
        check_head_maps(causal_maps(), TOKENS[:5])


def test_tokens_must_be_strings():
    with pytest.raises(TypeError, match="tokens must be a list of strings"):
        check_head_maps(causal_maps(), "The cat")
    with pytest.raises(TypeError, match="tokens must be a list of strings"):
        check_head_maps(causal_maps(), [1, 2, 3, 4, 5, 6])


def test_nan_weights_are_refused():
    w = causal_maps()
    w[0, 2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinity"):
        check_head_maps(w, TOKENS)


def test_not_numbers_is_a_type_error():
    with pytest.raises(TypeError, match="weights must be a tensor or an array of numbers"):
        check_head_maps([["a", "b"], ["c", "d"]])


# --- labels ---------------------------------------------------------------------------------------

def test_token_labels_strip_cut_and_escape():
    assert token_labels([" cat", "Alice", " ", "$5", "extraordinarily"], max_chars=8) == [
        "cat", "Alice", "' '", r"\$5", "extraor…"]
    with pytest.raises(ValueError, match="max_chars=1 must be 2 or more"):
        token_labels(TOKENS, max_chars=1)


# --- one map --------------------------------------------------------------------------------------

def test_attention_map_has_named_axes_token_ticks_and_fixed_scale():
    im = plot_attention_map(causal_maps()[1], TOKENS, title="head 1")
    ax = im.axes
    assert ax.get_xlabel() == "key token (looked at)" and ax.get_ylabel() == "query token (looking)"
    assert tick_texts(ax.get_xticklabels()) == token_labels(TOKENS) == tick_texts(ax.get_yticklabels())
    assert im.get_clim() == (0.0, 1.0)
    assert ax.get_title() == "head 1"
    np.testing.assert_allclose(im.get_array(), causal_maps()[1].numpy())


def test_attention_map_refuses_many_heads():
    with pytest.raises(ValueError, match="must be one map"):
        plot_attention_map(causal_maps(), TOKENS)


# --- a grid of heads ------------------------------------------------------------------------------

def test_head_grid_one_panel_per_head_with_shared_scale():
    w = causal_maps(n_heads=4)
    fig = plot_head_maps(w, TOKENS, ncols=3)
    images = [ax.images[0] for ax in fig.axes if ax.images and ax.get_visible() and ax.get_label() != "<colorbar>"]
    assert len(images) == 4
    assert {im.get_clim() for im in images} == {(0.0, float(w.max()))}  # one scale for every panel
    hidden = [ax for ax in fig.axes if not ax.get_visible()]
    assert len(hidden) == 2  # 2 rows x 3 columns, 4 heads
    assert sum(1 for ax in fig.axes if ax.get_label() == "<colorbar>") == 1
    titles = [im.axes.get_title() for im in images]
    assert titles == ["head 0", "head 1", "head 2", "head 3"]


def test_head_grid_labels_outer_panels_only():
    fig = plot_head_maps(causal_maps(n_heads=4), TOKENS, ncols=2)
    a00, a01, a10, a11 = fig.axes[:4]
    assert tick_texts(a10.get_xticklabels()) == token_labels(TOKENS)  # bottom row: key tokens
    assert tick_texts(a00.get_yticklabels()) == token_labels(TOKENS)  # first column: query tokens
    assert set(tick_texts(a01.get_yticklabels())) <= {""} and set(tick_texts(a00.get_xticklabels())) <= {""}
    assert (a10.get_xlabel(), a00.get_ylabel(), a11.get_ylabel()) == ("key token", "query token", "")


def test_head_grid_names_kv_heads_and_draws_chosen_heads():
    fig = plot_head_maps(causal_maps(n_heads=6), TOKENS, heads=[1, 4], group_size=3, vmax=1.0)
    titles = [ax.get_title() for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert titles == ["head 1 · KV head 0", "head 4 · KV head 1"]
    assert fig.axes[0].images[0].get_clim() == (0.0, 1.0)


def test_head_grid_reuses_a_given_figure():
    fig = Figure()
    assert plot_head_maps(causal_maps(n_heads=2), TOKENS, fig=fig) is fig
    plot_head_maps(causal_maps(n_heads=3), TOKENS, fig=fig)  # redrawn, not added to
    assert sum(1 for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>") == 3


@pytest.mark.parametrize("kwargs, message", [
    ({"heads": [0, 4]}, r"heads=\[0, 4\] must be a non-empty list of head indices in 0..3"),
    ({"heads": []}, r"heads=\[\] must be a non-empty list"),
    ({"group_size": 3}, "group_size=3 must divide n_heads=4"),
    ({"ncols": 0}, "ncols=0 must be 1 or more"),
])
def test_head_grid_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plot_head_maps(causal_maps(n_heads=4), TOKENS, **kwargs)


# --- distance matrix ------------------------------------------------------------------------------

def test_distance_matrix_axes_values_and_scale():
    d = pairwise_head_distance(causal_maps(n_heads=4))
    im = plot_distance_matrix(d, title="layer 0")
    ax = im.axes
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("query head", "query head")
    assert im.get_clim() == (0.0, 1.0)
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 16 and texts[1] == f"{float(d[0, 1]):.2f}" and texts[0] == "0.00"


def test_distance_matrix_must_be_square():
    with pytest.raises(ValueError, match=r"distance\.shape=\(3, 4\) must be square"):
        plot_distance_matrix(torch.zeros(3, 4))


def test_distance_matrix_marks_group_boundaries_and_rejects_a_size_that_does_not_divide():
    d = torch.rand(6, 6)
    im = plot_distance_matrix(d, group_size=2)
    lines = im.axes.get_lines()
    assert sorted({round(x, 1) for ln in lines for x in ln.get_xdata()} - {0.0, 1.0}) == [1.5, 3.5]
    assert len(lines) == 4  # 2 horizontal + 2 vertical boundaries
    assert not plot_distance_matrix(d, group_size=6).axes.get_lines()  # one group: nothing to separate
    with pytest.raises(ValueError, match="group_size=4 must be a positive integer that divides n_heads=6"):
        plot_distance_matrix(d, group_size=4)
